//! `bbt-experiments train`: one gradient method on one task's few-shot split, with the same
//! model, splits, template and verbalizer scoring as `bbt tune`, resumable, writing the same
//! `--out` layout (`result.json`, the parameters, `curve.svg`; a HF peft adapter folder for
//! LoRA and prompt tuning).

pub mod checkpoint;
mod export;
mod peer;
pub mod peft_check;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use bbt::metrics::measure;
use bbt::model::weights::Proj;
use bbt::peft::optim::learning_rate_at;
use bbt::peft::{Method, MethodConfig, StepReport, Trainable, Trainer, TunerConfig};
use bbt::protocol::{CandidateResult, Loss, Placement};
use bbt::scoring::EncodedSplit;
use bbt::tasks::{self, LoadOptions, Metric, MultiTokenWords, TaskSpec, Template, Verbalizer};
use bbt::Engine;
use bbt_client::summary::RunSummary;
use bbt_client::tune::outputs::{peak_rss_mb, plot_curve, write_json, CurveXy};
use candle_core::{DType, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use checkpoint::{BestDev, StepPoint, TrainState, CHECKPOINT_FILE};

/// Examples per inference pass when scoring dev and test.
const EVAL_CHUNK: usize = 128;

/// Options of `train`.
#[derive(clap::Args)]
pub struct Args {
    /// The method.
    #[arg(long, value_enum)]
    method: Option<Method>,
    /// Task: a built-in name (mr, sst2, agnews, ...) or a task spec file, as `bbt tune` takes.
    #[arg(long)]
    task: Option<String>,
    /// Seed of the few-shot split, the initialisation and the batch order.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Examples per class in train and in dev.
    #[arg(long, default_value_t = 16)]
    k: usize,
    /// Output folder (created; must not hold a checkpoint: use --resume to continue one).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in this folder from its checkpoint (its settings are reused).
    #[arg(long, conflicts_with_all = ["out", "method", "task"])]
    resume: Option<PathBuf>,
    /// Model: a known asset name, a .gguf file or a HF-style directory.
    #[arg(long, default_value = bbt::assets::DEFAULT_MODEL)]
    model: String,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Data directory laid out like shared/datasets [default: $BBT_DATA_DIR, else datasets/ in bbt's cache once `bbt fetch` made it, else ../shared/datasets].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Score only a fixed subset of N test examples, the same for every seed and method (all by
    /// default).
    #[arg(long)]
    test_limit: Option<usize>,
    /// Score the first token of label words that are several tokens instead of refusing them.
    #[arg(long)]
    first_token: bool,
    /// Print one JSON object per evaluation and the result on stdout instead of a progress bar.
    #[arg(long)]
    json: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Run the same training (split, initial adapter, batches, learning rates, evaluations) in
    /// PyTorch + HF peft instead, for comparison: lora, prompt-tuning and model-tuning (needs
    /// python3 with torch, transformers, peft and gguf; `$BBT_PYTHON` picks the python).
    #[arg(long, conflicts_with = "resume")]
    peer: bool,
    #[command(flatten)]
    settings: SettingFlags,
}

/// Flags overriding a method's defaults (each documented in `bbt::peft::config` and
/// `bbt::peft::tuners`, where the per-method values are chosen).
#[derive(clap::Args)]
struct SettingFlags {
    /// Peak learning rate of AdamW [default: the method's: 3e-5 model and Child-Tuning, 3e-3
    /// prompt tuning, 1e-4 prefix tuning, 5e-3 P-tuning v2, 1e-3 the others].
    #[arg(long)]
    learning_rate: Option<f64>,
    /// AdamW's decoupled weight decay [default: 0].
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Fraction of the steps the learning rate warms up over, before it decays linearly to 0
    /// [default: 0.06].
    #[arg(long)]
    warmup_ratio: Option<f64>,
    /// Largest global L2 norm of the gradients; larger ones are rescaled [default: 1.0].
    #[arg(long)]
    max_grad_norm: Option<f64>,
    /// Optimizer steps [default: 50].
    #[arg(long)]
    steps: Option<usize>,
    /// Examples per step [default: the whole training split].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Examples per forward/backward pass within a step, gradients summed over the passes: the
    /// same step up to rounding, in the memory of N examples [default: the whole batch at once].
    #[arg(long)]
    micro_batch: Option<usize>,
    /// Evaluate on dev every N steps, keeping the best-dev parameters [default: 10].
    #[arg(long)]
    eval_every: Option<usize>,
    /// Stop after N evaluations without a better dev accuracy; 0 never stops early [default: 0].
    #[arg(long)]
    patience: Option<usize>,
    #[command(flatten)]
    pub loss: bbt::cli::LossArgs,
    /// Prompt tuning: prompt vectors L [default: 50].
    #[arg(long)]
    prompt_length: Option<usize>,
    /// Prompt tuning: prefix or suffix placement, as in `bbt tune` [default: prefix].
    #[arg(long, value_parser = ["prefix", "suffix"])]
    placement: Option<String>,
    /// Prefix tuning, P-tuning v2, MAM: key/value positions per layer [default: 30 MAM, 10
    /// the others].
    #[arg(long)]
    prefix_length: Option<usize>,
    /// Prefix tuning: width of the reparameterisation MLP [default: 512].
    #[arg(long)]
    prefix_hidden: Option<usize>,
    /// LoRA: rank r [default: 8].
    #[arg(long)]
    lora_rank: Option<usize>,
    /// LoRA: alpha; the update is scaled by alpha / r [default: 16].
    #[arg(long)]
    lora_alpha: Option<f64>,
    /// LoRA: dropout on the update's input, in [0, 1) [default: 0].
    #[arg(long)]
    lora_dropout: Option<f32>,
    /// LoRA: comma-separated projections, of q,k,v,o,gate,up,down [default: q,v].
    #[arg(long, value_delimiter = ',')]
    lora_targets: Option<Vec<Proj>>,
    /// Adapters: bottleneck width [default: 128 MAM, 64 the others].
    #[arg(long)]
    adapter_bottleneck: Option<usize>,
    /// Parallel and MAM adapters: output scale s [default: 4; 1 for the sequential adapter].
    #[arg(long)]
    adapter_scale: Option<f64>,
    /// Child-Tuning: keep probability p_F of the gradient mask (F), or the fraction p_D of
    /// weights in the child network (D), in (0, 1] [default: 0.3].
    #[arg(long)]
    child_p: Option<f64>,
}

impl SettingFlags {
    /// Sets what the flags give; an error names a flag the chosen method does not read.
    fn apply(&self, c: &mut MethodConfig) -> anyhow::Result<()> {
        let t = &mut c.training;
        macro_rules! set {
            ($($field:ident),*) => { $( if let Some(v) = self.$field { t.$field = v; } )* };
        }
        set!(
            learning_rate,
            weight_decay,
            warmup_ratio,
            max_grad_norm,
            steps,
            eval_every,
            patience
        );
        if self.batch_size.is_some() {
            t.batch_size = self.batch_size;
        }
        if self.micro_batch.is_some() {
            t.micro_batch = self.micro_batch;
        }
        if let Some(loss) = self.loss.chosen() {
            t.loss = loss;
        }
        let tuner = &mut c.tuner;
        let placement = self.placement.as_deref().map(|p| match p {
            "suffix" => Placement::Suffix,
            _ => Placement::Prefix,
        });
        set_setting(tuner, "--prompt-length", self.prompt_length, |t| {
            t.prompt_tuning_mut().map(|p| &mut p.length)
        })?;
        set_setting(tuner, "--placement", placement, |t| {
            t.prompt_tuning_mut().map(|p| &mut p.placement)
        })?;
        set_setting(tuner, "--prefix-length", self.prefix_length, |t| {
            t.prefix_length_mut()
        })?;
        set_setting(tuner, "--prefix-hidden", self.prefix_hidden, |t| {
            t.prefix_tuning_mut().map(|p| &mut p.hidden)
        })?;
        set_setting(tuner, "--lora-rank", self.lora_rank, |t| {
            t.lora_mut().map(|l| &mut l.rank)
        })?;
        set_setting(tuner, "--lora-alpha", self.lora_alpha, |t| {
            t.lora_mut().map(|l| &mut l.alpha)
        })?;
        set_setting(tuner, "--lora-dropout", self.lora_dropout, |t| {
            t.lora_mut().map(|l| &mut l.dropout)
        })?;
        set_setting(tuner, "--lora-targets", self.lora_targets.clone(), |t| {
            t.lora_mut().map(|l| &mut l.targets)
        })?;
        set_setting(
            tuner,
            "--adapter-bottleneck",
            self.adapter_bottleneck,
            |t| t.adapter_bottleneck_mut(),
        )?;
        set_setting(tuner, "--adapter-scale", self.adapter_scale, |t| {
            t.adapter_scale_mut()
        })?;
        set_setting(tuner, "--child-p", self.child_p, |t| {
            t.child_tuning_mut().map(|c| &mut c.p)
        })?;
        Ok(())
    }
}

/// Sets `value`, when given, in the setting `slot` reaches; an error names the flag and the
/// methods that have the setting when `tuner`'s method has not.
fn set_setting<T>(
    tuner: &mut TunerConfig,
    flag: &str,
    value: Option<T>,
    slot: impl Fn(&mut TunerConfig) -> Option<&mut T>,
) -> anyhow::Result<()> {
    let Some(value) = value else {
        return Ok(());
    };
    let method = tuner.method();
    match slot(tuner) {
        Some(setting) => {
            *setting = value;
            Ok(())
        }
        None => {
            let owners: Vec<&str> = TunerConfig::methods_with(&slot)
                .into_iter()
                .map(Method::name)
                .collect();
            anyhow::bail!(
                "{flag} does not apply to {method}: it is a setting of {}",
                owners.join(", ")
            )
        }
    }
}

/// The settings of a run; saved in its checkpoint and `result.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub task: String,
    pub k: usize,
    pub seed: u64,
    pub model: String,
    pub data_dir: PathBuf,
    pub test_limit: Option<usize>,
    pub first_token: bool,
    pub method: MethodConfig,
}

/// `result.json`: the fields every run's result has (API calls and bytes are 0: training runs
/// locally), plus the method's own.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainResult {
    #[serde(flatten)]
    pub summary: RunSummary,
    pub zero_shot_test_accuracy: Option<f64>,
    pub best_train_loss: f64,
    pub curve: Vec<StepPoint>,
    pub config: TrainConfig,
    /// Optimizer steps taken, and the step whose parameters were kept (best dev).
    pub steps: usize,
    pub best_step: Option<usize>,
    /// Mean wall time of one optimizer step (forward, backward, update).
    pub seconds_per_step: f64,
}

