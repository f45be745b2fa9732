//! `bbt-experiments`: benchmarks that print one JSON object per line, and the gradient-method
//! trainer the comparisons run.

mod bench_forward;
mod bench_server;
mod bench_train;
mod cma_bench;
mod compare;
mod loopback_server;
mod peers;
mod soak;
mod train;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "bbt-experiments",
    version,
    about = "bbt benchmarks and comparisons"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Forward-pass speed: f32 matmul rate, prefill, and the BBT call shapes (JSON lines).
    BenchForward(bench_forward::Args),
    /// Server latency/throughput for 1, 4, 16 clients and upload bytes per API call (JSON lines).
    BenchServer(bench_server::Args),
    /// CMA-ES evaluations to f < 1e-8 vs pycma, and time per generation at d = 500 (JSON lines).
    CmaBench(cma_bench::Args),
    /// Seconds per training step and peak memory of every gradient method, against one
    /// inference pass and (with --peers) PyTorch + peft on the same batch (JSON lines).
    BenchTrain(bench_train::Args),
    /// Train a gradient-based method (LoRA, prompt tuning, adapters, ...) on a task's few-shot
    /// split, on the same model and scoring as `bbt tune`; resumable.
    Train(Box<train::Args>),
    /// Every method × task × seed of a preset (gradient-free baselines, BBT, BBTv2, gradient
    /// methods), resumable; writes each run's result.json, REPORT.md and SVG plots.
    Compare(Box<compare::Args>),
    /// Run a bbt-server in this process (what `compare` starts for its API methods).
    #[command(hide = true)]
    Serve(bbt_server::cli::ServeArgs),
    /// Load a LoRA or prompt-tuning run's adapter into HF transformers + peft (needs python3
    /// with torch, transformers, peft and gguf) and compare the verbalizer logits.
    PeftCheck(train::peft_check::Args),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::BenchForward(args) => bench_forward::run(&args),
        Command::BenchServer(args) => bench_server::run(&args),
        Command::CmaBench(args) => cma_bench::run(&args),
        Command::BenchTrain(args) => bench_train::run(&args),
        Command::Train(args) => train::run(&args),
        Command::PeftCheck(args) => train::peft_check::run(&args),
        Command::Compare(args) => compare::run(&args),
        Command::Serve(args) => bbt_server::cli::run(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_flag_says_what_it_does() {
        use clap::CommandFactory as _;
        let missing = bbt::help::undocumented(&super::Cli::command());
        assert!(missing.is_empty(), "flags without help: {missing:?}");
    }
}
