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
    /// Fetch models into the cache and the paper's datasets into the data directory; with no
    /// NAME, list both.
    Fetch(commands::fetch::Args),
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
        Command::Fetch(args) => commands::fetch::run(&args),
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

#[cfg(test)]
mod tests {
    #[test]
    fn every_flag_says_what_it_does() {
        use clap::CommandFactory as _;
        let missing = bbt::help::undocumented(&super::Cli::command());
        assert!(missing.is_empty(), "flags without help: {missing:?}");
    }
}