impl TrainResult {
    /// The result of `config`'s run before anything was measured: the run's identity, no API
    /// calls or bytes (training runs locally), everything else empty.
    fn unmeasured(config: &TrainConfig) -> Self {
        let mc = &config.method;
        Self {
            summary: RunSummary {
                method: mc.method().name().to_string(),
                task: config.task.clone(),
                seed: config.seed,
                budget: mc.training.steps as u64,
                api_calls: 0,
                train_api_calls: 0,
                best_dev_accuracy: None,
                test_accuracy: None,
                test_f1: None,
                test_examples: None,
                wall_seconds: 0.0,
                bytes_up: 0,
                bytes_down: 0,
                peak_rss_mb: None,
                trainable_params: None,
                notes: Vec::new(),
            },
            zero_shot_test_accuracy: None,
            best_train_loss: f64::INFINITY,
            curve: Vec::new(),
            config: config.clone(),
            steps: 0,
            best_step: None,
            seconds_per_step: 0.0,
        }
    }
}

/// Runs (or resumes) a training run.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let start = Instant::now();
    let (dir, mut state, saved) = match &args.resume {
        Some(dir) => {
            let (state, tensors) = TrainState::load(dir)?;
            (dir.clone(), state, Some(tensors))
        }
        None => {
            let (out, config) = new_run(args)?;
            if args.peer {
                return peer::run(&config, &out, args.json);
            }
            (out, fresh_state(config), None)
        }
    };
    let config = state.config.clone();
    let mc = &config.method.training;

    let Prepared {
        mut engine,
        spec,
        verbalizer,
        train,
        dev,
        test,
    } = prepare(&config, &args.device)?;
    let (mut trainer, mut best_params) =
        start_trainer(&mut engine, &verbalizer, &train, &mut state, saved.as_ref())?;

    let bar = progress_bar(args, mc.steps, state.step);
    let batch_size = mc.batch_size.unwrap_or(train.len()).min(train.len());
    let mut step_seconds_here = 0.0;
    let prior_wall = state.wall_seconds;
    let stopped_early = |s: &TrainState| mc.patience > 0 && s.evals_since_best >= mc.patience;
    while state.step < mc.steps && !stopped_early(&state) {
        let idx = batch_indices(train.len(), batch_size, state.step, config.seed);
        let lr = learning_rate_at(state.step, mc.steps, mc.warmup_ratio, mc.learning_rate);
        let t0 = Instant::now();
        let report = trainer.step(&mut engine, &train, &idx, lr)?;
        step_seconds_here += t0.elapsed().as_secs_f64();
        anyhow::ensure!(
            report.loss.is_finite(),
            "training loss became {} at step {}: lower --learning-rate",
            report.loss,
            state.step
        );
        state.step += 1;
        state.best_train_loss = state.best_train_loss.min(report.loss);
        state.curve.push(StepPoint {
            step: state.step,
            train_loss: report.loss,
            dev_accuracy: None,
        });
        if state.step % mc.eval_every == 0 || state.step == mc.steps {
            let accuracy = check_dev(
                &mut state,
                &mut best_params,
                &trainer,
                &mut engine,
                &dev,
                spec.metric,
            )?;
            state.rng = trainer.rng.clone();
            state.wall_seconds = prior_wall + start.elapsed().as_secs_f64();
            state.step_seconds += step_seconds_here;
            step_seconds_here = 0.0;
            state.save(&dir, &checkpoint_tensors(&trainer, &best_params))?;
            report_eval(args, &bar, &state, &report, accuracy);
        }
        bar.set_position(state.step as u64);
    }
    bar.finish_and_clear();

    // The kept parameters: the best on dev.
    for (p, best) in trainer.trainable.params().iter().zip(&best_params) {
        p.var.set(best)?;
    }
    let test_result = if test.is_empty() {
        None
    } else {
        Some(evaluate(
            &trainer.trainable,
            &mut engine,
            &test,
            spec.metric,
            mc.loss,
        )?)
    };
    state.wall_seconds = prior_wall + start.elapsed().as_secs_f64();
    state.step_seconds += step_seconds_here;
    let result = train_result(&state, &trainer, test_result.as_ref(), test.len());
    write_outputs(&dir, &result, &trainer, &engine)?;
    if args.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        print_summary(&result, &dir);
    }
    Ok(())
}

