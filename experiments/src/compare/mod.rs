//! `bbt-experiments compare`: every method × task × seed of a preset — the gradient-free
//! baselines, BBT and BBTv2 against a bbt-server (started here unless one is given), the
//! gradient methods locally — each in its own folder, skipping cells already done (so a killed
//! comparison continues where it stopped), then `REPORT.md` and SVG plots from the results.

pub mod plan;
mod plots;
pub mod report;
mod results;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use bbt_client::baselines::{self, BaselineSettings};
use bbt_client::http::{RetryPolicy, ServerClient};
use bbt_client::tune::checkpoint::CHECKPOINT_FILE;
use bbt_client::tune::outputs::{peak_rss_mb_of, write_json};
use bbt_client::tune::progress::ProgressOptions;
use bbt_client::tune::selection::Selection;
use bbt_client::tune::{self, Start};
use bbt_server::process::ServerProcess;
use indicatif::{ProgressBar, ProgressStyle};

use plan::{BlackBox, Cell, MethodKind, Preset};

/// Options of `compare`.
#[derive(clap::Args)]
pub struct Args {
    /// `cpu` (2 CPU cores, about 3 hours), `budget` (the black-box methods at the papers'
    /// 8,000 calls on the suffix placement's cheap calls, with test scores at 500 to 4,000
    /// calls) or `paper` (the papers' settings, for a GPU server); every setting of each is in
    /// `experiments/src/compare/plan.rs`.
    #[arg(long, default_value = "cpu")]
    preset: String,
    /// Tasks, comma-separated (default: the preset's).
    #[arg(long, value_delimiter = ',')]
    tasks: Option<Vec<String>>,
    /// Methods, comma-separated (default: the preset's): manual, manual-cc, icl, icl-cc,
    /// feature-probe, bbt, bbtv2, and the `train` methods (lora, prompt-tuning, ...).
    #[arg(long, value_delimiter = ',')]
    methods: Option<Vec<String>>,
    /// Seeds, comma-separated (default: the preset's).
    #[arg(long, value_delimiter = ',')]
    seeds: Option<Vec<u64>>,
    /// Use these bbt-servers for the API methods instead of starting one; with several
    /// (`URL1,URL2,...`) the API cells are spread over them, one at a time per server, while the
    /// gradient methods run here.
    #[arg(long, value_delimiter = ',')]
    server: Vec<String>,
    /// API key for --server; also read from $BBT_API_KEY.
    #[arg(long, env = "BBT_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Model, device and dtype of the local server; the gradient methods use the same model
    /// and device.
    #[command(flatten)]
    model: bbt::cli::ModelArgs,
    /// Output folder; cells whose result.json is there are skipped.
    #[arg(long)]
    out: PathBuf,
    /// Write REPORT.md and the plots from the results already in --out; run nothing.
    #[arg(long)]
    report_only: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// BBT's settings beyond the preset's (BBT-RGB's techniques, as `bbt tune` has them).
    #[command(flatten)]
    black_box: BlackBoxSettings,
}

/// Settings of the BBT runs (`bbt` and `bbt-from-TASK`) on top of the preset's.
#[derive(clap::Args, Debug, Clone, Default, PartialEq)]
pub struct BlackBoxSettings {
    /// API calls of every black-box run (BBT, BBTv2, BBT-RGB, transfer) instead of the
    /// preset's; a local search keeps its share of the budget.
    #[arg(long)]
    pub calls: Option<u64>,
    /// Calls of each BBT run's budget given to COBYLA after CMA-ES, from its best z (BBT-RGB's
    /// two-stage search; `bbt tune --local-calls`).
    #[arg(long, default_value_t = 0)]
    pub local_calls: u64,
    /// BBT's prompt starts from the embeddings of this instruction (`bbt tune --p0-text`); not
    /// for the transfer methods, which start from another task's prompt.
    #[arg(long)]
    pub p0_text: Option<String>,
    /// BBT and BBTv2 score each class by the mean logit of several label words, from each
    /// task's built-in lists (`bbt tune --label-words several`); tasks without lists keep their
    /// one word per class.
    #[arg(long)]
    pub several_label_words: bool,
    /// The rule that chooses BBT's and BBTv2's final prompt among those checked on dev
    /// (`bbt tune --select`; default: the highest dev accuracy, BBT's rule).
    #[arg(long, value_parser = Selection::parse)]
    pub select: Option<Selection>,
}

