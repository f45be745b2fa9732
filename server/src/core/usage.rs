//! Per-key accounting (API calls, tokens, bytes) and optional quotas of API calls.

use std::collections::HashMap;
use std::sync::Mutex;

use bbt::protocol::Usage;

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

    /// Checks that `key` may spend `calls` more API calls, and reserves them.
    pub fn reserve_calls(&self, key: &str, calls: u64) -> Result<(), CoreError> {
        let mut used = self.used.lock().expect("usage lock");
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
        Ok(())
    }

    /// Gives back calls reserved for a request that then failed.
    pub fn refund_calls(&self, key: &str, calls: u64) {
        if let Some(u) = self.used.lock().expect("usage lock").get_mut(key) {
            u.api_calls = u.api_calls.saturating_sub(calls);
        }
    }

    /// Adds traffic and tokens to `key`'s account.
    pub fn record(&self, key: &str, tokens: u64, bytes_in: u64, bytes_out: u64) {
        let mut used = self.used.lock().expect("usage lock");
        let u = used.entry(key.to_string()).or_default();
        u.tokens += tokens;
        u.bytes_in += bytes_in;
        u.bytes_out += bytes_out;
    }

    /// What `key` has used, with its remaining quota.
    pub fn usage(&self, key: &str) -> Usage {
        let mut u = self
            .used
            .lock()
            .expect("usage lock")
            .get(key)
            .cloned()
            .unwrap_or_default();
        u.quota_remaining = self.quotas.get(key).map(|q| q.saturating_sub(u.api_calls));
        u
    }
}