/// A new run's state before its first step.
fn fresh_state(config: TrainConfig) -> TrainState {
    TrainState {
        rng: ChaCha8Rng::seed_from_u64(0),
        config,
        step: 0,
        curve: Vec::new(),
        best: None,
        evals_since_best: 0,
        best_train_loss: f64::INFINITY,
        wall_seconds: 0.0,
        step_seconds: 0.0,
        tensors_file: String::new(),
    }
}

/// The trainer of `state`'s method on `engine`, and the best parameters so far: restored from
/// the checkpoint's tensors when resuming, else fresh (Child-Tuning_D selects its child
/// network on the training split first).
fn start_trainer(
    engine: &mut Engine,
    verbalizer: &Verbalizer,
    train: &EncodedSplit,
    state: &mut TrainState,
    saved: Option<&HashMap<String, Tensor>>,
) -> anyhow::Result<(Trainer, Vec<Tensor>)> {
    let seed = state.config.seed;
    let trainable = Trainable::new(engine, &state.config.method, verbalizer, seed)?;
    trainable.share_weights_with(engine)?;
    let mut trainer = Trainer::new(trainable, seed)?;
    let mut best_params: Vec<Tensor> = snapshot(&trainer)?;
    match saved {
        Some(tensors) => {
            restore(&trainer, tensors, "", &mut Vec::new())?;
            restore(&trainer, tensors, "best.", &mut best_params)?;
            let params = trainer.trainable.params();
            trainer.optimizer.restore(params, tensors, state.step)?;
            trainer.restore_mask(tensors)?;
            trainer.rng = state.rng.clone();
        }
        None => {
            trainer.select_child_network(engine, train, 8)?;
            state.rng = trainer.rng.clone();
        }
    }
    Ok((trainer, best_params))
}

