//! `bench-forward`: how fast the engine runs the shapes BBT needs, next to this machine's own
//! f32 matmul rate. Inputs are random token ids and random prompts (speed does not depend on
//! content); every number is the median of several timed repetitions after a warm-up.

use std::time::Instant;

use bbt::{Engine, Prompt, Readout, Row, Segment};
use candle_core::Tensor;
use serde_json::json;

/// Options of `bench-forward`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: bbt::cli::ModelArgs,
    /// Timed repetitions per measurement (the median is printed).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Also measure llama.cpp's prefill on the same GGUF in this run (needs python3 with
    /// llama-cpp-python; prints a `peer_llama_cpp_prefill` line, or why it was skipped).
    #[arg(long)]
    peers: bool,
}

/// Median wall time of `reps` runs of `f`, after one warm-up run.
fn median_seconds(reps: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    f()?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let start = Instant::now();
        f()?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Forward FLOPs per token of the model's transformer blocks (2 per multiply-add; attention
/// scores excluded, they are small at these lengths).
fn gflop_per_token(engine: &Engine) -> f64 {
    let c = engine.config();
    let attn = c.hidden_size * (c.num_heads + 2 * c.num_kv_heads) * c.head_dim
        + c.num_heads * c.head_dim * c.hidden_size;
    let mlp = 3 * c.hidden_size * c.ffn_size;
    2.0 * (c.num_layers * (attn + mlp)) as f64 / 1e9
}

/// Deterministic pseudo-random token ids in the ordinary-text range of the vocabulary.
fn random_ids(n: usize, seed: u64, vocab: usize) -> Vec<u32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (1000 + (state >> 33) as usize % (vocab - 2000)) as u32
        })
        .collect()
}

fn random_prompt(engine: &Engine, len: usize) -> anyhow::Result<Prompt> {
    let std = engine.info().embedding_std;
    let e = Tensor::randn(
        0f32,
        std as f32,
        (len, engine.config().hidden_size),
        engine.device(),
    )?;
    Ok(Prompt::new(e.to_dtype(engine.dtype())?))
}

fn sync(engine: &Engine) -> anyhow::Result<()> {
    Ok(engine.device().synchronize()?)
}

/// Runs every measurement and prints JSON lines.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let device = args.model.open_device()?;
    let model_path = bbt::assets::resolve_model(&args.model.model)?;
    let reps = args.reps;
    let device_name = bbt::device::device_name(&device);
    let threads = candle_core::utils::get_num_threads();

    // The machine's f32 matmul rate through the same library, for reference.
    let (m, k, n) = (1024, 1024, 1024);
    let a = Tensor::randn(0f32, 1.0, (m, k), &device)?;
    let b = Tensor::randn(0f32, 1.0, (k, n), &device)?;
    let s = median_seconds(reps, || {
        a.matmul(&b)?;
        Ok(device.synchronize()?)
    })?;
    let gflops = 2.0 * (m * k * n) as f64 / s / 1e9;
    println!(
        "{}",
        json!({"bench": "matmul_f32", "m": m, "k": k, "n": n, "gflops": gflops, "device": device_name, "threads": threads})
    );

    let engine = Engine::load_path(&model_path, &device, args.model.dtype_on(&device))?;
    let vocab = engine.config().vocab_size;
    let per_token = gflop_per_token(&engine);
    let model = engine.info().name.clone();
    let verbalizer = Readout::Tokens(random_ids(2, 7, vocab));
    let bos = engine.bos_segment();

    // Prefill: 32 sequences of 64 tokens, logits at the last position.
    let (batch, tokens) = (32, 64);
    let rows: Vec<Row> = (0..batch)
        .map(|i| Row::new(vec![Segment::Tokens(random_ids(tokens, i as u64, vocab))]))
        .collect();
    let s = median_seconds(reps, || {
        engine.forward(&rows, &[], None, &verbalizer, false)?;
        sync(&engine)
    })?;
    let total = (batch * tokens) as f64;
    println!(
        "{}",
        json!({"bench": "prefill", "model": model, "batch": batch, "tokens": tokens, "seconds": s,
               "tokens_per_s": total / s, "gflops": total * per_token / s, "dtype": engine.dtype().as_str()})
    );

    if args.peers {
        run_llama_cpp_peer(&model_path, batch, tokens, reps, threads)?;
    }

    // The BBT call: 32 examples of 35 text tokens, one candidate prompt.
    let (examples, text_tokens) = (32, 35);
    let tails: Vec<Vec<u32>> = (0..examples)
        .map(|i| random_ids(text_tokens, 100 + i as u64, vocab))
        .collect();
    let prompt_len = 50;
    let prompt = random_prompt(&engine, prompt_len)?;
    let s = median_seconds(reps, || {
        engine.score_prefix(std::slice::from_ref(&prompt), &tails, &verbalizer)?;
        sync(&engine)
    })?;
    let call_tokens = (bos.len() + prompt_len + examples * text_tokens) as f64;
    println!(
        "{}",
        json!({"bench": "bbt_call_prefix", "model": model, "examples": examples, "text_tokens": text_tokens,
               "prompt_len": prompt_len, "seconds_per_call": s, "gflops": call_tokens * per_token / s})
    );

    // Suffix placement: texts cached once (warm), then [prompt][5-token template] per call.
    let template = random_ids(5, 999, vocab);
    let template_tails = vec![template; examples];
    let cache = engine.cache_texts(&tails)?;
    for prompt_len in [10, 50] {
        let prompt = random_prompt(&engine, prompt_len)?;
        let s = median_seconds(reps, || {
            engine.score_suffix(
                &cache,
                std::slice::from_ref(&prompt),
                &template_tails,
                &verbalizer,
            )?;
            sync(&engine)
        })?;
        println!(
            "{}",
            json!({"bench": "bbt_call_suffix", "model": model, "examples": examples, "text_tokens": text_tokens,
                   "prompt_len": prompt_len, "template_tokens": 5, "seconds_per_call": s,
                   "cache_mb": cache.bytes() as f64 / 1e6})
        );
    }
    Ok(())
}

/// Runs `experiments/peers/llama_cpp_prefill.py` on the same model file and relays its line.
fn run_llama_cpp_peer(
    model: &std::path::Path,
    batch: usize,
    tokens: usize,
    reps: usize,
    threads: usize,
) -> anyhow::Result<()> {
    let mut args = vec![model.display().to_string()];
    args.extend([batch, tokens, reps, threads].map(|n| n.to_string()));
    match crate::peers::run_python("llama_cpp_prefill.py", &args) {
        Ok(lines) => lines.iter().for_each(|l| println!("{l}")),
        Err(reason) => println!(
            "{}",
            json!({"bench": "peer_llama_cpp_prefill", "skipped": reason})
        ),
    }
    Ok(())
}
