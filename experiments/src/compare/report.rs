//! `REPORT.md` from the `result.json` files of a comparison: the accuracy table (mean ± std over
//! seeds per method × task, and the average over tasks), the cost table, the command, the
//! machine and the model. Everything in it is read back from the files, never from memory.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use bbt_client::summary::RunSummary;
use statrs::statistics::Statistics;

use super::plan::{title, Family, MethodKind};
use super::results::Finished;
use super::Grid;

/// `mean ± std` (sample std over seeds) of percentages, or the value alone for one seed.
pub fn mean_std(values: &[f64]) -> String {
    match values {
        [] => "–".into(),
        [one] => format!("{:.1}", 100.0 * one),
        _ => format!(
            "{:.1} ± {:.1}",
            100.0 * values.mean(),
            100.0 * values.std_dev()
        ),
    }
}

/// The grid's methods by family (baselines, black-box, gradient), in the grid's order within
/// each.
pub fn by_family(grid: &Grid) -> Vec<&String> {
    let mut methods: Vec<&String> = grid.methods.iter().collect();
    methods.sort_by_key(|m| MethodKind::parse(m).map(MethodKind::family).ok());
    methods
}

/// What a method's runs were given: API calls for the black-box methods, optimizer steps for
/// the gradient methods (each distinct value once).
fn budget_of(results: &[Finished], method: &str) -> String {
    let kind = MethodKind::parse(method).map(MethodKind::family);
    let unit = match kind {
        Ok(Family::BlackBox) => "calls",
        Ok(Family::Gradient) => "steps",
        _ => return "–".into(),
    };
    let budgets: std::collections::BTreeSet<u64> = results
        .iter()
        .filter(|r| r.summary.method == method)
        .map(|r| r.summary.budget)
        .collect();
    if budgets.is_empty() {
        return "–".into();
    }
    let listed: Vec<String> = budgets.iter().map(|b| thousands(*b)).collect();
    format!("{} {unit}", listed.join(" / "))
}

/// `8000` as `8,000`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The accuracy table: one row per method (by family, named in words), its family and budget,
/// one column per task, then the average of the task means (over the tasks every method has).
/// Tasks with an F1 metric show `accuracy / F1`.
pub fn accuracy_table(results: &[Finished], grid: &Grid) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| method | family | budget | {} | average |",
        grid.tasks.join(" | ")
    );
    let _ = writeln!(t, "|---|---|---|{}---|", "---|".repeat(grid.tasks.len()));
    for method in by_family(grid) {
        let mut cells = Vec::new();
        let mut task_means = Vec::new();
        for task in &grid.tasks {
            let of = |f: fn(&RunSummary) -> Option<f64>| -> Vec<f64> {
                results
                    .iter()
                    .filter(|r| &r.summary.method == method && &r.summary.task == task)
                    .filter_map(|r| f(&r.summary))
                    .collect()
            };
            let accuracy = of(|s| s.test_accuracy);
            let f1 = of(|s| s.test_f1);
            if !accuracy.is_empty() {
                task_means.push(accuracy.clone().mean());
            }
            let mut cell = mean_std(&accuracy);
            if !f1.is_empty() {
                let _ = write!(cell, " / F1 {}", mean_std(&f1));
            }
            if accuracy.len() < grid.seeds.len() && !accuracy.is_empty() {
                let _ = write!(cell, " ({} of {} seeds)", accuracy.len(), grid.seeds.len());
            }
            cells.push(cell);
        }
        let average = if task_means.len() == grid.tasks.len() {
            format!("{:.1}", 100.0 * task_means.mean())
        } else {
            "–".into()
        };
        let family = match MethodKind::parse(method).map(MethodKind::family) {
            Ok(Family::Baseline) => "baseline",
            Ok(Family::BlackBox) => "black-box",
            Ok(Family::Gradient) => "gradient",
            Err(_) => "–",
        };
        let _ = writeln!(
            t,
            "| {} (`{method}`) | {family} | {} | {} | {average} |",
            title(method),
            budget_of(results, method),
            cells.join(" | ")
        );
    }
    t
}

