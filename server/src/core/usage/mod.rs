//! Per-key accounting (API calls, tokens, bytes) and optional quotas of API calls, kept in a
//! [`UsageStore`]: in this process ([`MemoryStore`], one server) or in Redis ([`RedisStore`],
//! replicas behind a load balancer sharing one account per key).
//!
//! A request first reserves its API calls (refused with 429 past the quota, counting the calls
//! other requests hold), and settles when it ends: committed if it answered, released if it
//! failed or its client went away. A request may carry an idempotency key: a retry of a request
//! that was already charged (its answer was lost, e.g. with the replica that computed it) is
//! answered again but not charged again.

mod memory;
mod redis_store;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bbt::protocol::Usage;

use super::CoreError;
pub use memory::MemoryStore;
pub use redis_store::RedisStore;

/// The bucket requests without a key are counted under (server run without `--api-keys`).
pub const ANONYMOUS: &str = "";

/// Longest idempotency key accepted.
pub const MAX_IDEMPOTENCY_KEY: usize = 128;

/// Who a charged request is for: its key and, when the client sent one, the idempotency key
/// that makes a retry of it free.
#[derive(Debug, Clone, Copy, Default)]
pub struct Account<'a> {
    pub key: Option<&'a str>,
    pub idempotency: Option<&'a str>,
}

/// A store's answer, later.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, CoreError>> + Send + 'a>>;

/// What a reservation found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserved {
    /// The calls are held for the request.
    Held,
    /// A request with the same idempotency key was already charged: nothing is held, and
    /// nothing will be charged.
    AlreadyCharged,
}

/// One request's claim on a key's API calls.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The account (API key, or [`ANONYMOUS`]).
    pub key: String,
    /// Unique per request: names the held calls.
    pub ticket: String,
    pub calls: u64,
    /// The client's idempotency key, if it sent one.
    pub idempotency: Option<String>,
}

/// Where usage lives. Implementations keep each operation atomic across every server that
/// shares the store.
pub trait UsageStore: Send + Sync + 'static {
    /// Holds `claim.calls` unless the key's committed and held calls plus these would exceed
    /// `quota` (then [`CoreError::Quota`]); a claim whose idempotency key was already charged
    /// holds nothing.
    fn reserve<'a>(&'a self, claim: &'a Claim, quota: Option<u64>) -> StoreFuture<'a, Reserved>;

    /// Ends a held claim: with `Some(tokens)` its calls and tokens are charged (once per
    /// idempotency key), with `None` they are given back.
    fn settle<'a>(&'a self, claim: &'a Claim, tokens: Option<u64>) -> StoreFuture<'a, ()>;

    /// Adds request and response bytes to `key`'s account.
    fn record_traffic<'a>(
        &'a self,
        key: &'a str,
        bytes_in: u64,
        bytes_out: u64,
    ) -> StoreFuture<'a, ()>;

    /// `key`'s account (without `quota_remaining`).
    fn usage<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Usage>;
}

/// The quotas of this server's keys, over the store that keeps the accounts.
pub struct UsageBook {
    store: Arc<dyn UsageStore>,
    quotas: std::collections::HashMap<String, u64>,
}

impl UsageBook {
    /// A book over `store` with the given quotas (keys absent from `quotas` are unlimited).
    pub fn new(store: Arc<dyn UsageStore>, quotas: std::collections::HashMap<String, u64>) -> Self {
        Self { store, quotas }
    }

    /// Checks that `key` may spend `calls` more API calls, and reserves them until the request
    /// ends: the calls are kept if it commits, and given back if it fails or is dropped (its
    /// client went away), so a key is charged exactly for the answers it got.
    pub async fn reserve_calls(
        &self,
        account: Account<'_>,
        calls: u64,
    ) -> Result<Reservation, CoreError> {
        let key = account.key.unwrap_or(ANONYMOUS);
        let claim = Claim {
            key: key.to_string(),
            ticket: format!("{:032x}", rand::random::<u128>()),
            calls,
            idempotency: account.idempotency.map(str::to_string),
        };
        let reserved = self
            .store
            .reserve(&claim, self.quotas.get(key).copied())
            .await?;
        Ok(Reservation {
            store: self.store.clone(),
            claim,
            held: reserved == Reserved::Held,
        })
    }

    /// Adds request and response bytes to `key`'s account. A store that cannot be reached
    /// loses these bytes (the request itself has already been answered).
    pub async fn record(&self, key: &str, bytes_in: u64, bytes_out: u64) {
        if let Err(e) = self.store.record_traffic(key, bytes_in, bytes_out).await {
            eprintln!("bbt-server: usage of traffic not recorded: {e}");
        }
    }

    /// What `key` has used, with its remaining quota.
    pub async fn usage(&self, key: &str) -> Result<Usage, CoreError> {
        let mut u = self.store.usage(key).await?;
        u.quota_remaining = self.quotas.get(key).map(|q| q.saturating_sub(u.api_calls));
        Ok(u)
    }
}

/// API calls reserved for one request; given back on drop unless committed.
#[must_use = "a reservation is given back when dropped; commit it once the request succeeded"]
pub struct Reservation {
    store: Arc<dyn UsageStore>,
    claim: Claim,
    /// Whether calls are held (not when the idempotency key was already charged).
    held: bool,
}

impl Reservation {
    /// Charges the calls and the request's `tokens`, and says whether it did (not when a
    /// request with the same idempotency key already was charged).
    pub async fn commit(mut self, tokens: u64) -> Result<bool, CoreError> {
        if !self.held {
            return Ok(false);
        }
        self.held = false;
        self.store.settle(&self.claim, Some(tokens)).await?;
        Ok(true)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.held {
            return;
        }
        // Dropped mid-request (failed, or its client went away): give the calls back. This
        // cannot wait here, so it runs on the runtime; a store that cannot be reached lets
        // the hold expire instead.
        let (store, claim) = (self.store.clone(), self.claim.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = store.settle(&claim, None).await;
            });
        }
    }
}
