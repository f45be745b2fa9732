//! `train --peer`: the same run in PyTorch + HF peft (`peers/torch_train.py`), so bbt's
//! accuracy can be compared with the reference implementation's on equal terms.
//!
//! Everything that could differ between two implementations of one recipe is fixed here and
//! handed to the peer: the token rows of the few-shot split, the initial adapter (bbt's own
//! initialisation, written as a peft folder), the batch of every step, the learning rate of
//! every step, AdamW's settings, clipping and the evaluation steps. The peer returns the test
//! logits of its best-dev parameters and bbt scores them, so the metric code is shared too.

use std::path::Path;
use std::time::Instant;

use bbt::metrics::measure;
use bbt::peft::optim::learning_rate_at;
use bbt::peft::{Method, Trainable};
use bbt::protocol::Loss;
use bbt::scoring::EncodedSplit;
use bbt_client::summary::RunSummary;
use serde_json::{json, Value};

use super::checkpoint::StepPoint;
use super::{batch_indices, prepare, print_summary, write_curve, TrainConfig, TrainResult};

/// Methods whose PyTorch + peft version the peer runs.
const PEER_METHODS: [Method; 3] = [Method::Lora, Method::PromptTuning, Method::ModelTuning];

/// Runs `config` in the PyTorch peer and writes `result.json` and `curve.svg` to `dir`.
pub fn run(config: &TrainConfig, dir: &Path, json_out: bool) -> anyhow::Result<()> {
    let start = Instant::now();
    let mc = &config.method;
    anyhow::ensure!(
        PEER_METHODS.contains(&mc.method()),
        "the PyTorch peer runs {}; not {}",
        PEER_METHODS.map(|m| m.name()).join(", "),
        mc.method()
    );
    anyhow::ensure!(
        mc.training.loss == Loss::CrossEntropy,
        "the PyTorch peer trains with the cross-entropy loss only"
    );
    let training = &mc.training;
    let prepared = prepare(config, "cpu")?;
    let bos = prepared.engine.bos_segment();
    super::export::ensure_peft_layout(&mc.tuner, &bos)?;
    let trainable = Trainable::new(&prepared.engine, mc, &prepared.verbalizer, config.seed)?;
    let init_dir = dir.join("peer-init");
    super::export::write_peft_adapter(&init_dir, &trainable, &prepared.engine)?;
    let init_adapter = init_dir
        .join("adapter_config.json")
        .exists()
        .then(|| init_dir.display().to_string());

    let split = |s: &EncodedSplit| {
        let rows: Vec<Vec<u32>> = (0..s.len())
            .map(|i| [bos.as_slice(), &s.heads[i], &s.tails[i]].concat())
            .collect();
        json!({"rows": rows, "labels": s.labels})
    };
    let train_len = prepared.train.len();
    let batch = training.batch_size.unwrap_or(train_len).min(train_len);
    let batches: Vec<Vec<usize>> = (0..training.steps)
        .map(|step| batch_indices(train_len, batch, step, config.seed))
        .collect();
    let learning_rates: Vec<f64> = (0..training.steps)
        .map(|step| {
            learning_rate_at(
                step,
                training.steps,
                training.warmup_ratio,
                training.learning_rate,
            )
        })
        .collect();
    let spec = json!({
        "method": mc.method().name(),
        "init_adapter": init_adapter,
        "verbalizer": prepared.single_word_ids()?,
        "train": split(&prepared.train),
        "dev": split(&prepared.dev),
        "test": split(&prepared.test),
        "batches": batches,
        "learning_rates": learning_rates,
        "eval_every": training.eval_every,
        "weight_decay": training.weight_decay,
        "beta1": training.beta1,
        "beta2": training.beta2,
        "eps": training.eps,
        "max_grad_norm": training.max_grad_norm,
    });
    let spec_path = dir.join("peer-run.json");
    std::fs::write(&spec_path, serde_json::to_vec(&spec)?)?;
    let model = bbt::assets::resolve_model(&config.model)?;
    let lines = crate::peers::run_python(
        "torch_train.py",
        &[model.display().to_string(), spec_path.display().to_string()],
    )
    .map_err(|e| anyhow::anyhow!("the PyTorch peer could not run: {e}"))?;
    let peer = lines
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("the PyTorch peer printed nothing"))?;
    let result = peer_result(config, &prepared.test, prepared.spec.metric, &peer, start)?;
    super::write_json(&dir.join("result.json"), &result)?;
    write_curve(dir, &result)?;
    if json_out {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        print_summary(&result, dir);
    }
    Ok(())
}

/// `result.json` from the peer's output, the test logits scored by bbt.
fn peer_result(
    config: &TrainConfig,
    test: &EncodedSplit,
    metric: bbt::tasks::Metric,
    peer: &Value,
    start: Instant,
) -> anyhow::Result<TrainResult> {
    let field = |name: &str| {
        peer.get(name)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("the PyTorch peer's output lacks `{name}`"))
    };
    let curve: Vec<StepPoint> = serde_json::from_value(field("curve")?)?;
    let test_logits: Vec<Vec<f32>> = serde_json::from_value(field("test_logits")?)?;
    anyhow::ensure!(
        test_logits.len() == test.len(),
        "the PyTorch peer scored {} test rows of {}",
        test_logits.len(),
        test.len()
    );
    let tested =
        (!test.is_empty()).then(|| measure(&test_logits, &test.labels, Loss::CrossEntropy, metric));
    let version = |name: &str| peer[name].as_str().unwrap_or("?").to_string();
    let unmeasured = TrainResult::unmeasured(config);
    Ok(TrainResult {
        summary: RunSummary {
            best_dev_accuracy: field("best_dev_accuracy")?.as_f64(),
            test_accuracy: tested.as_ref().map(|t| t.accuracy),
            test_f1: tested.as_ref().and_then(|t| t.f1),
            test_examples: Some(test.len()),
            wall_seconds: start.elapsed().as_secs_f64(),
            peak_rss_mb: field("peak_rss_mb")?.as_f64(),
            trainable_params: field("trainable_params")?.as_u64().map(|n| n as usize),
            notes: vec![format!(
                "trained by the PyTorch peer (torch {}, transformers {}, peft {}) from bbt's \
                 initialisation, batches and learning rates",
                version("torch"),
                version("transformers"),
                version("peft")
            )],
            ..unmeasured.summary
        },
        best_train_loss: curve
            .iter()
            .map(|p| p.train_loss)
            .fold(f64::INFINITY, f64::min),
        steps: curve.len(),
        best_step: field("best_step")?.as_u64().map(|s| s as usize),
        curve,
        seconds_per_step: field("seconds_per_step")?.as_f64().unwrap_or(f64::NAN),
        ..unmeasured
    })
}
