//! What a run shows while it works: an indicatif bar (calls, best training loss, dev accuracy,
//! ETA) unless quiet, JSON lines on stdout when asked, and always `log.jsonl` in the output
//! folder.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

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

/// The reporter of one run.
pub struct Progress {
    bar: Option<ProgressBar>,
    json_lines: bool,
    log: File,
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
        })
    }

    /// Records an event: log file, JSON line, bar.
    pub fn event(&mut self, event: &Event) {
        let line = serde_json::to_string(event).expect("events serialise");
        let _ = writeln!(self.log, "{line}");
        if self.json_lines {
            println!("{line}");
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
