//! `bench-forward`: how fast the engine runs the shapes BBT needs, in each dtype and CPU kernel
//! family, next to this machine's own matmul rates and, with `--peers`, PyTorch measured in the
//! same run. Inputs are random token ids and random prompts (speed does not depend on
//! content); every number is the median of several timed repetitions after a warm-up.

use std::time::Instant;

use bbt::{Engine, Prompt, Readout, Row, Segment};
use candle_core::{DType, Tensor};
use serde_json::json;

/// Options of `bench-forward`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: bbt::cli::ModelArgs,
    /// Timed repetitions per measurement (the median is printed).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Also measure the peers on the same model file in this run: PyTorch (transformers) in fp32
    /// and bf16 on the same shapes and thread count, with `ratio` lines (bbt's speed over
    /// PyTorch's), and llama.cpp's prefill (needs python3 with torch, transformers, peft and gguf,
    /// and llama-cpp-python; a peer that cannot run prints why it was skipped).
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

/// The shapes measured (BBT's, as in the papers' setting).
const PREFILL: (usize, usize) = (32, 64);
const EXAMPLES: usize = 32;
const TEXT_TOKENS: usize = 35;
const PROMPT_LEN: usize = 50;
/// The CPU libraries measured where they load.
const LIBRARIES: [bbt::blas::BlasKind; 3] = [
    bbt::blas::BlasKind::OpenBlas,
    bbt::blas::BlasKind::Mkl,
    bbt::blas::BlasKind::OneDnn,
];

/// One configuration of the engine: a dtype and, on the CPU, a kernel family.
struct Config {
    dtype: DType,
    /// `Some(None)`: candle's gemm; `Some(Some(blas))`: that library; `None`: not a CPU.
    cpu_kernels: Option<Option<&'static bbt::blas::Blas>>,
}

/// What a configuration measured, for the ratio lines.
struct Measured {
    label: String,
    dtype: &'static str,
    prefill_tokens_per_s: f64,
    prefix_call_seconds: f64,
}

/// Runs every measurement and prints JSON lines.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let device = args.model.open_device()?;
    let model_path = bbt::assets::resolve_model(&args.model.model)?;
    let reps = args.reps;
    let device_name = bbt::device::device_name(&device);
    let threads = candle_core::utils::get_num_threads();
    let cpu = bbt::blas::cpu();
    let kernels = bbt::blas::kernels()?;
    // Load both libraries up front (fetching them on first use) so the timings exclude it.
    for kind in LIBRARIES {
        bbt::blas::library(kind);
    }
    println!(
        "{}",
        json!({"bench": "machine", "cpu": cpu.model, "isa": cpu.isa(), "threads": threads,
               "device": device_name, "kernels": kernels.describe()})
    );
    matmul_rates(&device, reps)?;

    // The engine's configurations: on the CPU, f32 on candle's gemm and on each library that
    // loads here, and bf16 on each library that packs weights (oneMKL, oneDNN); `--dtype` other
    // than auto keeps only that dtype.
    let auto = bbt::engine::default_dtype(&device);
    let wanted = |d: DType| {
        args.model.dtype == bbt::cli::DTypeArg::Auto || args.model.dtype_on(&device) == d
    };
    let mut configs = Vec::new();
    if device.is_cpu() {
        for dtype in [DType::F32, DType::BF16] {
            if !wanted(dtype) {
                continue;
            }
            if dtype == DType::F32 {
                configs.push(Config {
                    dtype,
                    cpu_kernels: Some(None),
                });
            }
            for kind in LIBRARIES {
                let Some(blas) = bbt::blas::library(kind) else {
                    continue;
                };
                if dtype == DType::F32 || blas.packs_weights() {
                    configs.push(Config {
                        dtype,
                        cpu_kernels: Some(Some(blas)),
                    });
                }
            }
        }
    } else {
        configs.push(Config {
            dtype: args.model.dtype_on(&device),
            cpu_kernels: None,
        });
    }
    let mut measured = Vec::new();
    for config in &configs {
        let mut engine = Engine::load_path(&model_path, &device, config.dtype)?;
        if let Some(mkl) = config.cpu_kernels {
            engine.use_cpu_kernels(mkl)?;
        }
        measured.push(measure_engine(&engine, config.dtype == auto, reps)?);
    }

    if args.peers {
        let (batch, tokens) = PREFILL;
        run_llama_cpp_peer(&model_path, batch, tokens, reps, threads)?;
        run_torch_peer(&model_path, reps, threads, &measured)?;
    }
    Ok(())
}

