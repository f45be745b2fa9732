//! What a comparison runs: the methods (by kind), the tasks, the seeds, and each method's
//! settings under a preset. Every setting of every preset is here, with the reason for it.

use bbt::peft::Method;
use bbt::protocol::Placement;
use bbt_client::baselines::Baseline;
use bbt_client::tune::config::TuneConfig;
use clap::ValueEnum;

/// How a method runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodKind {
    /// A gradient-free baseline over the server API.
    Baseline(Baseline),
    /// BBT, BBTv2 or the BBT-RGB preset over the server API.
    BlackBox(BlackBox),
    /// A gradient method of the PEFT trainer, run locally (`bbt-experiments train`).
    Gradient(Method),
    /// BBT started from the prompt BBT tuned on another task with the same seed (prompt
    /// transfer, `bbt-from-TASK`); runs after the grid's other methods, never on its source.
    Transfer,
}

/// The black-box tuners a comparison runs, each as `bbt tune` has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlackBox {
    /// `bbt`: BBT (one prompt at the input, CMA-ES).
    Bbt,
    /// `bbtv2`: BBTv2 (a prompt at every layer, divide and conquer).
    Bbtv2,
    /// `bbt-rgb`: BBT with `bbt tune --preset rgb`'s techniques (BBT-RGB).
    Rgb,
}

/// Which kind of method a row of a report is, in the order reports list them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Family {
    /// Nothing tuned, or a classifier fitted on the model's features.
    Baseline,
    /// Forward passes over the server API only.
    BlackBox,
    /// Gradients through the model.
    Gradient,
}

/// The prefix of prompt-transfer methods: `bbt-from-sst2` starts from SST-2's BBT prompt.
pub const TRANSFER_PREFIX: &str = "bbt-from-";

impl MethodKind {
    /// The method called `name` (`manual`, `icl`, `bbt`, `bbtv2`, `lora`, ...).
    pub fn parse(name: &str) -> anyhow::Result<Self> {
        if let Some(b) = Baseline::from_name(name) {
            return Ok(Self::Baseline(b));
        }
        match name {
            "bbt" => Ok(Self::BlackBox(BlackBox::Bbt)),
            "bbtv2" => Ok(Self::BlackBox(BlackBox::Bbtv2)),
            "bbt-rgb" => Ok(Self::BlackBox(BlackBox::Rgb)),
            _ if name
                .strip_prefix(TRANSFER_PREFIX)
                .is_some_and(|t| !t.is_empty()) =>
            {
                Ok(Self::Transfer)
            }
            _ => Method::from_str(name, false)
                .map(Self::Gradient)
                .map_err(|_| anyhow::anyhow!("unknown method `{name}`; {}", known_methods())),
        }
    }

    /// Whether it needs a bbt-server.
    pub fn uses_server(self) -> bool {
        !matches!(self, Self::Gradient(_))
    }

    /// Its family.
    pub fn family(self) -> Family {
        match self {
            Self::Baseline(_) => Family::Baseline,
            Self::BlackBox(_) | Self::Transfer => Family::BlackBox,
            Self::Gradient(_) => Family::Gradient,
        }
    }
}

/// The method called `name` in words, as a report's reader knows it (the name itself when
/// it is not a method).
pub fn title(name: &str) -> String {
    match MethodKind::parse(name) {
        Ok(MethodKind::Baseline(b)) => b.title().into(),
        Ok(MethodKind::BlackBox(BlackBox::Bbt)) => "BBT".into(),
        Ok(MethodKind::BlackBox(BlackBox::Bbtv2)) => "BBTv2".into(),
        Ok(MethodKind::BlackBox(BlackBox::Rgb)) => "BBT-RGB preset".into(),
        Ok(MethodKind::Transfer) => format!(
            "BBT from the {} prompt",
            name.strip_prefix(TRANSFER_PREFIX).unwrap_or_default()
        ),
        Ok(MethodKind::Gradient(m)) => m.title().into(),
        Err(_) => name.into(),
    }
}

