//! Per-key accounting (API calls, tokens, bytes) and optional quotas of API calls.

use std::collections::HashMap;

use bbt::protocol::Usage;
use parking_lot::Mutex;

use super::CoreError;

/// Usage of every key, and each key's quota.
pub struct UsageBook {
    used: Mutex<HashMap<String, Usage>>,
    quotas: HashMap<String, u64>,
}

/// The bucket requests without a key are counted under (server run without `--api-keys`).
pub const ANONYMOUS: &str = "";

impl UsageBook {
    /// A book with the given quotas (keys absent from `quotas` are unlimited).
    pub fn new(quotas: HashMap<String, u64>) -> Self {
        Self {
            used: Mutex::new(HashMap::new()),
            quotas,
        }
    }

    /// Checks that `key` may spend `calls` more API calls, and reserves them until the request
    /// ends: the calls are kept if it commits, and given back if it fails or is dropped (its
    /// client went away), so a key is charged exactly for the answers it got.
    pub fn reserve_calls(&self, key: &str, calls: u64) -> Result<Reservation<'_>, CoreError> {
        let mut used = self.used.lock();
        let entry = used.entry(key.to_string()).or_default();
        if let Some(&quota) = self.quotas.get(key) {
            if entry.api_calls + calls > quota {
                return Err(CoreError::Quota(format!(
                    "this key's quota of {quota} API calls is spent ({} used; this request needs {calls})",
                    entry.api_calls
                )));
            }
        }
        entry.api_calls += calls;
        Ok(Reservation {
            book: self,
            key: key.to_string(),
            calls,
            committed: false,
        })
    }

    fn refund_calls(&self, key: &str, calls: u64) {
        if let Some(u) = self.used.lock().get_mut(key) {
            u.api_calls = u.api_calls.saturating_sub(calls);
        }
    }

    /// Adds traffic and tokens to `key`'s account.
    pub fn record(&self, key: &str, tokens: u64, bytes_in: u64, bytes_out: u64) {
        let mut used = self.used.lock();
        let u = used.entry(key.to_string()).or_default();
        u.tokens += tokens;
        u.bytes_in += bytes_in;
        u.bytes_out += bytes_out;
    }

    /// What `key` has used, with its remaining quota.
    pub fn usage(&self, key: &str) -> Usage {
        let mut u = self.used.lock().get(key).cloned().unwrap_or_default();
        u.quota_remaining = self.quotas.get(key).map(|q| q.saturating_sub(u.api_calls));
        u
    }
}

/// API calls reserved for one request; given back on drop unless committed.
#[must_use = "a reservation is given back when dropped; commit it once the request succeeded"]
pub struct Reservation<'a> {
    book: &'a UsageBook,
    key: String,
    calls: u64,
    committed: bool,
}

impl Reservation<'_> {
    /// Keeps the calls, and adds the request's `tokens` to the key's account.
    pub fn commit(mut self, tokens: u64) {
        self.book.record(&self.key, tokens, 0, 0);
        self.committed = true;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.committed {
            self.book.refund_calls(&self.key, self.calls);
        }
    }
}
