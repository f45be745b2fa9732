//! `bbt-server`: the forward-only HTTP server. The HTTP API is issue 4 and not built yet; for now
//! the binary loads the model (fetching it on first use) so operators can check assets and devices.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "bbt-server",
    version,
    about = "Forward-only LM-as-a-Service server (HTTP API: not yet)"
)]
struct Cli {
    #[command(flatten)]
    model: bbt::cli::ModelArgs,
}

fn main() {
    let cli = Cli::parse();
    match cli.model.load() {
        Ok(engine) => println!(
            "loaded {} ({:?}, {} layers, hidden {}); the HTTP API is not implemented yet",
            engine.info().name,
            engine.config().architecture,
            engine.config().num_layers,
            engine.config().hidden_size
        ),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}