/// What a budget buys: each black-box method's test accuracy per task (mean ± std over seeds)
/// at each budget its runs were scored at — the `test_at` milestones and the end; `None` when
/// no run has milestones.
pub fn budget_table(results: &[Finished], grid: &Grid) -> Option<String> {
    let points = |r: &Finished| {
        let mut points = r.test_curve.clone();
        if let Some(a) = r.summary.test_accuracy {
            points.push((r.summary.train_api_calls, a));
        }
        points
    };
    if results.iter().all(|r| r.test_curve.is_empty()) {
        return None;
    }
    let budgets: std::collections::BTreeSet<u64> = results
        .iter()
        .filter(|r| !r.test_curve.is_empty())
        .flat_map(|r| points(r).into_iter().map(|(calls, _)| calls))
        .collect();
    let mut t = String::new();
    let header: Vec<String> = budgets
        .iter()
        .map(|b| format!("{} calls", thousands(*b)))
        .collect();
    let _ = writeln!(t, "| method | task | {} |", header.join(" | "));
    let _ = writeln!(t, "|---|---|{}", "---|".repeat(budgets.len()));
    for method in by_family(grid) {
        for task in &grid.tasks {
            let runs: Vec<&Finished> = results
                .iter()
                .filter(|r| &r.summary.method == method && &r.summary.task == task)
                .filter(|r| !r.test_curve.is_empty())
                .collect();
            if runs.is_empty() {
                continue;
            }
            let cells: Vec<String> = budgets
                .iter()
                .map(|&b| {
                    let at: Vec<f64> = runs
                        .iter()
                        .filter_map(|r| points(r).into_iter().find(|&(c, _)| c == b))
                        .map(|(_, a)| a)
                        .collect();
                    mean_std(&at)
                })
                .collect();
            let _ = writeln!(t, "| {} | {task} | {} |", title(method), cells.join(" | "));
        }
    }
    Some(t)
}

/// The cost table: per method, the mean over its runs of wall time, API calls and traffic per
/// API call; the largest peak memory of the process that ran it and of the server; the numbers
/// it tunes.
pub fn cost_table(results: &[Finished], grid: &Grid) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| method | runs | wall time (s) | API calls | up / call | down / call | peak memory: method (MB) | server (MB) | trainable numbers |"
    );
    let _ = writeln!(t, "|---|---|---|---|---|---|---|---|---|");
    for method in by_family(grid) {
        let runs: Vec<&Finished> = results
            .iter()
            .filter(|r| &r.summary.method == method)
            .collect();
        if runs.is_empty() {
            let _ = writeln!(t, "| {method} | 0 | | | | | | | |");
            continue;
        }
        let mean = |f: &dyn Fn(&RunSummary) -> f64| -> f64 {
            runs.iter()
                .map(|r| f(&r.summary))
                .collect::<Vec<_>>()
                .mean()
        };
        let max = |xs: Vec<f64>| {
            xs.into_iter()
                .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))))
        };
        let calls = mean(&|s| s.api_calls as f64);
        let per_call = |bytes: f64| -> String {
            if calls > 0.0 {
                human_bytes(bytes / calls)
            } else {
                "–".into()
            }
        };
        let client = max(runs.iter().filter_map(|r| r.summary.peak_rss_mb).collect());
        let server = max(runs.iter().filter_map(|r| r.server_peak_rss_mb).collect());
        let trainable: Vec<usize> = runs
            .iter()
            .filter_map(|r| r.summary.trainable_params)
            .collect();
        let trainable = match (trainable.iter().min(), trainable.iter().max()) {
            (Some(lo), Some(hi)) if lo == hi => lo.to_string(),
            (Some(lo), Some(hi)) => format!("{lo}–{hi}"),
            _ => "–".into(),
        };
        let _ = writeln!(
            t,
            "| {method} | {} | {:.0} | {:.0} | {} | {} | {} | {} | {trainable} |",
            runs.len(),
            mean(&|s| s.wall_seconds),
            calls,
            per_call(mean(&|s| s.bytes_up as f64)),
            per_call(mean(&|s| s.bytes_down as f64)),
            client.map_or("–".into(), |m| format!("{m:.0}")),
            server.map_or("–".into(), |m| format!("{m:.0}")),
        );
    }
    t
}

