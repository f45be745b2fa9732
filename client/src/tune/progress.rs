//! What a run shows while it works: an indicatif bar (calls, best training loss, dev accuracy,
//! ETA) unless quiet, JSON lines on stdout when asked, and always `log.jsonl` in the output
//! folder.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use super::control::Observer;
use super::selection::Checked;

/// How a run reports.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProgressOptions {
    /// No bar and no notes on stderr.
    pub quiet: bool,
    /// One JSON object per generation on stdout.
    pub json_lines: bool,
}

/// One event of the run, as logged.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event<'a> {
    Start {
        task: &'a str,
        budget: u64,
        resumed_at: u64,
    },
    ZeroShot {
        test_accuracy: f64,
    },
    Generation {
        generation: u64,
        stage: Stage,
        api_calls: u64,
        train_loss: f64,
        best_train_loss: f64,
        /// CMA-ES's step size (none in the local search).
        #[serde(skip_serializing_if = "Option::is_none")]
        sigma: Option<f64>,
        dev_accuracy: Option<f64>,
        best_dev_accuracy: Option<f64>,
        elapsed_seconds: f64,
    },
    /// A dev check: each checked prompt's kind, accuracy and loss.
    Dev {
        api_calls: u64,
        candidates: &'a [Checked],
    },
    /// The chosen prompt scored on the test split, after `api_calls` training calls.
    Test {
        api_calls: u64,
        test_accuracy: f64,
    },
}

/// Which search produced a generation's candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// CMA-ES (one generation of the population).
    CmaEs,
    /// The local search after it (COBYLA; a population's worth of its calls).
    Cobyla,
}

/// What the first generation says of the rest: `calls` took `seconds`, `remaining` are left.
fn estimate(calls: u64, seconds: f64, remaining: u64) -> String {
    let per_call = seconds / calls.max(1) as f64;
    let left = (per_call * remaining as f64).round() as u64;
    let (h, m, sec) = (left / 3600, left / 60 % 60, left % 60);
    let left = match (h, m) {
        (0, 0) => format!("{sec} s"),
        (0, _) => format!("{m} min {sec} s"),
        _ => format!("{h} h {m} min"),
    };
    format!(
        "first generation: {calls} calls in {seconds:.1} s; the remaining {remaining} calls will take \
         about {left} at this speed"
    )
}

/// The reporter of one run.
pub struct Progress {
    bar: Option<ProgressBar>,
    json_lines: bool,
    log: File,
    /// The run's budget, the calls done when this process took it up and when that was; the
    /// first generation after it gives the time the rest will take.
    budget: u64,
    done_at_start: u64,
    started: Instant,
    estimated: bool,
    observer: Option<Observer>,
}

impl Progress {
    /// Appends to `dir/log.jsonl`; draws a bar of `budget` calls starting at `done`.
    pub fn new(
        dir: &Path,
        options: ProgressOptions,
        budget: u64,
        done: u64,
    ) -> std::io::Result<Self> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("log.jsonl"))?;
        let bar = (!options.quiet).then(|| {
            let bar = ProgressBar::with_draw_target(Some(budget), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} calls  {msg}  ETA {eta}",
                )
                .expect("valid template"),
            );
            bar.set_position(done);
            bar.reset_eta();
            bar
        });
        Ok(Self {
            bar,
            json_lines: options.json_lines,
            log,
            budget,
            done_at_start: done,
            started: Instant::now(),
            estimated: false,
            observer: None,
        })
    }

    /// Also hands every event's JSON line to `observer`.
    pub fn observed_by(mut self, observer: Option<Observer>) -> Self {
        self.observer = observer;
        self
    }

    /// Records an event: log file, JSON line, bar, observer.
    pub fn event(&mut self, event: &Event) {
        let line = serde_json::to_string(event).expect("events serialise");
        let _ = writeln!(self.log, "{line}");
        if self.json_lines {
            println!("{line}");
        }
        if let Some(observer) = &self.observer {
            observer(&line);
        }
        if let (
            Some(bar),
            Event::Generation {
                api_calls,
                best_train_loss,
                best_dev_accuracy,
                ..
            },
        ) = (&self.bar, event)
        {
            bar.set_position(*api_calls);
            let dev = best_dev_accuracy.map_or("-".into(), |a| format!("{:.1}%", 100.0 * a));
            bar.set_message(format!("loss {best_train_loss:.4}  dev {dev}"));
        }
        if let Event::Generation { api_calls, .. } = event {
            if !self.estimated {
                self.estimated = true;
                let note = estimate(
                    *api_calls - self.done_at_start.min(*api_calls),
                    self.started.elapsed().as_secs_f64(),
                    self.budget.saturating_sub(*api_calls),
                );
                self.note(&note);
            }
        }
    }

    /// A note for a person (hidden when quiet).
    pub fn note(&self, text: &str) {
        if let Some(bar) = &self.bar {
            bar.println(text);
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::estimate;

    #[test]
    fn the_estimate_scales_the_first_generation_to_the_rest_of_the_budget() {
        // 20 calls in 10 s: 7,980 calls at 0.5 s each are 3,990 s.
        assert_eq!(
            estimate(20, 10.0, 7980),
            "first generation: 20 calls in 10.0 s; the remaining 7980 calls will take about 1 h 6 min at this speed"
        );
        assert!(estimate(20, 2.0, 100).ends_with("about 10 s at this speed"));
        assert!(estimate(20, 10.0, 200).ends_with("about 1 min 40 s at this speed"));
    }
}