/// Scores dev after a step, marks it on the curve and keeps the parameters if they are the best
/// so far (higher accuracy, ties broken by the lower loss); returns the dev accuracy.
fn check_dev(
    state: &mut TrainState,
    best_params: &mut Vec<Tensor>,
    trainer: &Trainer,
    engine: &mut Engine,
    dev: &EncodedSplit,
    metric: Metric,
) -> anyhow::Result<f64> {
    let d = evaluate(
        &trainer.trainable,
        engine,
        dev,
        metric,
        state.config.method.training.loss,
    )?;
    if let Some(p) = state.curve.last_mut() {
        p.dev_accuracy = Some(d.accuracy);
    }
    let better = state.best.as_ref().is_none_or(|b| {
        d.accuracy > b.dev_accuracy || (d.accuracy == b.dev_accuracy && d.loss < b.dev_loss)
    });
    if better {
        state.best = Some(BestDev {
            step: state.step,
            dev_accuracy: d.accuracy,
            dev_loss: d.loss,
        });
        state.evals_since_best = 0;
        *best_params = snapshot(trainer)?;
    } else {
        state.evals_since_best += 1;
    }
    Ok(d.accuracy)
}

/// The finished run's `result.json`.
fn train_result(
    state: &TrainState,
    trainer: &Trainer,
    test: Option<&CandidateResult>,
    test_examples: usize,
) -> TrainResult {
    let unmeasured = TrainResult::unmeasured(&state.config);
    TrainResult {
        summary: RunSummary {
            best_dev_accuracy: state.best.as_ref().map(|b| b.dev_accuracy),
            test_accuracy: test.map(|t| t.accuracy),
            test_f1: test.and_then(|t| t.f1),
            test_examples: Some(test_examples),
            wall_seconds: state.wall_seconds,
            peak_rss_mb: peak_rss_mb(),
            trainable_params: Some(trainer.trainable.num_trainable()),
            notes: trainer.trainable.notes().to_vec(),
            ..unmeasured.summary
        },
        best_train_loss: state.best_train_loss,
        curve: state.curve.clone(),
        steps: state.step,
        best_step: state.best.as_ref().map(|b| b.step),
        seconds_per_step: state.step_seconds / state.step.max(1) as f64,
        ..unmeasured
    }
}