/// The grid a comparison covers.
pub struct Grid {
    pub preset: Preset,
    pub tasks: Vec<String>,
    pub methods: Vec<String>,
    pub seeds: Vec<u64>,
    pub black_box: BlackBoxSettings,
}

impl Grid {
    fn from_args(args: &Args) -> anyhow::Result<Self> {
        let preset = Preset::named(&args.preset)?;
        let grid = Self {
            tasks: args.tasks.clone().unwrap_or_else(|| preset.tasks.clone()),
            methods: args
                .methods
                .clone()
                .unwrap_or_else(|| preset.methods.clone()),
            seeds: args.seeds.clone().unwrap_or_else(|| preset.seeds.clone()),
            black_box: args.black_box.clone(),
            preset,
        };
        for m in &grid.methods {
            MethodKind::parse(m)?;
        }
        anyhow::ensure!(
            !grid.tasks.is_empty() && !grid.methods.is_empty() && !grid.seeds.is_empty(),
            "give at least one task, method and seed"
        );
        Ok(grid)
    }
}

impl Grid {
    /// This grid plus the tasks, methods and seeds of every finished run under `out` (theirs
    /// after its own, in name order).
    pub fn with_results_in(&self, out: &Path) -> anyhow::Result<Self> {
        let (mut tasks, mut methods, mut seeds) =
            (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
        for task in subfolders(out)? {
            for method in subfolders(&out.join(&task))? {
                for seed in subfolders(&out.join(&task).join(&method))? {
                    let finished = out
                        .join(&task)
                        .join(&method)
                        .join(&seed)
                        .join("result.json");
                    let number = seed
                        .strip_prefix("seed")
                        .and_then(|n| n.parse::<u64>().ok());
                    if let (Some(n), true) = (number, finished.exists()) {
                        if MethodKind::parse(&method).is_ok() {
                            tasks.insert(task.clone());
                            methods.insert(method.clone());
                            seeds.insert(n);
                        }
                    }
                }
            }
        }
        Ok(Self {
            preset: self.preset.clone(),
            tasks: append_new(&self.tasks, tasks),
            methods: append_new(&self.methods, methods),
            seeds: append_new(&self.seeds, seeds),
            black_box: self.black_box.clone(),
        })
    }
}

/// `list` followed by the items of `found` it lacks.
fn append_new<T: PartialEq + Clone>(list: &[T], found: BTreeSet<T>) -> Vec<T> {
    let mut out = list.to_vec();
    out.extend(found.into_iter().filter(|x| !list.contains(x)));
    out
}

/// Names of the folders in `dir` (none if it does not exist).
fn subfolders(dir: &Path) -> anyhow::Result<Vec<String>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    Ok(names)
}

/// Runs `compare`.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let grid = Grid::from_args(args)?;
    if args.report_only {
        anyhow::ensure!(
            args.out.is_dir(),
            "{} is not a folder: --report-only writes the report of a grid's finished runs",
            args.out.display()
        );
    } else {
        std::fs::create_dir_all(&args.out)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", args.out.display()))?;
    }
    let command = std::env::args()
        .map(|a| shell_word(&a))
        .collect::<Vec<_>>()
        .join(" ");
    if !args.report_only {
        remember_command(&args.out, &command)?;
        run_grid(args, &grid)?;
    }
    let commands = std::fs::read_to_string(args.out.join(COMMANDS_FILE)).unwrap_or(command);
    // The report covers every result in the folder, from this grid or earlier ones.
    let shown = grid.with_results_in(&args.out)?;
    let finished = plan::cells(&shown.tasks, &shown.methods, &shown.seeds)
        .iter()
        .filter(|c| c.done(&args.out))
        .count();
    anyhow::ensure!(
        finished > 0,
        "{} holds no finished run (no TASK/METHOD/seedN/result.json): nothing to report; run \
         the grid without --report-only first",
        args.out.display()
    );
    let results = results::load(&args.out, &shown)?;
    plots::write_all(&args.out, &shown, &results)?;
    let pending = plan::pending(
        &plan::cells(&grid.tasks, &grid.methods, &grid.seeds),
        &args.out,
    )
    .len();
    let path = report::write(
        &args.out,
        &shown,
        &results,
        pending,
        &args.model.model,
        commands.trim(),
    )?;
    eprintln!("report: {}", path.display());
    Ok(())
}

/// The commands that ran grids into a folder, one per line (the report quotes them).
const COMMANDS_FILE: &str = "commands.txt";

