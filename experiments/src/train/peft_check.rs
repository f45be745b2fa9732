//! `bbt-experiments peft-check`: loads a finished LoRA or prompt-tuning run's peft adapter
//! folder into HF transformers + peft (the peer script `peers/peft_logits.py`, on the same model
//! file) and compares its verbalizer logits with bbt's on the run's dev examples.

use std::path::PathBuf;

use bbt::peft::Method;
use candle_core::DType;
use serde_json::json;

use super::load_finished;

/// Options of `peft-check`.
#[derive(clap::Args)]
pub struct Args {
    /// A finished `train` run of `lora` or `prompt-tuning` (its folder).
    #[arg(long)]
    run: PathBuf,
    /// Dev examples to compare.
    #[arg(long, default_value_t = 16)]
    examples: usize,
    /// Largest allowed |logit difference|; the command fails above it.
    #[arg(long, default_value_t = 1e-3)]
    tolerance: f64,
}

/// Runs the check and prints one JSON line with the largest difference.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let (config, mut prepared, trainable) = load_finished(&args.run, "cpu")?;
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