/// The output folder and settings of a new run from the command line (the folder is created;
/// it must not hold a run already).
fn new_run(args: &Args) -> anyhow::Result<(PathBuf, TrainConfig)> {
    let (method, task, out) = match (args.method, &args.task, &args.out) {
        (Some(m), Some(t), Some(o)) => (m, t.clone(), o.clone()),
        _ => anyhow::bail!("give --method, --task and --out (or --resume DIR)"),
    };
    anyhow::ensure!(
        !out.join(CHECKPOINT_FILE).exists() && !out.join("result.json").exists(),
        "{} already holds a run: continue it with --resume {}, or choose another --out",
        out.display(),
        out.display()
    );
    let mut method_config = MethodConfig::defaults(method);
    args.settings.apply(&mut method_config)?;
    method_config.validate()?;
    std::fs::create_dir_all(&out)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", out.display()))?;
    let config = TrainConfig {
        task,
        k: args.k,
        seed: args.seed,
        model: args.model.clone(),
        data_dir: args
            .data_dir
            .clone()
            .unwrap_or_else(tasks::default_data_dir),
        test_limit: args.test_limit,
        first_token: args.first_token,
        method: method_config,
    };
    Ok((out, config))
}

/// A run's model and data, as the method sees them.
pub struct Prepared {
    pub engine: Engine,
    /// The task (with the null template for null prompts).
    pub spec: TaskSpec,
    pub verbalizer: Verbalizer,
    pub train: EncodedSplit,
    pub dev: EncodedSplit,
    pub test: EncodedSplit,
}

impl Prepared {
    /// The label words' token ids for a PyTorch peer, which reads one word per class.
    pub fn single_word_ids(&self) -> anyhow::Result<&[u32]> {
        anyhow::ensure!(
            self.verbalizer.is_single(),
            "the PyTorch peers read one label word per class; this task has several for a class"
        );
        Ok(self.verbalizer.ids())
    }
}

/// Loads the task's splits and the model of `config` on `device`.
pub fn prepare(config: &TrainConfig, device: &str) -> anyhow::Result<Prepared> {
    prepare_in(config, device, None)
}

