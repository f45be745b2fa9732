//! `bbt-experiments peft-check`: loads a finished run's peft adapter folder (a LoRA or
//! prompt-tuning `train` run's, or a `bbt tune` run's tuned prompt) into HF transformers + peft
//! (the peer script `peers/peft_logits.py`, on the same model file) and compares its verbalizer
//! logits with bbt's on the run's dev examples.

use std::path::{Path, PathBuf};

use bbt::peft::tuners::PromptTuningConfig;
use bbt::peft::{Method, MethodConfig, Trainable, TunerConfig};
use bbt::protocol::Placement;
use bbt_client::tune::outputs::{read_prompt, TuneResult};
use candle_core::{DType, Device, Tensor};
use serde_json::json;

use super::{load_finished, prepare_in, Prepared, TrainConfig};

/// Options of `peft-check`.
#[derive(clap::Args)]
pub struct Args {
    /// A finished `train` run of `lora` or `prompt-tuning`, or a `bbt tune` run in the prefix
    /// placement (its folder).
    #[arg(long)]
    run: PathBuf,
    /// The model a `bbt tune` run was tuned on (its server's `--model`); a `train` run
    /// records its own.
    #[arg(long, default_value = bbt::assets::DEFAULT_MODEL)]
    model: String,
    /// Dev examples to compare.
    #[arg(long, default_value_t = 16)]
    examples: usize,
    /// Largest allowed |logit difference|; the command fails above it.
    #[arg(long, default_value_t = 1e-3)]
    tolerance: f64,
}

/// A `bbt tune` run's prompt as the prompt-tuning parameters it is in peft's terms, with the
/// run's task, few-shot sample and test subset on `model`.
fn load_tuned_prompt(
    dir: &Path,
    model: &str,
) -> anyhow::Result<(TrainConfig, Prepared, Trainable)> {
    let path = dir.join("result.json");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        anyhow::anyhow!(
            "cannot read {}: {e} (has the run finished?)",
            path.display()
        )
    })?;
    let result: TuneResult = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: not a bbt tune result: {e}", path.display()))?;
    let tuned = &result.config;
    anyhow::ensure!(
        dir.join("peft").join("adapter_config.json").exists(),
        "{} has no peft adapter: bbt tune writes one for a BBT prompt in the prefix placement \
         on a model without a BOS token",
        dir.display()
    );
    anyhow::ensure!(
        tuned.label_words.is_none(),
        "the run scored its own label words; the check uses the task's"
    );
    let mut method = MethodConfig::defaults(Method::PromptTuning);
    method.tuner = TunerConfig::PromptTuning(PromptTuningConfig {
        length: tuned.prompt_length,
        placement: Placement::Prefix,
    });
    let config = TrainConfig {
        task: tuned.task.clone(),
        k: tuned.k,
        seed: tuned.seed,
        model: model.to_string(),
        data_dir: bbt::tasks::default_data_dir(),
        test_limit: tuned.test_limit,
        first_token: false,
        method,
    };
    // In f32, as the peer computes.
    let prepared = prepare_in(&config, "cpu", Some(DType::F32))?;
    let trainable = Trainable::new(
        &prepared.engine,
        &config.method,
        &prepared.verbalizer,
        config.seed,
    )?;
    let rows = read_prompt(dir, tuned.prompt_length)?;
    let hidden = rows.first().map_or(0, Vec::len);
    let prompt = Tensor::from_vec(rows.concat(), (rows.len(), hidden), &Device::Cpu)?;
    let param = &trainable.params()[0];
    param.var.set(
        &prompt
            .to_device(param.var.device())?
            .to_dtype(param.var.dtype())?,
    )?;
    Ok((config, prepared, trainable))
}

/// Runs the check and prints one JSON line with the largest difference.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let (config, mut prepared, trainable) = if args.run.join("best_prompt.json").exists() {
        load_tuned_prompt(&args.run, &args.model)?
    } else {
        // In f32, as the peer computes.
        load_finished(&args.run, "cpu", Some(DType::F32))?
    };
    let method = config.method.method();
    anyhow::ensure!(
        matches!(method, Method::Lora | Method::PromptTuning),
        "{} has no HF peft adapter to check (only lora and prompt-tuning runs write one)",
        method
    );
    let bos = prepared.engine.bos_segment();
    super::export::ensure_peft_layout(&config.method.tuner, &bos)?;
    let dev = &prepared.dev;
    let n = args.examples.min(dev.len());
    anyhow::ensure!(n > 0, "the run's dev split is empty");
    let idx: Vec<usize> = (0..n).collect();
    let ours: Vec<Vec<f32>> = trainable
        .logits(&mut prepared.engine, dev, &idx, false)?
        .to_dtype(DType::F32)?
        .to_vec2()?;
    let rows: Vec<Vec<u32>> = idx
        .iter()
        .map(|&i| [bos.as_slice(), &dev.heads[i], &dev.tails[i]].concat())
        .collect();
    let inputs = tempfile::NamedTempFile::new()?;
    std::fs::write(
        inputs.path(),
        serde_json::to_vec(&json!({"rows": rows, "verbalizer": prepared.single_word_ids()?}))?,
    )?;
    let model = bbt::assets::resolve_model(&config.model)?;
    let out = crate::peers::run_python(
        "peft_logits.py",
        &[
            model.display().to_string(),
            args.run.join("peft").display().to_string(),
            inputs.path().display().to_string(),
        ],
    )
    .map_err(|e| anyhow::anyhow!("the peft peer could not run: {e}"))?;
    let peer = out
        .first()
        .ok_or_else(|| anyhow::anyhow!("the peft peer printed nothing"))?;
    let theirs: Vec<Vec<f64>> = serde_json::from_value(peer["logits"].clone())?;
    anyhow::ensure!(
        theirs.len() == ours.len(),
        "the peer returned {} rows",
        theirs.len()
    );
    let max_diff = ours
        .iter()
        .zip(&theirs)
        .flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| (*x as f64 - y).abs()))
        .fold(0f64, f64::max);
    let line = json!({
        "peft_check": method.name(),
        "run": args.run,
        "examples": n,
        "max_abs_logit_diff": max_diff,
        "tolerance": args.tolerance,
        "torch": peer["torch"],
        "transformers": peer["transformers"],
        "peft": peer["peft"],
    });
    println!("{line}");
    anyhow::ensure!(
        max_diff <= args.tolerance,
        "bbt and HF peft differ by {max_diff:.2e} (> {:.0e})",
        args.tolerance
    );
    Ok(())
}
