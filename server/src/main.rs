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

#[cfg(test)]
mod tests {
    #[test]
    fn every_flag_says_what_it_does() {
        use clap::CommandFactory as _;
        let missing = bbt::help::undocumented(&super::Cli::command());
        assert!(missing.is_empty(), "flags without help: {missing:?}");
    }
}