/// [`prepare`] with the model in `dtype` (`None`: the device's default).
pub fn prepare_in(
    config: &TrainConfig,
    device: &str,
    dtype: Option<DType>,
) -> anyhow::Result<Prepared> {
    let data = tasks::load_task(
        &config.task,
        &LoadOptions {
            data_dir: config.data_dir.clone(),
            k: config.k,
            seed: config.seed,
            resample: false,
        },
    )?;
    let device = bbt::device::parse_device(device)?;
    let path = bbt::assets::resolve_model(&config.model)?;
    let dtype = dtype.unwrap_or_else(|| bbt::engine::default_dtype(&device));
    let engine = Engine::load_path(&path, &device, dtype)?;
    let mut spec = data.spec.clone();
    if config.method.method() == Method::NullPrompt {
        let null = if spec.template.two_inputs() {
            "<S1> <S2>"
        } else {
            "<S>"
        };
        spec.template = Template::new(null).map_err(anyhow::Error::msg)?;
    }
    let multi = if config.first_token {
        MultiTokenWords::FirstToken
    } else {
        MultiTokenWords::Reject
    };
    let (verbalizer, _) = spec
        .verbalizer_ids(engine.tokenizer(), multi)
        .map_err(|e| anyhow::anyhow!("{e}, or pass --first-token to score its first token"))?;
    let train = EncodedSplit::new(&engine, &spec, &data.train)?;
    let dev = EncodedSplit::new(&engine, &spec, &data.dev)?;
    let test_examples = tasks::test_subset(data.test.clone(), config.test_limit);
    let test = EncodedSplit::new(&engine, &spec, &test_examples)?;
    anyhow::ensure!(!train.is_empty(), "the training split is empty");
    Ok(Prepared {
        engine,
        spec,
        verbalizer,
        train,
        dev,
        test,
    })
}

/// A finished run's trained method, rebuilt from its folder (`checkpoint.json` for the
/// settings, `params.safetensors` for the kept parameters), with its model and data.
pub fn load_finished(
    dir: &Path,
    device: &str,
    dtype: Option<DType>,
) -> anyhow::Result<(TrainConfig, Prepared, Trainable)> {
    let (state, _) = TrainState::load(dir)?;
    let prepared = prepare_in(&state.config, device, dtype)?;
    let trainable = Trainable::new(
        &prepared.engine,
        &state.config.method,
        &prepared.verbalizer,
        state.config.seed,
    )?;
    let path = dir.join("params.safetensors");
    let params = candle_core::safetensors::load(&path, &candle_core::Device::Cpu)
        .map_err(|e| anyhow::anyhow!("{}: {e} (has the run finished?)", path.display()))?;
    for p in trainable.params() {
        let t = params
            .get(&p.name)
            .ok_or_else(|| anyhow::anyhow!("{} lacks {}", path.display(), p.name))?;
        p.var
            .set(&t.to_device(p.var.device())?.to_dtype(p.var.dtype())?)?;
    }
    Ok((state.config, prepared, trainable))
}

/// The batch of step `step`: the whole split, or the next `batch` positions of a per-epoch
/// shuffle seeded by `seed` and the epoch (so a resumed run draws the same batches).
fn batch_indices(n: usize, batch: usize, step: usize, seed: u64) -> Vec<usize> {
    if batch >= n {
        return (0..n).collect();
    }
    let start = step * batch;
    (start..start + batch)
        .map(|pos| {
            let epoch = pos / n;
            let mut order: Vec<usize> = (0..n).collect();
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ (epoch as u64 + 1)));
            order[pos % n]
        })
        .collect()
}

/// Scores every example of `split` with the current parameters (no gradients).
fn evaluate(
    trainable: &Trainable,
    engine: &mut Engine,
    split: &EncodedSplit,
    metric: Metric,
    loss: Loss,
) -> anyhow::Result<CandidateResult> {
    let all: Vec<usize> = (0..split.len()).collect();
    let mut logits: Vec<Vec<f32>> = Vec::with_capacity(split.len());
    for chunk in all.chunks(EVAL_CHUNK) {
        let l = trainable.logits(engine, split, chunk, false)?;
        logits.extend(l.to_dtype(DType::F32)?.to_vec2::<f32>()?);
    }
    Ok(measure(&logits, &split.labels, loss, metric))
}

/// Copies of the parameters' current values.
fn snapshot(trainer: &Trainer) -> anyhow::Result<Vec<Tensor>> {
    Ok(trainer
        .trainable
        .params()
        .iter()
        .map(|p| p.var.as_tensor().copy())
        .collect::<candle_core::Result<_>>()?)
}