/// Prompt transfer: per source → target pair, BBT from zeros against BBT from the source
/// task's prompt, and the gain over the seeds both have; `None` without transfer methods.
pub fn transfer_table(results: &[Finished], grid: &Grid) -> Option<String> {
    let transfers: Vec<&String> = grid
        .methods
        .iter()
        .filter(|m| m.starts_with(super::plan::TRANSFER_PREFIX))
        .collect();
    if transfers.is_empty() {
        return None;
    }
    let accuracy = |method: &str, task: &str, seed: u64| {
        results
            .iter()
            .find(|r| {
                r.summary.method == method && r.summary.task == task && r.summary.seed == seed
            })
            .and_then(|r| r.summary.test_accuracy)
    };
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| source → target | BBT from zeros | BBT from the source's prompt | gain (points) |"
    );
    let _ = writeln!(t, "|---|---|---|---|");
    for method in transfers {
        let source = &method[super::plan::TRANSFER_PREFIX.len()..];
        for task in grid.tasks.iter().filter(|t| t.as_str() != source) {
            let pairs: Vec<(f64, f64)> = grid
                .seeds
                .iter()
                .filter_map(|&seed| {
                    Some((accuracy("bbt", task, seed)?, accuracy(method, task, seed)?))
                })
                .collect();
            if pairs.is_empty() {
                continue;
            }
            let scratch: Vec<f64> = pairs.iter().map(|p| p.0).collect();
            let transferred: Vec<f64> = pairs.iter().map(|p| p.1).collect();
            let gains: Vec<f64> = pairs.iter().map(|p| p.1 - p.0).collect();
            let gain = if gains.len() > 1 {
                format!(
                    "{:+.1} ± {:.1}",
                    100.0 * gains.clone().mean(),
                    100.0 * gains.std_dev()
                )
            } else {
                format!("{:+.1}", 100.0 * gains[0])
            };
            let _ = writeln!(
                t,
                "| {source} → {task} | {} | {} | {gain} |",
                mean_std(&scratch),
                mean_std(&transferred)
            );
        }
    }
    Some(t)
}

fn human_bytes(b: f64) -> String {
    if b < 1e3 {
        format!("{b:.0} B")
    } else if b < 1e6 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{:.1} MB", b / 1e6)
    }
}

/// The CPU model and core count, from `/proc/cpuinfo` where it exists.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    format!("{model}, {cores} cores")
}

