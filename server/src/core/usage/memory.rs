//! Usage kept in this process: the store of a single server.

use std::collections::{HashMap, HashSet, VecDeque};

use bbt::protocol::Usage;
use parking_lot::Mutex;

use super::{Claim, Reserved, StoreFuture, UsageStore};
use crate::core::CoreError;

/// Idempotency keys remembered per server, oldest forgotten first.
const REMEMBERED_IDEMPOTENCY_KEYS: usize = 100_000;

#[derive(Default)]
struct Account {
    usage: Usage,
    /// Calls held by requests in flight, by ticket.
    held: HashMap<String, u64>,
}

#[derive(Default)]
struct Book {
    accounts: HashMap<String, Account>,
    /// `(key, idempotency key)` of charged requests, and their order.
    charged: HashSet<(String, String)>,
    order: VecDeque<(String, String)>,
}

/// Every key's account in memory.
#[derive(Default)]
pub struct MemoryStore {
    book: Mutex<Book>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn reserve_now(&self, claim: &Claim, quota: Option<u64>) -> Result<Reserved, CoreError> {
        let mut book = self.book.lock();
        if let Some(idem) = &claim.idempotency {
            if book.charged.contains(&(claim.key.clone(), idem.clone())) {
                return Ok(Reserved::AlreadyCharged);
            }
        }
        let account = book.accounts.entry(claim.key.clone()).or_default();
        let used = account.usage.api_calls;
        let held: u64 = account.held.values().sum();
        if let Some(quota) = quota {
            if used.saturating_add(held).saturating_add(claim.calls) > quota {
                return Err(quota_spent(quota, used, held, claim.calls));
            }
        }
        account.held.insert(claim.ticket.clone(), claim.calls);
        Ok(Reserved::Held)
    }

    fn settle_now(&self, claim: &Claim, tokens: Option<u64>) {
        let mut book = self.book.lock();
        let Book {
            accounts,
            charged,
            order,
        } = &mut *book;
        let account = accounts.entry(claim.key.clone()).or_default();
        account.held.remove(&claim.ticket);
        let Some(tokens) = tokens else { return };
        if let Some(idem) = &claim.idempotency {
            let id = (claim.key.clone(), idem.clone());
            if !charged.insert(id.clone()) {
                return;
            }
            order.push_back(id);
            if order.len() > REMEMBERED_IDEMPOTENCY_KEYS {
                if let Some(old) = order.pop_front() {
                    charged.remove(&old);
                }
            }
        }
        account.usage.api_calls += claim.calls;
        account.usage.tokens += tokens;
    }
}

/// The 429 of a claim over its key's quota.
pub(super) fn quota_spent(quota: u64, used: u64, held: u64, calls: u64) -> CoreError {
    let in_flight = if held > 0 {
        format!(", {held} held by requests in flight")
    } else {
        String::new()
    };
    CoreError::Quota(format!(
        "this key's quota of {quota} API calls is spent ({used} used{in_flight}; this request \
         needs {calls})"
    ))
}

impl UsageStore for MemoryStore {
    fn reserve<'a>(&'a self, claim: &'a Claim, quota: Option<u64>) -> StoreFuture<'a, Reserved> {
        let answer = self.reserve_now(claim, quota);
        Box::pin(async move { answer })
    }

    fn settle<'a>(&'a self, claim: &'a Claim, tokens: Option<u64>) -> StoreFuture<'a, ()> {
        self.settle_now(claim, tokens);
        Box::pin(async { Ok(()) })
    }

    fn record_traffic<'a>(
        &'a self,
        key: &'a str,
        bytes_in: u64,
        bytes_out: u64,
    ) -> StoreFuture<'a, ()> {
        let mut book = self.book.lock();
        let usage = &mut book.accounts.entry(key.to_string()).or_default().usage;
        usage.bytes_in += bytes_in;
        usage.bytes_out += bytes_out;
        Box::pin(async { Ok(()) })
    }

    fn usage<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Usage> {
        let usage = self
            .book
            .lock()
            .accounts
            .get(key)
            .map(|a| a.usage.clone())
            .unwrap_or_default();
        Box::pin(async move { Ok(usage) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(ticket: &str, calls: u64, idempotency: Option<&str>) -> Claim {
        Claim {
            key: "k".into(),
            ticket: ticket.into(),
            calls,
            idempotency: idempotency.map(str::to_string),
        }
    }

    #[test]
    fn held_calls_count_against_the_quota_and_idempotent_retries_are_charged_once() {
        let store = MemoryStore::new();
        let a = claim("a", 6, Some("req-1"));
        assert_eq!(store.reserve_now(&a, Some(10)), Ok(Reserved::Held));
        // 6 held: 5 more would exceed 10.
        let b = claim("b", 5, None);
        let refused = store.reserve_now(&b, Some(10)).unwrap_err();
        assert!(
            matches!(refused, CoreError::Quota(ref d) if d.contains("6 held")),
            "{refused:?}"
        );
        store.settle_now(&a, Some(100));
        // A retry of the charged request holds nothing and is not charged again.
        let again = claim("c", 6, Some("req-1"));
        assert_eq!(
            store.reserve_now(&again, Some(10)),
            Ok(Reserved::AlreadyCharged)
        );
        let released = claim("d", 4, None);
        assert_eq!(store.reserve_now(&released, Some(10)), Ok(Reserved::Held));
        store.settle_now(&released, None);
        let book = store.book.lock();
        let account = &book.accounts["k"];
        assert_eq!((account.usage.api_calls, account.usage.tokens), (6, 100));
        assert!(account.held.is_empty());
    }
}