/// Loads `PREFIX.NAME` tensors into the parameters (`prefix` empty) or into `into`.
fn restore(
    trainer: &Trainer,
    tensors: &HashMap<String, Tensor>,
    prefix: &str,
    into: &mut Vec<Tensor>,
) -> anyhow::Result<()> {
    let mut values = Vec::new();
    for p in trainer.trainable.params() {
        let key = format!("{prefix}{}", p.name);
        let t = tensors
            .get(&key)
            .ok_or_else(|| anyhow::anyhow!("checkpoint lacks {key}"))?;
        anyhow::ensure!(
            t.dims() == p.var.dims(),
            "checkpoint tensor {key} has shape {:?}, the model's {:?}: was the checkpoint made \
             with another model?",
            t.dims(),
            p.var.dims()
        );
        let t = t.to_device(p.var.device())?.to_dtype(p.var.dtype())?;
        if prefix.is_empty() {
            p.var.set(&t)?;
        } else {
            values.push(t);
        }
    }
    if !prefix.is_empty() {
        *into = values;
    }
    Ok(())
}

/// Parameters, best-dev parameters, AdamW moments and Child-Tuning_D's mask, by name.
fn checkpoint_tensors(trainer: &Trainer, best: &[Tensor]) -> HashMap<String, Tensor> {
    let params = trainer.trainable.params();
    let mut out = trainer.optimizer.state(params);
    out.extend(trainer.mask_state());
    for (p, b) in params.iter().zip(best) {
        out.insert(p.name.clone(), p.var.as_tensor().clone());
        out.insert(format!("best.{}", p.name), b.clone());
    }
    out
}

fn write_outputs(
    dir: &Path,
    result: &TrainResult,
    trainer: &Trainer,
    engine: &Engine,
) -> anyhow::Result<()> {
    write_json(&dir.join("result.json"), result)?;
    trainer.trainable.save(&dir.join("params.safetensors"))?;
    export::write_peft_adapter(&dir.join("peft"), &trainer.trainable, engine)?;
    write_curve(dir, result)
}

/// `curve.svg`: the training loss of every step and the dev accuracy of every evaluation.
fn write_curve(dir: &Path, result: &TrainResult) -> anyhow::Result<()> {
    let points: Vec<CurveXy> = result
        .curve
        .iter()
        .map(|p| (p.step as f64, p.train_loss, p.dev_accuracy))
        .collect();
    plot_curve(
        &dir.join("curve.svg"),
        &points,
        &format!(
            "{} on {}: training loss and dev accuracy",
            result.summary.method, result.summary.task
        ),
        "optimizer steps",
        "training loss of the batch",
    )
}

fn progress_bar(args: &Args, steps: usize, done: usize) -> ProgressBar {
    if args.quiet || args.json {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(steps as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps {msg} [{elapsed} < {eta}]")
            .expect("valid template"),
    );
    bar.set_position(done as u64);
    bar
}

fn report_eval(args: &Args, bar: &ProgressBar, state: &TrainState, report: &StepReport, dev: f64) {
    let loss = report.loss;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "step": state.step,
                "train_loss": loss,
                "grad_norm": report.grad_norm,
                "dev_accuracy": dev,
            })
        );
    }
    let best = state.best.as_ref().map_or(0.0, |b| b.dev_accuracy);
    bar.set_message(format!(
        "loss {loss:.4}, dev {:.1}% (best {:.1}%)",
        100.0 * dev,
        100.0 * best
    ));
}

fn print_summary(r: &TrainResult, dir: &Path) {
    let pct = |x: Option<f64>| x.map_or("-".into(), |a| format!("{:.1}%", 100.0 * a));
    println!(
        "{} on {} (seed {}): test accuracy {} on {} examples, best dev {} at step {}",
        r.summary.method,
        r.summary.task,
        r.summary.seed,
        pct(r.summary.test_accuracy),
        r.summary.test_examples.unwrap_or(0),
        pct(r.summary.best_dev_accuracy),
        r.best_step.map_or("-".into(), |s| s.to_string()),
    );
    println!(
        "{} trainable parameters, {} steps, {:.2} s/step, wall {:.0} s, peak memory {:.0} MB",
        r.summary.trainable_params.unwrap_or(0),
        r.steps,
        r.seconds_per_step,
        r.summary.wall_seconds,
        r.summary.peak_rss_mb.unwrap_or(0.0)
    );
    for n in &r.summary.notes {
        println!("note: {n}");
    }
    println!("results in {}", dir.display());
}
