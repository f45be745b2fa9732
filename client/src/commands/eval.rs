//! `bbt eval`: score a saved prompt on a task's split.

use std::path::PathBuf;

use bbt::protocol::SplitName;
use bbt_client::tune::outputs::SavedPrompt;
use bbt_client::tune::{set_layers, split_layers, task_request};

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
    let text = std::fs::read_to_string(&args.prompt)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", args.prompt.display()))?;
    let saved: SavedPrompt = serde_json::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{} is not a bbt best_prompt.json: {e}",
            args.prompt.display()
        )
    })?;
    anyhow::ensure!(!saved.z.is_empty(), "{} holds no z", args.prompt.display());
    let mut session = saved.session.clone();
    if let Some(task) = &args.task {
        session.task = task_request(
            task,
            args.k.unwrap_or(16),
            args.seed.unwrap_or(42),
            None,
            None,
        )?;
    }
    let split: SplitName = serde_json::from_value(serde_json::json!(args.split))?;
    let mut client = args.server.connect()?;
    let info = client.create_session(&session)?;
    let scored = if session.deep {
        let layers = split_layers(&saved.z, session.projection.intrinsic_dim);
        set_layers(&mut client, &info.id, &layers)
            .and_then(|()| client.evaluate(&info.id, &layers[0], split, Some(0)))
    } else {
        client.evaluate(&info.id, &saved.z, split, None)
    };
    let _ = client.delete_session(&info.id);
    let result = scored?
        .results
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("the server returned no result"))?;
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
