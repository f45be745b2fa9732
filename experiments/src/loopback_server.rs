//! An in-process bbt server on a loopback port, for the benchmarks that drive it over HTTP.

use std::sync::Arc;

use bbt_server::{ApiKeys, Limits, Service};

/// Session memory the benchmark's servers allow, MiB: 16 clients' suffix sessions (d = 500,
/// L = 10: a 11.5 MB projection and a 59 MB text cache each) under the one anonymous key
/// exceed the default per-key cap.
pub const BENCH_SESSION_MB: usize = 4096;

/// Serves `engine` (default limits but [`BENCH_SESSION_MB`] of sessions, no keys) on an
/// ephemeral loopback port, on the current tokio runtime; its base URL.
pub async fn serve_on_loopback(engine: bbt::Engine) -> anyhow::Result<String> {
    let limits = Limits {
        max_session_bytes: BENCH_SESSION_MB << 20,
        max_session_bytes_per_key: BENCH_SESSION_MB << 20,
        ..Limits::default()
    };
    let service = Arc::new(Service::new(
        engine,
        limits,
        Default::default(),
        bbt::tasks::default_data_dir(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(bbt_server::serve(
        listener,
        service,
        ApiKeys::open(),
        std::future::pending(),
    ));
    Ok(base)
}
