//! `bbt`: the user's command line.

mod commands;
#[cfg(feature = "local")]
mod data;
#[cfg(feature = "local")]
mod demo;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "bbt",
    version,
    about = "Black-box tuning of continuous prompts for language models served as a service"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fetch assets (models) into the cache; with no NAME, list what can be fetched.
    Fetch {
        /// Asset names, e.g. smollm2-135m gemma3-270m.
        names: Vec<String>,
    },
    /// Inspect tasks and their few-shot splits.
    #[cfg(feature = "local")]
    #[command(subcommand)]
    Data(DataCommand),
    /// Zero-shot sentiment with the default model: a demo of the forward pass and verbalizer.
    #[cfg(feature = "local")]
    Demo(demo::Args),
    /// Start a local server with the default model, tune MR 16-shot, compare with zero-shot.
    #[cfg(feature = "local")]
    Quickstart(Box<commands::quickstart::Args>),
    /// Tune a continuous prompt for a task against a bbt-server (black-box: CMA-ES on z).
    Tune(Box<commands::tune::Args>),
    /// Score a tuned prompt (best_prompt.json) on a task's split.
    Eval(commands::eval::Args),
    /// Run a bbt-server in this process (the same server as the `bbt-server` binary).
    #[cfg(feature = "local")]
    Serve(bbt_server::cli::ServeArgs),
}

#[cfg(feature = "local")]
#[derive(Subcommand)]
enum DataCommand {
    /// Class counts of each split and a few examples exactly as the model will see them.
    Show(data::ShowArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Fetch { names } => fetch(&names),
        #[cfg(feature = "local")]
        Command::Demo(args) => demo::run(&args),
        #[cfg(feature = "local")]
        Command::Quickstart(args) => commands::quickstart::run(&args),
        Command::Tune(args) => commands::tune::run(&args),
        Command::Eval(args) => commands::eval::run(&args),
        #[cfg(feature = "local")]
        Command::Serve(args) => bbt_server::cli::run(args),
        #[cfg(feature = "local")]
        Command::Data(DataCommand::Show(args)) => data::show(&args).map(|text| emit(&text)),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Writes command output to stdout; a closed pipe (`bbt ... | head`) ends quietly.
#[cfg(feature = "local")]
fn emit(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

fn fetch(names: &[String]) -> anyhow::Result<()> {
    if names.is_empty() {
        println!("cache: {}", bbt::assets::cache_dir().display());
        for a in bbt::assets::KNOWN_ASSETS {
            let state = if bbt::assets::cached_path(a).exists() {
                "cached"
            } else {
                "not fetched"
            };
            println!(
                "{:<14} {:>6.1} MB  {:<12} {}",
                a.name,
                a.size as f64 / 1e6,
                state,
                a.description
            );
        }
        return Ok(());
    }
    // Check every name before fetching anything.
    let specs = names
        .iter()
        .map(|n| {
            bbt::assets::find_asset(n).ok_or_else(|| {
                let known: Vec<_> = bbt::assets::KNOWN_ASSETS.iter().map(|a| a.name).collect();
                anyhow::anyhow!("unknown asset `{n}`; known assets: {}", known.join(", "))
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    for spec in specs {
        let path = bbt::assets::fetch(spec)?;
        println!("{} -> {}", spec.name, path.display());
    }
    Ok(())
}