/// The machine's matmul rates at 1024³ through each kernel family, for reference.
fn matmul_rates(device: &candle_core::Device, reps: usize) -> anyhow::Result<()> {
    let (m, k, n) = (1024, 1024, 1024);
    let flop = 2.0 * (m * k * n) as f64;
    let a = Tensor::randn(0f32, 1.0, (m, k), device)?;
    let b = Tensor::randn(0f32, 1.0, (k, n), device)?;
    let s = median_seconds(reps, || {
        a.matmul(&b)?;
        Ok(device.synchronize()?)
    })?;
    println!(
        "{}",
        json!({"bench": "matmul", "kernels": "candle", "dtype": "f32", "m": m, "k": k, "n": n,
               "gflops": flop / s / 1e9})
    );
    if !device.is_cpu() {
        return Ok(());
    }
    let x = a.flatten_all()?.to_vec1::<f32>()?;
    let w = b.t()?.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    if let Some(ob) = bbt::blas::library(bbt::blas::BlasKind::OpenBlas) {
        let s = median_seconds(reps, || {
            bbt::blas::matmul_nt(ob, &x, &w, m, k, n)?;
            Ok(())
        })?;
        println!(
            "{}",
            json!({"bench": "matmul", "kernels": ob.label(), "dtype": "f32", "m": m, "k": k, "n": n,
                   "gflops": flop / s / 1e9})
        );
    }
    for kind in [bbt::blas::BlasKind::Mkl, bbt::blas::BlasKind::OneDnn] {
        let Some(blas) = bbt::blas::library(kind) else {
            continue;
        };
        for precision in [bbt::blas::Precision::F32, bbt::blas::Precision::Bf16] {
            let packed = bbt::blas::PackedWeight::pack(blas, &w, n, k, precision)?;
            let s = median_seconds(reps, || {
                packed.matmul_t(blas, &x, m)?;
                Ok(())
            })?;
            let dtype = match precision {
                bbt::blas::Precision::F32 => "f32",
                bbt::blas::Precision::Bf16 => "bf16",
            };
            println!(
                "{}",
                json!({"bench": "matmul", "kernels": blas.label(), "dtype": dtype, "packed": true,
                       "implementation": packed.implementation(blas),
                       "m": m, "k": k, "n": n, "gflops": flop / s / 1e9})
            );
        }
    }
    Ok(())
}

