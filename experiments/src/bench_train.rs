//! `bench-train`: seconds per training step and peak memory of every gradient method on one
//! batch (MR's 16-shot training split, 32 examples, the default model), next to one inference
//! pass over the same batch; with `--peers`, the same step in PyTorch (+ peft) in the same run.
//!
//! Each method runs in its own child process (`bench-train --one METHOD`) so its peak resident
//! memory is its own.

use std::time::Instant;

use bbt::peft::optim::learning_rate_at;
use bbt::peft::tuners::{LoraConfig, PromptTuningConfig};
use bbt::peft::{Method, MethodConfig, Trainable, Trainer};
use serde_json::{json, Value};

use crate::train::{prepare, TrainConfig};

/// Options of `bench-train`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: bbt::cli::ModelArgs,
    /// Methods to measure (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    methods: Vec<Method>,
    /// Task whose 16-shot training split is the batch.
    #[arg(long, default_value = "mr")]
    task: String,
    /// Timed steps per method (after one warm-up step); the median is reported.
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// Also time PyTorch (+ peft) on the same batch for prompt tuning, LoRA and model tuning
    /// (needs python3 with torch, transformers, peft and gguf; `$BBT_PYTHON` picks the python).
    #[arg(long)]
    peers: bool,
    /// Internal: measure this one method in this process.
    #[arg(long, hide = true)]
    one: Option<Method>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs every method in a child process and prints their JSON lines (and the peers').
pub fn run(args: &Args) -> anyhow::Result<()> {
    if let Some(method) = args.one {
        return measure_one(args, method);
    }
    let methods = if args.methods.is_empty() {
        Method::ALL.to_vec()
    } else {
        args.methods.clone()
    };
    let exe = std::env::current_exe()?;
    let mut ours = Vec::new();
    for method in &methods {
        let out = std::process::Command::new(&exe)
            .args([
                "bench-train",
                "--one",
                method.name(),
                "--task",
                &args.task,
                "--steps",
                &args.steps.to_string(),
                "--model",
                &args.model.model,
                "--device",
                &args.model.device,
            ])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        anyhow::ensure!(
            out.status.success(),
            "bench-train {method} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        for line in text.lines() {
            println!("{line}");
            ours.push(serde_json::from_str::<Value>(line)?);
        }
    }
    if args.peers {
        run_peers(args, &methods, &ours)?;
    }
    Ok(())
}

fn bench_config(args: &Args, method: Method) -> TrainConfig {
    TrainConfig {
        task: args.task.clone(),
        k: 16,
        seed: 42,
        model: args.model.model.clone(),
        data_dir: bbt::tasks::default_data_dir(),
        test_limit: Some(0),
        first_token: false,
        method: MethodConfig::defaults(method),
    }
}

fn measure_one(args: &Args, method: Method) -> anyhow::Result<()> {
    let config = bench_config(args, method);
    let mut p = prepare(&config, &args.model.device)?;
    let idx: Vec<usize> = (0..p.train.len()).collect();
    let tokens: usize = idx
        .iter()
        .map(|&i| p.train.heads[i].len() + p.train.tails[i].len())
        .sum();
    let trainable = Trainable::new(&p.engine, &config.method, &p.verbalizer, 42)?;
    trainable.share_weights_with(&mut p.engine)?;
    let mut trainer = Trainer::new(trainable, 42)?;
    trainer.select_child_network(&mut p.engine, &p.train, 8)?;
    let lr = learning_rate_at(5, 10, 0.0, config.method.training.learning_rate);
    let mut step_times = Vec::new();
    let mut forward_times = Vec::new();
    let mut inference_times = Vec::new();
    for rep in 0..=args.steps {
        let t = Instant::now();
        let logits = trainer
            .trainable
            .logits(&mut p.engine, &p.train, &idx, true)?;
        let forward = t.elapsed().as_secs_f64();
        drop(logits);
        let t = Instant::now();
        trainer.step(&mut p.engine, &p.train, &idx, lr)?;
        let step = t.elapsed().as_secs_f64();
        let t = Instant::now();
        trainer
            .trainable
            .logits(&mut p.engine, &p.train, &idx, false)?;
        let inference = t.elapsed().as_secs_f64();
        if rep > 0 {
            step_times.push(step);
            forward_times.push(forward);
            inference_times.push(inference);
        }
    }
    let step = median(step_times);
    let inference = median(inference_times);
    println!(
        "{}",
        json!({
            "bench": "train_step",
            "method": method.name(),
            "task": args.task,
            "examples": idx.len(),
            "tokens": tokens,
            "trainable_params": trainer.trainable.num_trainable(),
            "seconds_per_step": step,
            "train_forward_seconds": median(forward_times),
            "inference_seconds": inference,
            "step_over_inference": step / inference,
            "peak_rss_mb": bbt_client::tune::outputs::peak_rss_mb(),
            "threads": available_threads(),
        })
    );
    Ok(())
}

/// Cores the engine's thread pool spreads over.
fn available_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// PyTorch's step for prompt tuning, LoRA and model tuning on the same token rows, each in its
/// own Python process, with ratios against ours.
fn run_peers(args: &Args, methods: &[Method], ours: &[Value]) -> anyhow::Result<()> {
    let config = bench_config(args, Method::Lora);
    let p = prepare(&config, "cpu")?;
    let bos = p.engine.bos_segment();
    let rows: Vec<Vec<u32>> = (0..p.train.len())
        .map(|i| [bos.as_slice(), &p.train.heads[i], &p.train.tails[i]].concat())
        .collect();
    let inputs = tempfile::NamedTempFile::new()?;
    std::fs::write(
        inputs.path(),
        serde_json::to_vec(&json!({
            "rows": rows,
            "labels": p.train.labels,
            "verbalizer": p.single_word_ids()?,
        }))?,
    )?;
    let model = bbt::assets::resolve_model(&args.model.model)?;
    for method in [Method::PromptTuning, Method::Lora, Method::ModelTuning] {
        if !methods.contains(&method) {
            continue;
        }
        let (prompt, lora) = (PromptTuningConfig::default(), LoraConfig::default());
        let result = crate::peers::run_python(
            "torch_train_step.py",
            &[
                model.display().to_string(),
                inputs.path().display().to_string(),
                method.name().to_string(),
                args.steps.to_string(),
                prompt.length.to_string(),
                lora.rank.to_string(),
                lora.alpha.to_string(),
            ],
        );
        match result {
            Ok(lines) => {
                for line in lines {
                    let mine = ours
                        .iter()
                        .find(|o| o["method"] == method.name())
                        .and_then(|o| o["seconds_per_step"].as_f64());
                    let theirs = line["seconds_per_step"].as_f64();
                    let mut line = line;
                    if let (Some(a), Some(b)) = (mine, theirs) {
                        line["bbt_over_pytorch"] = json!(a / b);
                    }
                    println!("{line}");
                }
            }
            Err(why) => println!(
                "{}",
                json!({"bench": "peer_torch_train_step", "method": method.name(), "skipped": why})
            ),
        }
    }
    Ok(())
}