/// Writes `REPORT.md` under `out` for the `results` of `grid` found there, `pending` runs of
/// the requested grid still to do, and the `commands` that ran them; returns its path.
pub fn write(
    out: &Path,
    grid: &Grid,
    results: &[Finished],
    pending: usize,
    model: &str,
    commands: &str,
) -> anyhow::Result<PathBuf> {
    let total = results.len() + pending;
    let mut r = String::new();
    let _ = writeln!(r, "# Comparison: {} preset\n", grid.preset.name);
    let _ = writeln!(
        r,
        "{} of {} runs finished. Model `{model}`; machine: {}. Seeds {}; 16 examples per class \
         in train and in dev.\n",
        results.len(),
        total,
        machine(),
        grid.seeds
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(r, "```sh\n{commands}\n```\n");
    let _ = writeln!(r, "{}\n", grid.preset.rationale);
    let _ = writeln!(
        r,
        "## Test accuracy (%), mean ± std over seeds\n\n{}",
        accuracy_table(results, grid)
    );
    let _ = writeln!(
        r,
        "## Cost per run\n\nMeans over tasks and seeds. An API call is one forward pass over a \
         split for one candidate prompt; gradient methods run the model locally and make none. \
         Memory is the peak resident set of the process that ran the method (the client for \
         API methods, the trainer for gradient methods) and of the shared local server when \
         the run ended.\n\n{}",
        cost_table(results, grid)
    );
    if let Some(table) = budget_table(results, grid) {
        let _ = writeln!(
            r,
            "## What a budget buys\n\nTest accuracy (%) of the prompt each black-box run had \
             chosen after so many training calls (mean ± std over seeds; the last column is \
             the end of the run).\n\n{table}"
        );
    }
    if let Some(table) = transfer_table(results, grid) {
        let _ = writeln!(
            r,
            "## Prompt transfer\n\nBBT started from the prompt BBT tuned on the source task \
             (same seed, same settings) instead of from zeros; test accuracy (%) on the target, \
             and the gain over the seeds both runs have.\n\n{table}"
        );
    }
    let _ = writeln!(r, "## Plots\n");
    for task in &grid.tasks {
        for (file, what) in super::plots::files(task) {
            if out.join(&file).exists() {
                let _ = writeln!(r, "- {what}: [{file}]({file})");
            }
        }
    }
    let path = out.join("REPORT.md");
    std::fs::write(&path, r)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::super::plan::{Cell, Preset};
    use super::super::results::load;
    use super::*;

    fn fake(method: &str, task: &str, seed: u64, accuracy: f64) -> RunSummary {
        RunSummary {
            method: method.into(),
            task: task.into(),
            seed,
            budget: 10,
            api_calls: 4,
            train_api_calls: 2,
            best_dev_accuracy: None,
            test_accuracy: Some(accuracy),
            test_f1: None,
            test_examples: Some(100),
            wall_seconds: 10.0 * seed as f64,
            bytes_up: 4000,
            bytes_down: 400,
            peak_rss_mb: Some(50.0 + seed as f64),
            trainable_params: Some(100),
            notes: Vec::new(),
        }
    }

    #[test]
    fn tables_come_from_the_result_files() {
        let out = tempfile::tempdir().unwrap();
        let grid = Grid {
            preset: Preset::named("cpu").unwrap(),
            tasks: vec!["mr".into()],
            methods: vec!["lora".into(), "bbt".into()],
            seeds: vec![13, 42],
            black_box: Default::default(),
        };
        for (seed, accuracy) in [(13, 0.80), (42, 0.90)] {
            let cell = Cell {
                task: "mr".into(),
                method: "bbt".into(),
                seed,
            };
            std::fs::create_dir_all(cell.dir(out.path())).unwrap();
            let json = serde_json::to_string(&fake("bbt", "mr", seed, accuracy)).unwrap();
            std::fs::write(cell.dir(out.path()).join("result.json"), json).unwrap();
        }
        let results = load(out.path(), &grid).unwrap();
        assert_eq!(results.len(), 2);
        let table = accuracy_table(&results, &grid);
        // mean 85.0, sample std of (80, 90) = 7.07.
        let bbt_row = "| BBT (`bbt`) | black-box | 10 calls | 85.0 ± 7.1 | 85.0 |";
        let lora_row = "| LoRA (`lora`) | gradient | – | – | – |";
        assert!(table.contains(bbt_row), "{table}");
        assert!(table.contains(lora_row), "{table}");
        // Rows by family: black-box before gradient, whatever the grid's order.
        assert!(table.find(bbt_row) < table.find(lora_row), "{table}");
        let costs = cost_table(&results, &grid);
        // wall (130 + 420) / 2 = 275 s; 4 calls; 4000 B / 4 = 1.0 kB up; peak max(63, 92).
        assert!(
            costs.contains("| bbt | 2 | 275 | 4 | 1.0 kB | 100 B | 92 | – | 100 |"),
            "{costs}"
        );
        let path = write(
            out.path(),
            &grid,
            &results,
            2,
            "smollm2-135m",
            "bbt-experiments compare",
        )
        .unwrap();
        let report = std::fs::read_to_string(path).unwrap();
        assert!(report.contains("2 of 4 runs finished"), "{report}");
        // A result that is not one fails loudly, naming the file.
        std::fs::write(
            Cell {
                task: "mr".into(),
                method: "bbt".into(),
                seed: 13,
            }
            .dir(out.path())
            .join("result.json"),
            "{}",
        )
        .unwrap();
        let err = load(out.path(), &grid).unwrap_err().to_string();
        assert!(err.contains("seed13/result.json"), "{err}");
    }

    #[test]
    fn the_budget_table_reads_each_runs_test_milestones() {
        let grid = Grid {
            preset: Preset::named("budget").unwrap(),
            tasks: vec!["mr".into()],
            methods: vec!["bbt".into(), "lora".into()],
            seeds: vec![13, 42],
            black_box: Default::default(),
        };
        let run = |seed, curve: Vec<(u64, f64)>, end| {
            let mut summary = fake("bbt", "mr", seed, end);
            summary.train_api_calls = 2000;
            Finished {
                summary,
                test_curve: curve,
                curve: Vec::new(),
                server_peak_rss_mb: None,
            }
        };
        let mut lora = fake("lora", "mr", 13, 0.9);
        lora.train_api_calls = 0;
        let results = vec![
            run(13, vec![(500, 0.60), (1000, 0.70)], 0.75),
            run(42, vec![(500, 0.62), (1000, 0.72)], 0.79),
            Finished {
                summary: lora,
                test_curve: Vec::new(),
                curve: Vec::new(),
                server_peak_rss_mb: None,
            },
        ];
        let table = budget_table(&results, &grid).unwrap();
        assert!(
            table.contains("| method | task | 500 calls | 1,000 calls | 2,000 calls |"),
            "{table}"
        );
        assert!(
            table.contains("| BBT | mr | 61.0 ± 1.4 | 71.0 ± 1.4 | 77.0 ± 2.8 |"),
            "{table}"
        );
        assert!(!table.contains("LoRA"), "{table}");
        // Runs without milestones give no table.
        assert!(budget_table(&results[2..], &grid).is_none());
    }

    #[test]
    fn transfer_gains_pair_runs_by_seed() {
        let grid = Grid {
            preset: Preset::named("cpu").unwrap(),
            tasks: vec!["mr".into(), "sst2".into()],
            methods: vec!["bbt".into(), "bbt-from-sst2".into()],
            seeds: vec![13, 42],
            black_box: Default::default(),
        };
        let finished = |method: &str, seed, accuracy| Finished {
            summary: fake(method, "mr", seed, accuracy),
            test_curve: Vec::new(),
            curve: Vec::new(),
            server_peak_rss_mb: None,
        };
        let results = vec![
            finished("bbt", 13, 0.70),
            finished("bbt", 42, 0.80),
            finished("bbt-from-sst2", 13, 0.75),
            finished("bbt-from-sst2", 42, 0.81),
        ];
        let table = transfer_table(&results, &grid).unwrap();
        // Gains +5 and +1 points: +3.0 ± 2.8.
        assert!(
            table.contains("| sst2 → mr | 75.0 ± 7.1 | 78.0 ± 4.2 | +3.0 ± 2.8 |"),
            "{table}"
        );
        assert!(!table.contains("→ sst2"), "{table}");
        let plain = Grid {
            methods: vec!["bbt".into()],
            ..grid
        };
        assert!(transfer_table(&results, &plain).is_none());
    }
}