fn known_methods() -> String {
    let baselines: Vec<&str> = Baseline::ALL.iter().map(|b| b.name()).collect();
    let gradient: Vec<String> = Method::value_variants()
        .iter()
        .filter_map(|m| m.to_possible_value().map(|v| v.get_name().to_string()))
        .collect();
    format!(
        "known: {}, bbt, bbtv2, bbt-rgb, {TRANSFER_PREFIX}TASK, {}",
        baselines.join(", "),
        gradient.join(", ")
    )
}

/// A named set of tasks, seeds, methods and budgets.
#[derive(Debug, Clone, PartialEq)]
pub struct Preset {
    pub name: &'static str,
    pub tasks: Vec<String>,
    pub seeds: Vec<u64>,
    pub methods: Vec<String>,
    /// Test examples scored per task (a fixed subset of N, see `bbt::tasks::test_subset`; all if
    /// absent).
    pub test_limit: Option<usize>,
    /// In-context learning: tokens of demonstrations (as many as fit the model if absent).
    pub context_tokens: Option<usize>,
    /// API calls of every black-box run, when the preset gives them all the same budget.
    pub black_box_calls: Option<u64>,
    /// Why the budgets are what they are (printed in the report).
    pub rationale: &'static str,
}

/// The training calls after which a black-box run of the `budget` preset also scores its
/// chosen prompt on test (those below its budget; the end is always scored), so the report
/// shows what each budget buys.
pub const TEST_MILESTONES: [u64; 5] = [500, 1000, 2000, 4000, 8000];

fn strings(xs: &[&str]) -> Vec<String> {
    xs.iter().map(|s| s.to_string()).collect()
}

impl Preset {
    /// The preset called `name`: `cpu`, `budget` or `paper`.
    pub fn named(name: &str) -> anyhow::Result<Self> {
        let methods = strings(&[
            "manual",
            "manual-cc",
            "icl",
            "icl-cc",
            "feature-probe",
            "bbt",
            "bbtv2",
            "prompt-tuning",
            "lora",
            "adapter",
            "bitfit",
            "model-tuning",
        ]);
        match name {
            "cpu" => Ok(Self {
                name: "cpu",
                tasks: strings(&["mr", "sst2", "agnews"]),
                seeds: vec![13, 42, 87],
                methods,
                test_limit: Some(200),
                context_tokens: Some(512),
                black_box_calls: None,
                rationale: "Sized for 2 CPU cores and the default 135M-parameter model: about \
                    3 hours for the whole grid, most of it on AG's News (64 training examples \
                    of about 40 words). Every method scores the same 200 test examples of each \
                    task, drawn once by a fixed shuffle (a standard error of about 3 points \
                    per run at 70% accuracy). In-context learning fills 512 tokens with \
                    demonstrations, the context of the paper's RoBERTa. BBT runs the \
                    quickstart settings (5 prompt vectors before the template's tail, so each \
                    call reuses the server's cached texts; d = 100; population 20) for 300 \
                    calls. BBTv2 runs in the prefix placement (the paper's), where every call runs the whole \
                    texts (on AG's News about 4x a BBT call), so it gets one \
                    divide-and-conquer round: one generation of 5 per layer, 150 calls on 30 \
                    layers, L = 5, d = 100. The gradient methods take 12 steps of 16 examples \
                    with dev checks every 4 steps. All of this is far below the papers' \
                    budgets (8,000 calls; 1,000 steps): read the tables as what each method \
                    reaches in a few minutes of a laptop, not as its ceiling.",
            }),
            "budget" => Ok(Self {
                name: "budget",
                tasks: strings(&["mr", "sst2", "agnews"]),
                seeds: vec![13, 42, 87],
                methods: strings(&[
                    "manual",
                    "icl",
                    "feature-probe",
                    "bbt",
                    "bbtv2",
                    "bbt-rgb",
                    "prompt-tuning",
                    "lora",
                    "adapter",
                    "bitfit",
                    "model-tuning",
                ]),
                test_limit: Some(1000),
                context_tokens: Some(512),
                black_box_calls: Some(8000),
                rationale: "The black-box methods at the papers' budget of 8,000 API calls per \
                    run (`--calls` sets another), against the gradient methods at their default \
                    training (`bbt::peft::config`: 50 full-batch steps on the 32 training \
                    examples, the BBT paper's few-shot setting). All black-box runs place their \
                    prompt right before the template's tail, so the server's cached texts serve \
                    every call: BBT with the quick preset's search (L = 5, d = 100, population \
                    20), BBTv2 with a prompt of L = 5 at every layer (d = 100, population 20, \
                    sigma = alpha = 0.2), the BBT-RGB preset as `bbt tune --preset rgb` with its \
                    local search given the same third of the budget. Each black-box run also \
                    scores its chosen prompt on test after 500, 1,000, 2,000 and 4,000 calls. \
                    Every method scores the same 1,000 test examples of each task (fewer where \
                    the test set is smaller), drawn once by a fixed shuffle: a standard error \
                    of about 1.4 points per run at 70% accuracy.",
            }),
            "paper" => Ok(Self {
                name: "paper",
                tasks: strings(&["sst2", "yelp", "agnews", "dbpedia", "mrpc", "snli", "rte"]),
                seeds: vec![13, 42, 87],
                methods,
                test_limit: None,
                context_tokens: Some(512),
                black_box_calls: Some(8000),
                rationale: "The papers' settings: BBT and BBTv2 with 8,000 calls (BBT: L = 50 \
                    prefix, d = 500, population 20; BBTv2: a deep prompt, sigma = alpha = 0.2), \
                    the gradient methods with their defaults (`bbt::peft::config`), whole \
                    test sets; in-context learning fills 512 tokens with demonstrations, as the paper's \
                    RoBERTa-large context does. Meant for a GPU server.",
            }),
            _ => anyhow::bail!("unknown preset `{name}`: cpu, budget or paper"),
        }
    }

