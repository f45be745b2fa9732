//! `bbt-server`: the forward-only HTTP server. The HTTP API is issue 4 and not built yet; for now
//! the binary loads the model (fetching it on first use) so operators can check assets and devices.

fn main() {
    let mut args = std::env::args().skip(1);
    let model = args.next().unwrap_or_else(|| "smollm2-135m".into());
    let device = args.next().unwrap_or_else(|| "cpu".into());
    let loaded = bbt::device::parse_device(&device).and_then(|d| bbt::Engine::load(&model, &d));
    match loaded {
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
