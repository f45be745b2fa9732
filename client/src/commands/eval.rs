//! `bbt eval`: score a saved prompt on a task's split.

use std::path::PathBuf;

use bbt::protocol::SplitName;
use bbt_client::tune::outputs::SavedPrompt;
use bbt_client::tune::reuse::OtherTask;

use super::tune::ServerArgs;

/// Options of `bbt eval`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    server: ServerArgs,
    /// A `best_prompt.json` written by `bbt tune`.
    #[arg(long)]
    prompt: PathBuf,
    /// Task to score on (default: the prompt's own); a name or a local spec file.
    #[arg(long)]
    task: Option<String>,
    /// Few-shot examples per class of --task's train/dev sample [default: 16]; the prompt's
    /// own task keeps its saved sample.
    #[arg(long, requires = "task")]
    k: Option<usize>,
    /// Seed of --task's few-shot sample [default: 42].
    #[arg(long, requires = "task")]
    seed: Option<u64>,
    /// Split: test, dev or train.
    #[arg(long, default_value = "test", value_parser = ["test", "dev", "train"])]
    split: String,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `bbt eval`.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let saved = SavedPrompt::read(&args.prompt)?;
    let other = args.task.as_deref().map(|task| OtherTask {
        task,
        k: args.k.unwrap_or(16),
        seed: args.seed.unwrap_or(42),
    });
    let split: SplitName = serde_json::from_value(serde_json::json!(args.split))?;
    let mut client = args.server.connect()?;
    let (info, result) = saved.score(&mut client, other, split)?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"task": info.task, "split": args.split, "examples": info.split_size(split), "accuracy": result.accuracy, "f1": result.f1, "loss": result.loss})
        );
    } else {
        let f1 = result
            .f1
            .map_or(String::new(), |f| format!(", F1 {:.1}%", 100.0 * f));
        println!(
            "{} {}: accuracy {:.1}%{f1}, loss {:.4}",
            info.task,
            args.split,
            100.0 * result.accuracy,
            result.loss
        );
    }
    Ok(())
}