    /// The settings of `method` on `task` with `seed`; `calls` replaces the preset's budget.
    pub fn black_box(
        &self,
        task: &str,
        seed: u64,
        method: BlackBox,
        calls: Option<u64>,
    ) -> TuneConfig {
        let mut config = match (self.name, method) {
            ("budget", BlackBox::Bbt) => TuneConfig {
                dev_every: 100,
                zero_shot: false,
                ..TuneConfig::quick(task)
            },
            ("budget", BlackBox::Bbtv2) => TuneConfig {
                prompt_length: 5,
                placement: Placement::Suffix,
                intrinsic_dim: 100,
                ..TuneConfig::bbtv2(task)
            },
            (_, BlackBox::Rgb) => TuneConfig {
                dev_every: 100,
                zero_shot: false,
                ..TuneConfig::rgb(task)
            },
            ("cpu", BlackBox::Bbt) => TuneConfig {
                budget: 300,
                dev_every: 100,
                zero_shot: false,
                ..TuneConfig::quick(task)
            },
            ("cpu", BlackBox::Bbtv2) => TuneConfig {
                budget: 150,
                popsize: 5,
                prompt_length: 5,
                intrinsic_dim: 100,
                placement: Placement::Prefix,
                dev_every: 100,
                ..TuneConfig::bbtv2(task)
            },
            (_, BlackBox::Bbt) => TuneConfig::paper(task),
            (_, BlackBox::Bbtv2) => TuneConfig::bbtv2(task),
        };
        if let Some(budget) = calls.or(self.black_box_calls) {
            // The local search keeps its share of the budget.
            config.local_calls = config.local_calls * budget / config.budget;
            config.budget = budget;
        }
        if self.name == "budget" {
            config.test_at = TEST_MILESTONES
                .into_iter()
                .filter(|&m| m < config.budget)
                .collect();
        }
        config.seed = seed;
        config.test_limit = self.test_limit;
        config
    }

    /// Flags for `bbt-experiments train` beyond method, task, seed and output.
    pub fn train_flags(&self) -> Vec<String> {
        let mut flags = Vec::new();
        if self.name == "cpu" {
            flags.extend(strings(&[
                "--steps",
                "12",
                "--batch-size",
                "16",
                "--eval-every",
                "4",
            ]));
        }
        if self.name == "budget" {
            // Full-batch steps on AG News's 64 examples build a graph of about 20 GB; in
            // passes of 16 the same steps (up to rounding) fit a 24 GB machine.
            flags.extend(strings(&["--micro-batch", "16"]));
        }
        if let Some(n) = self.test_limit {
            flags.extend(["--test-limit".to_string(), n.to_string()]);
        }
        flags
    }
}

