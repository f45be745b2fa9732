//! `bbt tune`: tune a prompt against a bbt-server.

use std::path::PathBuf;

use bbt::protocol::{Distribution, Placement};
use bbt::tasks::LabelWords;
use bbt_client::http::{RetryPolicy, ServerClient};
use bbt_client::tune::config::TuneConfig;
use bbt_client::tune::outputs::TuneResult;
use bbt_client::tune::progress::ProgressOptions;
use bbt_client::tune::selection::Selection;
use bbt_client::tune::{self, Start};

/// Connection flags shared by the commands that talk to a server.
#[derive(clap::Args, Debug, Clone)]
pub struct ServerArgs {
    /// The bbt-server, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    pub server: String,
    /// API key (sent as a bearer token); also read from $BBT_API_KEY.
    #[arg(long, env = "BBT_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Attempts per request on 5xx and on connection errors once the server has answered
    /// (exponential backoff, at least the server's Retry-After); nothing listening at --server
    /// on the first request, a 4xx or a spent quota fails at once.
    #[arg(long, default_value_t = RetryPolicy::default().max_attempts)]
    pub attempts: u32,
}

impl ServerArgs {
    /// A client for the server.
    pub fn connect(&self) -> anyhow::Result<ServerClient> {
        let retry = RetryPolicy {
            max_attempts: self.attempts.max(1),
            ..Default::default()
        };
        Ok(ServerClient::new(
            &self.server,
            self.api_key.clone(),
            retry,
        )?)
    }
}

/// Settings of a run; each overrides the preset's value.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct SettingArgs {
    /// Few-shot examples per class.
    #[arg(long)]
    pub k: Option<usize>,
    /// Seed of the few-shot sample, the projection and CMA-ES.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Training API calls.
    #[arg(long)]
    pub budget: Option<u64>,
    /// Prompt vectors L.
    #[arg(long)]
    pub prompt_length: Option<usize>,
    /// prefix or suffix.
    #[arg(long, value_parser = parse_placement)]
    pub placement: Option<Placement>,
    /// Intrinsic dimension d.
    #[arg(long)]
    pub intrinsic_dim: Option<usize>,
    /// CMA-ES population.
    #[arg(long)]
    pub popsize: Option<usize>,
    /// CMA-ES initial step size.
    #[arg(long)]
    pub sigma: Option<f64>,
    /// Projection scale factor alpha.
    #[arg(long)]
    pub alpha: Option<f64>,
    /// normal or uniform projection entries.
    #[arg(long, value_parser = parse_distribution)]
    pub distribution: Option<Distribution>,
    #[command(flatten)]
    pub loss: bbt::cli::LossArgs,
    /// Evaluate on dev every this many training calls.
    #[arg(long)]
    pub dev_every: Option<u64>,
    /// Which prompt checked on dev becomes the result: dev-accuracy (the highest dev accuracy,
    /// BBT's rule), dev-loss (the lowest dev loss), mean-dev-accuracy / mean-dev-loss (the
    /// same among the search's estimates only: CMA-ES's mean, COBYLA's best) or final (the
    /// search's last estimate).
    #[arg(long, value_parser = Selection::parse)]
    pub select: Option<Selection>,
    /// Also score the prompt chosen so far on the test split after these numbers of training
    /// calls, comma-separated (result.json's `test_curve`).
    #[arg(long, value_delimiter = ',')]
    pub test_at: Option<Vec<u64>>,
    /// Separable CMA-ES (diagonal covariance).
    #[arg(long)]
    pub diagonal: bool,
    /// Box bound on |z_i|.
    #[arg(long)]
    pub bound: Option<f64>,
    /// Also measure the manual prompt's zero-shot test accuracy.
    #[arg(long)]
    pub zero_shot: bool,
    /// Score only a fixed subset of N test examples (the same for every seed).
    #[arg(long)]
    pub test_limit: Option<usize>,
    /// Prompt transfer: start from the prompt of an earlier BBT run (its folder or its
    /// best_prompt.safetensors; same prompt length), e.g. one tuned on another task.
    #[arg(long)]
    pub p0_from: Option<PathBuf>,
    /// Start from text: p0 = the embeddings of this instruction or these demonstrations (its
    /// first L tokens, repeated when it has fewer), embedded by the server.
    #[arg(long)]
    pub p0_text: Option<String>,
    /// Start from demonstrations: p0 = the embeddings of the first L tokens of training
    /// examples with their label words (in an order drawn from the seed), built by the server.
    #[arg(long)]
    pub p0_demonstrations: bool,
    /// Training calls, out of the budget, for a local search after CMA-ES: COBYLA started from
    /// CMA-ES's best z (BBT-RGB's two-stage search); 0 for CMA-ES only.
    #[arg(long)]
    pub local_calls: Option<u64>,
    /// COBYLA's initial trust-region radius in z.
    #[arg(long)]
    pub local_radius: Option<f64>,
    /// Label words instead of the task's own: `several` (the task's built-in lists of several
    /// words per class, BBT-RGB's multiple label words) or JSON with one entry per class, a
    /// word or a list of words whose mean logit scores the class, e.g.
    /// '[[" bad", " terrible"], [" great", " good"]]'.
    #[arg(long, value_parser = parse_label_words)]
    pub label_words: Option<LabelWordsArg>,
}