/// Prefill, the BBT prefix call and the suffix calls of one engine configuration.
fn measure_engine(engine: &Engine, is_auto: bool, reps: usize) -> anyhow::Result<Measured> {
    let vocab = engine.config().vocab_size;
    let per_token = gflop_per_token(engine);
    let model = engine.info().name.clone();
    let dtype = engine.model_dtype().as_str();
    let kernels = engine.cpu_kernels().unwrap_or("gpu").to_string();
    let label = format!("{dtype}/{kernels}");
    let verbalizer = Readout::Tokens(random_ids(2, 7, vocab));
    let bos = engine.bos_segment();

    // Prefill: 32 sequences of 64 tokens, logits at the last position.
    let (batch, tokens) = PREFILL;
    let rows: Vec<Row> = (0..batch)
        .map(|i| Row::new(vec![Segment::Tokens(random_ids(tokens, i as u64, vocab))]))
        .collect();
    let s = median_seconds(reps, || {
        engine.forward(&rows, &[], None, &verbalizer, false)?;
        sync(engine)
    })?;
    let total = (batch * tokens) as f64;
    let prefill_tokens_per_s = total / s;
    println!(
        "{}",
        json!({"bench": "prefill", "model": model, "dtype": dtype, "kernels": kernels, "auto": is_auto,
               "batch": batch, "tokens": tokens, "seconds": s,
               "tokens_per_s": prefill_tokens_per_s, "gflops": total * per_token / s})
    );

    // The BBT call: 32 examples of 35 text tokens, one candidate prompt.
    let tails: Vec<Vec<u32>> = (0..EXAMPLES)
        .map(|i| random_ids(TEXT_TOKENS, 100 + i as u64, vocab))
        .collect();
    let prompt = random_prompt(engine, PROMPT_LEN)?;
    let prefix_call_seconds = median_seconds(reps, || {
        engine.run_prefix(std::slice::from_ref(&prompt), &tails, &verbalizer)?;
        sync(engine)
    })?;
    let call_tokens = (bos.len() + PROMPT_LEN + EXAMPLES * TEXT_TOKENS) as f64;
    println!(
        "{}",
        json!({"bench": "bbt_call_prefix", "model": model, "dtype": dtype, "kernels": kernels,
               "auto": is_auto, "examples": EXAMPLES, "text_tokens": TEXT_TOKENS,
               "prompt_len": PROMPT_LEN, "seconds_per_call": prefix_call_seconds,
               "gflops": call_tokens * per_token / prefix_call_seconds})
    );

    // Suffix placement: texts cached once (warm), then [prompt][5-token template] per call.
    let template = random_ids(5, 999, vocab);
    let template_tails = vec![template; EXAMPLES];
    let cache = engine.cache_texts(&tails)?;
    for prompt_len in [10, 50] {
        let prompt = random_prompt(engine, prompt_len)?;
        let s = median_seconds(reps, || {
            engine.run_suffix(
                &cache,
                std::slice::from_ref(&prompt),
                &template_tails,
                &verbalizer,
            )?;
            sync(engine)
        })?;
        println!(
            "{}",
            json!({"bench": "bbt_call_suffix", "model": model, "dtype": dtype, "kernels": kernels,
                   "auto": is_auto, "examples": EXAMPLES, "text_tokens": TEXT_TOKENS,
                   "prompt_len": prompt_len, "template_tokens": 5, "seconds_per_call": s,
                   "cache_mb": cache.bytes() as f64 / 1e6})
        );
    }
    Ok(Measured {
        label,
        dtype,
        prefill_tokens_per_s,
        prefix_call_seconds,
    })
}

/// Runs `experiments/peers/torch_forward.py` on the same model file and shapes, relays its
/// lines, and prints bbt's speed relative to PyTorch in the same dtype (above 1: bbt faster).
fn run_torch_peer(
    model: &std::path::Path,
    reps: usize,
    threads: usize,
    measured: &[Measured],
) -> anyhow::Result<()> {
    let (batch, tokens) = PREFILL;
    let mut args = vec![model.display().to_string()];
    args.extend(
        [
            batch,
            tokens,
            EXAMPLES,
            TEXT_TOKENS,
            PROMPT_LEN,
            reps,
            threads,
        ]
        .map(|n| n.to_string()),
    );
    let lines = match crate::peers::run_python("torch_forward.py", &args) {
        Ok(lines) => lines,
        Err(reason) => {
            println!(
                "{}",
                json!({"bench": "peer_torch_forward", "skipped": reason})
            );
            return Ok(());
        }
    };
    for l in &lines {
        println!("{l}");
    }
    let peer = |bench: &str, dtype: &str, field: &str| {
        lines
            .iter()
            .find(|l| l["bench"] == bench && l["dtype"] == dtype)
            .and_then(|l| l[field].as_f64())
    };
    for m in measured {
        for peer_dtype in ["f32", "bf16"] {
            if let Some(t) = peer("peer_torch_prefill", peer_dtype, "tokens_per_s") {
                println!(
                    "{}",
                    json!({"bench": "ratio", "shape": "prefill", "bbt": m.label,
                           "peer": format!("torch-{peer_dtype}"), "same_dtype": m.dtype == peer_dtype,
                           "speedup": m.prefill_tokens_per_s / t})
                );
            }
            if let Some(t) = peer("peer_torch_bbt_call_prefix", peer_dtype, "seconds_per_call") {
                println!(
                    "{}",
                    json!({"bench": "ratio", "shape": "bbt_call_prefix", "bbt": m.label,
                           "peer": format!("torch-{peer_dtype}"), "same_dtype": m.dtype == peer_dtype,
                           "speedup": t / m.prefix_call_seconds})
                );
            }
        }
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
