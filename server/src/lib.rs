//! bbt-server: forward-only LM-as-a-Service for black-box prompt tuning.
//!
//! Layers, each pointing down: [`http`] (axum routes, auth, errors) → [`core`] (sessions, the
//! model worker and its queue, usage, metrics) → the `bbt` engine.

pub mod cli;
pub mod core;
#[cfg(feature = "test-util")]
pub mod daemons;
pub mod http;
pub mod process;

use std::net::SocketAddr;
use std::sync::Arc;

pub use crate::core::service::Service;
pub use crate::core::Limits;
pub use crate::http::auth::ApiKeys;

/// Serves `service` on `listener` until ctrl-c (or the future `shutdown` resolves).
pub async fn serve(
    listener: tokio::net::TcpListener,
    service: Arc<Service>,
    keys: ApiKeys,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = http::router(service, keys);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