/// `--label-words`: the task's built-in lists, or the user's own.
#[derive(Debug, Clone, PartialEq)]
pub enum LabelWordsArg {
    /// The task's lists of several words per class ([`bbt::tasks::several_label_words`]).
    Several,
    /// One entry per class.
    Words(Vec<LabelWords>),
}

fn parse_label_words(s: &str) -> Result<LabelWordsArg, String> {
    if s.trim() == "several" {
        return Ok(LabelWordsArg::Several);
    }
    serde_json::from_str(s)
        .map(LabelWordsArg::Words)
        .map_err(|e| {
            format!(
            "expected `several` or a JSON list with one entry per class, each a word or a list \
             of words, e.g. '[[\" bad\", \" terrible\"], \" great\"]': {e}"
        )
        })
}

fn parse_placement(s: &str) -> Result<Placement, String> {
    match s {
        "prefix" => Ok(Placement::Prefix),
        "suffix" => Ok(Placement::Suffix),
        _ => Err(format!("`{s}`: expected prefix or suffix")),
    }
}

fn parse_distribution(s: &str) -> Result<Distribution, String> {
    match s {
        "normal" => Ok(Distribution::Normal),
        "uniform" => Ok(Distribution::Uniform),
        _ => Err(format!("`{s}`: expected normal or uniform")),
    }
}

impl SettingArgs {
    /// The preset with these overrides.
    ///
    /// # Errors
    /// `--label-words several` for a task without built-in lists of several words.
    pub fn apply(&self, mut c: TuneConfig) -> anyhow::Result<TuneConfig> {
        macro_rules! set {
            ($($field:ident),*) => { $( if let Some(v) = self.$field.clone() { c.$field = v; } )* };
        }
        set!(
            k,
            seed,
            budget,
            prompt_length,
            placement,
            intrinsic_dim,
            popsize,
            sigma,
            alpha
        );
        set!(
            distribution,
            dev_every,
            select,
            test_at,
            local_calls,
            local_radius
        );
        if let Some(loss) = self.loss.chosen() {
            c.loss = loss;
        }
        c.diagonal |= self.diagonal;
        c.zero_shot |= self.zero_shot;
        c.p0_demonstrations |= self.p0_demonstrations;
        if self.bound.is_some() {
            c.bound = self.bound;
        }
        if self.test_limit.is_some() {
            c.test_limit = self.test_limit;
        }
        if self.p0_text.is_some() {
            c.p0_text = self.p0_text.clone();
        }
        if self.p0_from.is_some() {
            c.p0_from = self.p0_from.clone();
        }
        match &self.label_words {
            Some(LabelWordsArg::Words(words)) => c.label_words = Some(words.clone()),
            Some(LabelWordsArg::Several) => {
                c.label_words =
                    Some(bbt::tasks::several_label_words(&c.task).ok_or_else(|| {
                        anyhow::anyhow!(
                        "--label-words several: task {} has no built-in lists of several label \
                         words; give them as JSON, one entry per class",
                        c.task
                    )
                    })?);
            }
            None => {}
        }
        Ok(c)
    }
}

/// How a run reports and where it writes.
#[derive(clap::Args, Debug, Clone)]
pub struct OutputArgs {
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// One JSON object per generation on stdout (and the result at the end).
    #[arg(long)]
    pub json: bool,
}

impl OutputArgs {
    pub fn progress(&self) -> ProgressOptions {
        ProgressOptions {
            quiet: self.quiet,
            json_lines: self.json,
        }
    }
}