/// One run of the grid.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    pub task: String,
    pub method: String,
    pub seed: u64,
}

impl Cell {
    /// Its folder under the comparison's output: `TASK/METHOD/seedSEED`.
    pub fn dir(&self, out: &std::path::Path) -> std::path::PathBuf {
        out.join(&self.task)
            .join(&self.method)
            .join(format!("seed{}", self.seed))
    }

    /// Whether its `result.json` is already there.
    pub fn done(&self, out: &std::path::Path) -> bool {
        self.dir(out).join("result.json").exists()
    }
}

/// The cells of `all` whose result is not yet under `out`, in order.
pub fn pending<'a>(all: &'a [Cell], out: &std::path::Path) -> Vec<&'a Cell> {
    all.iter().filter(|c| !c.done(out)).collect()
}

/// Every cell, seed by seed (so a partial run has every method on the first seeds), then task,
/// then method; prompt-transfer cells come after the seed's other cells (their source prompts
/// are tuned there), on every task but their source.
pub fn cells(tasks: &[String], methods: &[String], seeds: &[u64]) -> Vec<Cell> {
    let (transfers, others): (Vec<&String>, Vec<&String>) =
        methods.iter().partition(|m| m.starts_with(TRANSFER_PREFIX));
    let mut out = Vec::new();
    for &seed in seeds {
        for group in [&others, &transfers] {
            for task in tasks {
                for method in group.iter() {
                    if method.strip_prefix(TRANSFER_PREFIX) == Some(task.as_str()) {
                        continue;
                    }
                    out.push(Cell {
                        task: task.clone(),
                        method: method.to_string(),
                        seed,
                    });
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_cells_are_skipped_and_the_order_is_seed_first() {
        let out = tempfile::tempdir().unwrap();
        let tasks = vec!["mr".to_string(), "sst2".to_string()];
        let methods = vec!["manual".to_string(), "lora".to_string()];
        let all = cells(&tasks, &methods, &[13, 42]);
        assert_eq!(all.len(), 8);
        assert_eq!(
            all.iter().take(4).map(|c| c.seed).collect::<Vec<_>>(),
            [13; 4]
        );
        assert_eq!(pending(&all, out.path()).len(), 8);
        // A finished run (its result.json) and a run killed midway (a checkpoint only).
        let done = &all[1];
        std::fs::create_dir_all(done.dir(out.path())).unwrap();
        std::fs::write(done.dir(out.path()).join("result.json"), "{}").unwrap();
        let killed = &all[2];
        std::fs::create_dir_all(killed.dir(out.path())).unwrap();
        std::fs::write(killed.dir(out.path()).join("checkpoint.json"), "{}").unwrap();
        let left = pending(&all, out.path());
        assert_eq!(left.len(), 7);
        assert!(!left.contains(&done));
        assert!(left.contains(&killed));
        assert!(MethodKind::parse("nonsense").is_err());
        assert_eq!(
            MethodKind::parse("bbtv2").unwrap(),
            MethodKind::BlackBox(BlackBox::Bbtv2)
        );
        assert_eq!(
            MethodKind::parse("bbt-rgb").unwrap().family(),
            Family::BlackBox
        );
        assert_eq!(title("lora"), "LoRA");
        assert_eq!(
            title("icl-cc"),
            "In-context learning + contextual calibration"
        );
        assert_eq!(title("bbt-from-sst2"), "BBT from the sst2 prompt");
        assert!(!MethodKind::parse("lora").unwrap().uses_server());
        // Transfer cells: after the seed's others, never on their source task.
        let methods = vec!["bbt-from-sst2".to_string(), "bbt".to_string()];
        let order: Vec<(String, String)> = cells(&tasks, &methods, &[13])
            .into_iter()
            .map(|c| (c.task, c.method))
            .collect();
        let pair = |t: &str, m: &str| (t.to_string(), m.to_string());
        assert_eq!(
            order,
            [
                pair("mr", "bbt"),
                pair("sst2", "bbt"),
                pair("mr", "bbt-from-sst2")
            ]
        );
        assert_eq!(
            MethodKind::parse("bbt-from-mr").unwrap(),
            MethodKind::Transfer
        );
        assert!(MethodKind::parse("bbt-from-").is_err());
    }
}
