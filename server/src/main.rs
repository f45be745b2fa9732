//! `bbt-server`: serve forward passes of a language model for black-box prompt tuning.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "bbt-server",
    version,
    about = "Forward-only LM-as-a-Service for black-box prompt tuning"
)]
struct Cli {
    #[command(flatten)]
    serve: bbt_server::cli::ServeArgs,
}

fn main() {
    if let Err(e) = bbt_server::cli::run(Cli::parse().serve) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