/// Options of `bbt tune`.
#[derive(clap::Args, Debug)]
// `--sigma -1` is a bad value to refuse with its reason, not an unknown flag.
#[command(allow_negative_numbers = true)]
pub struct Args {
    #[command(flatten)]
    server: ServerArgs,
    /// Task: a name the server knows (mr, sst2, agnews, ...) or a local task spec (.toml/.json).
    #[arg(long, required_unless_present = "resume")]
    task: Option<String>,
    /// Starting settings: `paper` (BBT's: L=50 prefix, d=500, 8000 calls), `bbtv2` (BBTv2's:
    /// a prompt at every layer, sigma = alpha = 0.2), `quick` (bbt quickstart's: L=5 before
    /// the template's tail, d=100, 600 calls) or `rgb` (quick with BBT-RGB's techniques: COBYLA
    /// for the last 200 calls, several label words per class); flags below override single
    /// values.
    #[arg(long, default_value = "paper", value_parser = ["paper", "bbtv2", "quick", "rgb"])]
    preset: String,
    #[command(flatten)]
    settings: SettingArgs,
    /// Output folder (default runs/TASK-seedSEED).
    #[arg(long, conflicts_with = "resume")]
    out: Option<PathBuf>,
    /// Continue the run checkpointed in this folder (its settings are used).
    #[arg(long)]
    resume: Option<PathBuf>,
    #[command(flatten)]
    output: OutputArgs,
}

/// Runs `bbt tune`.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let (start, out) = match (&args.resume, &args.task) {
        (Some(dir), _) => (Start::Resume, dir.clone()),
        (None, Some(task)) => {
            let preset = match args.preset.as_str() {
                "quick" => TuneConfig::quick(task),
                "rgb" => TuneConfig::rgb(task),
                "bbtv2" => TuneConfig::bbtv2(task),
                _ => TuneConfig::paper(task),
            };
            let config = args.settings.apply(preset)?;
            let out = args.out.clone().unwrap_or_else(|| {
                let name = std::path::Path::new(task)
                    .file_stem()
                    .map_or(task.clone(), |s| s.to_string_lossy().into_owned());
                PathBuf::from(format!("runs/{name}-seed{}", config.seed))
            });
            (Start::Fresh(Box::new(config)), out)
        }
        (None, None) => anyhow::bail!("give --task, or --resume DIR"),
    };
    let mut client = args.server.connect()?;
    let result = tune::run(&mut client, start, &out, args.output.progress())?;
    report(&result, &out, args.output.json);
    Ok(())
}

/// Prints the outcome of a run.
pub fn report(result: &TuneResult, out: &std::path::Path, json: bool) {
    if json {
        println!("{}", serde_json::to_string(result).expect("serialises"));
        return;
    }
    let pct = |a: Option<f64>| a.map_or("-".to_string(), |a| format!("{:.1}%", 100.0 * a));
    println!(
        "{}: best dev {}, test {} after {} training calls ({} in all), {:.0} s, {} up / {} down",
        result.summary.task,
        pct(result.summary.best_dev_accuracy),
        pct(result.summary.test_accuracy),
        result.summary.train_api_calls,
        result.summary.api_calls,
        result.summary.wall_seconds,
        human_bytes(result.summary.bytes_up),
        human_bytes(result.summary.bytes_down)
    );
    println!("results in {}", out.display());
}

/// `1.2 MB`-style sizes.
pub fn human_bytes(b: u64) -> String {
    match b {
        0..1_000 => format!("{b} B"),
        1_000..1_000_000 => format!("{:.1} kB", b as f64 / 1e3),
        _ => format!("{:.1} MB", b as f64 / 1e6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// The setting flags alone, as `bbt tune` parses them.
    #[derive(Parser)]
    struct Settings {
        #[command(flatten)]
        settings: SettingArgs,
    }

    #[test]
    fn the_rgb_preset_is_the_quick_preset_with_the_flags_docs_tuning_names() {
        let docs = include_str!("../../../docs/TUNING.md");
        let marker = "`bbt tune --preset rgb` is `bbt tune --preset quick ";
        let start = docs
            .find(marker)
            .expect("docs/TUNING.md defines the rgb preset")
            + marker.len();
        let flags = &docs[start..start + docs[start..].find('`').unwrap()];
        let parsed =
            Settings::try_parse_from(std::iter::once("settings").chain(flags.split_whitespace()))
                .unwrap();
        for task in ["mr", "sst2", "agnews"] {
            let documented = parsed.settings.apply(TuneConfig::quick(task)).unwrap();
            assert_eq!(documented, TuneConfig::rgb(task), "{task}: {flags}");
        }
    }
}
