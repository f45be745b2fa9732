//! The server's command line, shared by the `bbt-server` binary and `bbt serve`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::core::usage::{MemoryStore, RedisStore, UsageStore};
use crate::{ApiKeys, Limits, Service};

/// Flags of `bbt-server` (and `bbt serve`).
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    model: bbt::cli::ModelArgs,
    /// Address to listen on (loopback by default).
    #[arg(long, default_value = "127.0.0.1:8080")]
    bind: SocketAddr,
    /// File of API keys (`KEY` or `KEY QUOTA` per line); without it, no authentication.
    #[arg(long)]
    api_keys: Option<PathBuf>,
    /// Where per-key usage and quotas are kept: `memory` (this process; one server) or a Redis
    /// URL (`redis://HOST:PORT[/DB]`) shared by every replica behind a load balancer, so quotas
    /// hold across them.
    #[arg(long, default_value = "memory")]
    usage_store: String,
    /// Data directory for the paper's tasks [default: $BBT_DATA_DIR, else datasets/ in bbt's cache once `bbt fetch` made it, else ../shared/datasets].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Largest request body, bytes.
    #[arg(long, default_value_t = Limits::default().max_body_bytes)]
    max_body_bytes: usize,
    /// Candidates per evaluate call.
    #[arg(long, default_value_t = Limits::default().max_candidates)]
    max_candidates: usize,
    /// Examples per split / inputs per forward.
    #[arg(long, default_value_t = Limits::default().max_examples)]
    max_examples: usize,
    /// Tokens per example, template included.
    #[arg(long, default_value_t = Limits::default().max_example_tokens)]
    max_example_tokens: usize,
    /// Prompt length L.
    #[arg(long, default_value_t = Limits::default().max_prompt_length)]
    max_prompt_length: usize,
    /// Tokens of in-context demonstrations per session (before every input).
    #[arg(long, default_value_t = Limits::default().max_context_tokens)]
    max_context_tokens: usize,
    /// Intrinsic dimension d.
    #[arg(long, default_value_t = Limits::default().max_intrinsic_dim)]
    max_intrinsic_dim: usize,
    /// Seconds a session may stay idle before it is dropped.
    #[arg(long, default_value_t = Limits::default().session_idle.as_secs())]
    session_idle_secs: u64,
    /// Memory all sessions (projections, caches) may hold, MiB; beyond it the key holding the
    /// most loses its least recently used session first.
    #[arg(long, default_value_t = (Limits::default().max_session_bytes >> 20) as u64)]
    max_session_mb: u64,
    /// Memory one key's sessions may hold, MiB; beyond it that key's oldest sessions are evicted.
    #[arg(long, default_value_t = (Limits::default().max_session_bytes_per_key >> 20) as u64)]
    max_session_mb_per_key: u64,
    /// Requests waiting for the model before new ones get 503.
    #[arg(long, default_value_t = Limits::default().max_queue)]
    max_queue: usize,
    /// Positions one merged engine pass may gather from queued evaluate requests.
    #[arg(long, default_value_t = Limits::default().max_batch_tokens)]
    max_batch_tokens: usize,
    /// Milliseconds the model worker waits for more requests to join a batch.
    #[arg(long, default_value_t = Limits::default().max_batch_wait.as_millis() as u64)]
    max_batch_wait_ms: u64,
}

/// `mb` MiB in bytes; an error naming `flag` if that overflows.
fn mib(mb: u64, flag: &str) -> anyhow::Result<usize> {
    usize::try_from(mb)
        .ok()
        .and_then(|mb| mb.checked_mul(1 << 20))
        .ok_or_else(|| anyhow::anyhow!("{flag} {mb} is more memory than this machine can address"))
}

/// Loads the model and serves until ctrl-c. Prints `bbt-server: listening on http://ADDR` to
/// stderr once the socket is bound (a parent process may read the port from it).
pub fn run(cli: ServeArgs) -> anyhow::Result<()> {
    let keys = match &cli.api_keys {
        Some(path) => ApiKeys::from_file(path)?,
        None => ApiKeys::open(),
    };
    let limits = Limits {
        max_body_bytes: cli.max_body_bytes,
        max_candidates: cli.max_candidates,
        max_examples: cli.max_examples,
        max_example_tokens: cli.max_example_tokens,
        max_prompt_length: cli.max_prompt_length,
        max_context_tokens: cli.max_context_tokens,
        max_intrinsic_dim: cli.max_intrinsic_dim,
        session_idle: Duration::from_secs(cli.session_idle_secs),
        max_session_bytes: mib(cli.max_session_mb, "--max-session-mb")?,
        max_session_bytes_per_key: mib(cli.max_session_mb_per_key, "--max-session-mb-per-key")?,
        max_queue: cli.max_queue,
        max_batch_tokens: cli.max_batch_tokens,
        max_batch_wait: Duration::from_millis(cli.max_batch_wait_ms),
    };
    let engine = cli.model.load()?;
    eprintln!(
        "bbt-server: {} ({:?}, hidden {}) on {} in {}{}",
        engine.info().name,
        engine.config().architecture,
        engine.config().hidden_size,
        bbt::device::device_name(engine.device()),
        engine.model_dtype().as_str(),
        engine
            .cpu_kernels()
            .map(|k| format!(", {k} kernels on {}", bbt::blas::cpu()))
            .unwrap_or_default()
    );
    let data_dir = cli.data_dir.unwrap_or_else(bbt::tasks::default_data_dir);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let store: Arc<dyn UsageStore> = match cli.usage_store.as_str() {
            "memory" => Arc::new(MemoryStore::new()),
            url if url.starts_with("redis://") => Arc::new(RedisStore::connect(url).await?),
            other => anyhow::bail!("--usage-store {other}: expected `memory` or a redis:// URL"),
        };
        let service = Arc::new(
            Service::with_usage_store(engine, limits, keys.quotas(), data_dir, store)
                .with_model_id(&cli.model.model),
        );
        let listener = tokio::net::TcpListener::bind(cli.bind)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", cli.bind))?;
        eprintln!("bbt-server: listening on http://{}", listener.local_addr()?);
        crate::serve(listener, service, keys, stop_signal()).await?;
        eprintln!("bbt-server: stopped");
        Ok(())
    })
}

/// Resolves on Ctrl-C or on SIGTERM (what Docker, Kubernetes and systemd send to stop a
/// service): the server then accepts no new connection and finishes the requests in flight.
async fn stop_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    eprintln!("bbt-server: stopping: no new connections; finishing the requests in flight");
}