/// Adds `command` to the folder's [`COMMANDS_FILE`] unless it is there already.
fn remember_command(out: &Path, command: &str) -> anyhow::Result<()> {
    let path = out.join(COMMANDS_FILE);
    let mut known = std::fs::read_to_string(&path).unwrap_or_default();
    if !known.lines().any(|l| l == command) {
        known.push_str(command);
        known.push('\n');
        std::fs::write(&path, known)?;
    }
    Ok(())
}

/// Quotes a command-line word for a POSIX shell when it needs it.
fn shell_word(word: &str) -> String {
    if word
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./=,:".contains(c))
    {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Runs every cell not yet done.
fn run_grid(args: &Args, grid: &Grid) -> anyhow::Result<()> {
    let all = plan::cells(&grid.tasks, &grid.methods, &grid.seeds);
    let pending = plan::pending(&all, &args.out);
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(all.len() as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} cells, {elapsed_precise} {msg}")
            .expect("valid template"),
    );
    bar.set_position((all.len() - pending.len()) as u64);
    let needs_server = pending
        .iter()
        .any(|c| MethodKind::parse(&c.method).is_ok_and(MethodKind::uses_server));
    if args.server.len() > 1 {
        let outcome = run_spread(args, grid, &pending, &bar);
        bar.finish_and_clear();
        return outcome;
    }
    let local = match (args.server.first(), needs_server) {
        (None, true) => Some(ServerProcess::serve_this_binary(&args.model, false)?),
        _ => None,
    };
    let url = args
        .server
        .first()
        .cloned()
        .or_else(|| local.as_ref().map(|s| s.url().to_string()));
    let mut client = match &url {
        Some(url) => Some(ServerClient::new(
            url,
            args.api_key.clone(),
            RetryPolicy::default(),
        )?),
        None => None,
    };
    for cell in pending {
        // A baseline run fills its calibrated twin's cell too.
        if cell.done(&args.out) {
            bar.inc(1);
            continue;
        }
        bar.set_message(format!("{} {} seed {}", cell.task, cell.method, cell.seed));
        let kind = MethodKind::parse(&cell.method)?;
        let dir = cell.dir(&args.out);
        std::fs::create_dir_all(&dir)?;
        match kind {
            MethodKind::Gradient(_) => run_gradient(args, grid, cell, &dir)?,
            _ => {
                let client = client.as_mut().expect("a server for API methods");
                for written in run_api(client, grid, cell, kind, &args.out)? {
                    if let Some(server) = &local {
                        record_server_memory(&written, server.pid())?;
                    }
                }
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(())
}

/// The grid over several servers: one worker thread per server takes the next API cell in turn,
/// while this thread runs the gradient cells. The first failure is returned once every worker
/// has stopped.
fn run_spread(
    args: &Args,
    grid: &Grid,
    pending: &[&Cell],
    bar: &ProgressBar,
) -> anyhow::Result<()> {
    let mut api = std::collections::VecDeque::new();
    let mut gradient = Vec::new();
    for &cell in pending {
        match MethodKind::parse(&cell.method)? {
            MethodKind::Gradient(_) => gradient.push(cell),
            kind => api.push_back((cell, kind)),
        }
    }
    let queue = std::sync::Mutex::new(api);
    let next = || {
        queue
            .lock()
            .expect("no worker panics holding the queue")
            .pop_front()
    };
    std::thread::scope(|scope| {
        let workers: Vec<_> = args
            .server
            .iter()
            .map(|url| {
                scope.spawn(move || -> anyhow::Result<()> {
                    let mut client =
                        ServerClient::new(url, args.api_key.clone(), RetryPolicy::default())?;
                    while let Some((cell, kind)) = next() {
                        // A baseline run fills its calibrated twin's cell too.
                        if !cell.done(&args.out) {
                            std::fs::create_dir_all(cell.dir(&args.out))?;
                            run_api(&mut client, grid, cell, kind, &args.out).map_err(|e| {
                                e.context(format!(
                                    "{} {} seed {} on {url}",
                                    cell.task, cell.method, cell.seed
                                ))
                            })?;
                        }
                        bar.inc(1);
                    }
                    Ok(())
                })
            })
            .collect();
        let mut outcome = gradient.into_iter().try_for_each(|cell| {
            if !cell.done(&args.out) {
                let dir = cell.dir(&args.out);
                std::fs::create_dir_all(&dir)?;
                run_gradient(args, grid, cell, &dir)?;
            }
            bar.inc(1);
            Ok(())
        });
        for worker in workers {
            let result = worker.join().expect("a grid worker panicked");
            outcome = outcome.and(result);
        }
        outcome
    })
}

/// A baseline family or a BBT/BBTv2 run against the server; the folders it filled.
fn run_api(
    client: &mut ServerClient,
    grid: &Grid,
    cell: &Cell,
    kind: MethodKind,
    out: &Path,
) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    match kind {
        MethodKind::Baseline(baseline) => {
            let settings = BaselineSettings {
                task: cell.task.clone(),
                k: 16,
                seed: cell.seed,
                test_limit: grid.preset.test_limit,
                max_demonstrations: None,
                max_context_tokens: grid.preset.context_tokens,
            };
            for summary in baselines::run(client, baseline, &settings)? {
                let twin = Cell {
                    method: summary.method.clone(),
                    ..cell.clone()
                };
                let dir = twin.dir(out);
                std::fs::create_dir_all(&dir)?;
                write_json(&dir.join("result.json"), &summary)?;
                written.push(dir);
            }
        }
        MethodKind::BlackBox(_) | MethodKind::Transfer => {
            let dir = cell.dir(out);
            let start = if dir.join(CHECKPOINT_FILE).exists() {
                Start::Resume
            } else {
                Start::Fresh(Box::new(black_box_config(grid, cell, kind, out)?))
            };
            let quiet = ProgressOptions {
                quiet: true,
                json_lines: false,
            };
            tune::run(client, start, &dir, quiet)?;
            written.push(dir);
        }
        MethodKind::Gradient(_) => unreachable!("gradient methods run locally"),
    }
    Ok(written)
}

/// The settings of a BBT, BBTv2 or prompt-transfer cell.
fn black_box_config(
    grid: &Grid,
    cell: &Cell,
    kind: MethodKind,
    out: &Path,
) -> anyhow::Result<bbt_client::tune::config::TuneConfig> {
    let method = match kind {
        MethodKind::BlackBox(method) => method,
        _ => BlackBox::Bbt,
    };
    let settings = &grid.black_box;
    let mut config = grid
        .preset
        .black_box(&cell.task, cell.seed, method, settings.calls);
    // The BBT-RGB preset has its own settings; the flags add BBT-RGB's techniques to BBT.
    if method == BlackBox::Bbt && settings.local_calls > 0 {
        config.local_calls = settings.local_calls;
    }
    if kind == MethodKind::BlackBox(BlackBox::Bbt) {
        config.p0_text = settings.p0_text.clone();
    }
    if method != BlackBox::Rgb {
        if settings.several_label_words {
            config.label_words = bbt::tasks::several_label_words(&cell.task);
        }
        if let Some(rule) = settings.select {
            config.select = rule;
        }
    }
    if kind == MethodKind::Transfer {
        let source_task = cell
            .method
            .strip_prefix(plan::TRANSFER_PREFIX)
            .unwrap_or_default();
        let source = Cell {
            task: source_task.to_string(),
            method: "bbt".into(),
            seed: cell.seed,
        };
        anyhow::ensure!(
            source.done(out),
            "{} on {} needs BBT's run on {source_task} with seed {} first (add bbt and \
             {source_task} to the grid)",
            cell.method,
            cell.task,
            cell.seed
        );
        config.p0_from = Some(source.dir(out));
    }
    Ok(config)
}

/// `bbt-experiments train` in a child process (its own peak memory), resumed if its
/// checkpoint is there.
fn run_gradient(args: &Args, grid: &Grid, cell: &Cell, dir: &Path) -> anyhow::Result<()> {
    let mut command = Command::new(std::env::current_exe()?);
    command
        .arg("train")
        .arg("--quiet")
        .args(["--device", &args.model.device]);
    if dir.join(crate::train::checkpoint::CHECKPOINT_FILE).exists() {
        command.arg("--resume").arg(dir);
    } else {
        // A folder left by a run killed before its first checkpoint starts over.
        std::fs::remove_dir_all(dir)?;
        command
            .args(["--method", &cell.method, "--task", &cell.task])
            .args([
                "--seed",
                &cell.seed.to_string(),
                "--model",
                &args.model.model,
            ])
            .arg("--out")
            .arg(dir)
            .args(grid.preset.train_flags());
    }
    let status = command.status()?;
    anyhow::ensure!(
        status.success(),
        "{} on {} (seed {}) failed: {status}",
        cell.method,
        cell.task,
        cell.seed
    );
    // The finished run's training state (parameters and optimizer moments, 2 GB for model
    // tuning) is only needed to resume it.
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        if name.is_some_and(|n| n.starts_with("checkpoint-step") && n.ends_with(".safetensors")) {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// The local server's resident and peak memory when a cell ends (`server.json`).
fn record_server_memory(dir: &Path, pid: u32) -> anyhow::Result<()> {
    let value = serde_json::json!({
        "server_peak_rss_mb": peak_rss_mb_of(&pid.to_string()),
    });
    write_json(&dir.join("server.json"), &value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bbt::protocol::Placement;
    use bbt_client::tune::config::TuneConfig;

    #[test]
    fn the_report_grid_adds_every_finished_run_in_the_folder() {
        let out = tempfile::tempdir().unwrap();
        let finish = |path: &str| {
            let dir = out.path().join(path);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("result.json"), "{}").unwrap();
        };
        finish("mr/bbt/seed13");
        finish("agnews/icl/seed5");
        finish("mr/not-a-method/seed1");
        std::fs::create_dir_all(out.path().join("sst2/lora/seed7")).unwrap();
        let grid = Grid {
            preset: Preset::named("cpu").unwrap(),
            tasks: vec!["mr".into()],
            methods: vec!["lora".into(), "bbt".into()],
            seeds: vec![42],
            black_box: BlackBoxSettings::default(),
        };
        let shown = grid.with_results_in(out.path()).unwrap();
        assert_eq!(shown.tasks, ["mr", "agnews"]);
        assert_eq!(shown.methods, ["lora", "bbt", "icl"]);
        assert_eq!(shown.seeds, [42, 5, 13]);
    }

    #[test]
    fn black_box_settings_reach_the_bbt_runs_only() {
        let grid = Grid {
            preset: Preset::named("cpu").unwrap(),
            tasks: vec!["mr".into()],
            methods: vec!["bbt".into(), "bbtv2".into()],
            seeds: vec![42],
            black_box: BlackBoxSettings {
                calls: None,
                local_calls: 100,
                p0_text: Some(" Review:".into()),
                several_label_words: true,
                select: Some(Selection::DevLoss),
            },
        };
        let config = |method: &str| {
            let cell = Cell {
                task: "mr".into(),
                method: method.into(),
                seed: 42,
            };
            let kind = MethodKind::parse(method).unwrap();
            black_box_config(&grid, &cell, kind, Path::new("unused")).unwrap()
        };
        let bbt = config("bbt");
        assert_eq!(bbt.local_calls, 100);
        assert_eq!(bbt.p0_text.as_deref(), Some(" Review:"));
        assert!(bbt.validate().is_ok(), "{:?}", bbt.validate());
        let words = bbt
            .label_words
            .expect("mr has lists of several label words");
        assert_eq!(words[1].first(), " great");
        assert!(words[1].words().len() > 1);
        let deep = config("bbtv2");
        assert_eq!(deep.local_calls, 0);
        assert_eq!(deep.p0_text, None);
        assert!(deep.label_words.is_some());
        assert_eq!(deep.select, Selection::DevLoss);
        // The BBT-RGB preset keeps its own settings.
        let rgb = config("bbt-rgb");
        assert_eq!(rgb.p0_text, None);
        assert_eq!(rgb.local_calls, TuneConfig::rgb("mr").local_calls);
        assert_eq!(rgb.select, TuneConfig::rgb("mr").select);
    }

    #[test]
    fn the_budget_preset_scales_every_black_box_run_and_scores_milestones() {
        let preset = Preset::named("budget").unwrap();
        for method in [BlackBox::Bbt, BlackBox::Bbtv2, BlackBox::Rgb] {
            let paper = preset.black_box("agnews", 13, method, None);
            assert_eq!(paper.budget, 8000, "{method:?}");
            assert_eq!(paper.test_at, [500, 1000, 2000, 4000], "{method:?}");
            assert_eq!(paper.placement, Placement::Suffix, "{method:?}");
            assert!(
                paper.validate().is_ok(),
                "{method:?}: {:?}",
                paper.validate()
            );
            let short = preset.black_box("agnews", 13, method, Some(2000));
            assert_eq!(short.budget, 2000);
            assert_eq!(short.test_at, [500, 1000]);
            assert!(
                short.validate().is_ok(),
                "{method:?}: {:?}",
                short.validate()
            );
        }
        let rgb = preset.black_box("mr", 13, BlackBox::Rgb, Some(3000));
        let quick_rgb = TuneConfig::rgb("mr");
        // The local search keeps its share of the calls.
        assert_eq!(
            rgb.local_calls * quick_rgb.budget,
            quick_rgb.local_calls * 3000
        );
        assert!(preset.black_box("mr", 13, BlackBox::Bbtv2, None).deep);
    }
}
