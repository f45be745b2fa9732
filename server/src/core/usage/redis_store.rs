//! Usage kept in Redis, shared by every replica that names the same server: each operation is
//! one Lua script, so it is atomic across replicas.
//!
//! Layout, per key `K` (the API key; requests without one use the empty string):
//! - `bbt:usage:K`: a hash of `api_calls`, `tokens`, `bytes_in`, `bytes_out`;
//! - `bbt:held:K`: the calls held by requests in flight, a sorted set of `ticket:calls`
//!   scored by when the hold expires (a replica that died mid-request leaves its hold to
//!   expire);
//! - `bbt:charged:K:IDEMPOTENCY_KEY`: present once that request was charged, for a day.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bbt::protocol::Usage;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;

use super::memory::quota_spent;
use super::{Claim, Reserved, StoreFuture, UsageStore};
use crate::core::CoreError;

/// How long calls stay held, by default, for a request that never settles (its replica died).
const DEFAULT_HOLD: Duration = Duration::from_secs(30 * 60);

/// How long a charged idempotency key is remembered.
const CHARGED_TTL_SECS: u64 = 24 * 3600;

/// Returns `{0, used, held}` once the calls are held, `{1, 0, 0}` if the idempotency key was
/// charged already, `{2, used, held}` if the quota (-1: none) would be exceeded.
const RESERVE: &str = r"
if ARGV[5] == '1' and redis.call('EXISTS', KEYS[3]) == 1 then return {1, 0, 0} end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
local held = 0
for _, m in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  held = held + tonumber(string.match(m, ':(%d+)$'))
end
local used = tonumber(redis.call('HGET', KEYS[1], 'api_calls') or '0')
local quota = tonumber(ARGV[4])
local calls = tonumber(string.match(ARGV[3], ':(%d+)$'))
if quota >= 0 and used + held + calls > quota then return {2, used, held} end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
return {0, used, held}
";

/// Releases the hold; with ARGV[2] = '1' charges it (unless its idempotency key, ARGV[5] =
/// '1', already was).
const SETTLE: &str = r"
redis.call('ZREM', KEYS[2], ARGV[1])
if ARGV[2] ~= '1' then return 0 end
if ARGV[5] == '1' then
  if not redis.call('SET', KEYS[3], '1', 'NX', 'EX', ARGV[6]) then return 0 end
end
redis.call('HINCRBY', KEYS[1], 'api_calls', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'tokens', ARGV[4])
return 1
";

/// Accounts in a Redis server.
pub struct RedisStore {
    connection: ConnectionManager,
    hold: Duration,
    reserve: Script,
    settle: Script,
}

fn unavailable(e: redis::RedisError) -> CoreError {
    CoreError::Unavailable(format!("the usage store (Redis) cannot be reached: {e}"))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl RedisStore {
    /// Connects to `url` (`redis://host:port[/db]`); fails if the server does not answer.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)
            .map_err(|e| anyhow::anyhow!("invalid Redis URL `{url}`: {e}"))?;
        // A store that is down answers requests with a prompt 503, not after minutes of retries;
        // the manager reconnects in the background.
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500))
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)));
        let mut connection = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach Redis at {url}: {e}"))?;
        let _: String = redis::cmd("PING")
            .query_async(&mut connection)
            .await
            .map_err(|e| anyhow::anyhow!("Redis at {url} does not answer PING: {e}"))?;
        Ok(Self {
            connection,
            hold: DEFAULT_HOLD,
            reserve: Script::new(RESERVE),
            settle: Script::new(SETTLE),
        })
    }

    /// How long calls stay held for a request that never settles (its replica died before
    /// answering): they count against the key's quota until then. 30 minutes by default, longer
    /// than any request should take.
    #[cfg(feature = "test-util")]
    pub fn with_hold(mut self, hold: Duration) -> Self {
        self.hold = hold;
        self
    }

    fn keys(claim: &Claim) -> [String; 3] {
        let k = &claim.key;
        [
            format!("bbt:usage:{k}"),
            format!("bbt:held:{k}"),
            format!(
                "bbt:charged:{k}:{}",
                claim.idempotency.as_deref().unwrap_or("")
            ),
        ]
    }
}

impl UsageStore for RedisStore {
    fn reserve<'a>(&'a self, claim: &'a Claim, quota: Option<u64>) -> StoreFuture<'a, Reserved> {
        Box::pin(async move {
            let now = now_ms();
            let mut invocation = self.reserve.prepare_invoke();
            for key in Self::keys(claim) {
                invocation.key(key);
            }
            invocation
                .arg(now)
                .arg(now + self.hold.as_millis() as u64)
                .arg(format!("{}:{}", claim.ticket, claim.calls))
                .arg(quota.map_or(-1, |q| q.min(i64::MAX as u64) as i64))
                .arg(if claim.idempotency.is_some() {
                    "1"
                } else {
                    "0"
                });
            let (status, used, held): (i64, u64, u64) = invocation
                .invoke_async(&mut self.connection.clone())
                .await
                .map_err(unavailable)?;
            match status {
                0 => Ok(Reserved::Held),
                1 => Ok(Reserved::AlreadyCharged),
                _ => Err(quota_spent(quota.unwrap_or(0), used, held, claim.calls)),
            }
        })
    }

    fn settle<'a>(&'a self, claim: &'a Claim, tokens: Option<u64>) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut invocation = self.settle.prepare_invoke();
            for key in Self::keys(claim) {
                invocation.key(key);
            }
            invocation
                .arg(format!("{}:{}", claim.ticket, claim.calls))
                .arg(if tokens.is_some() { "1" } else { "0" })
                .arg(claim.calls)
                .arg(tokens.unwrap_or(0))
                .arg(if claim.idempotency.is_some() {
                    "1"
                } else {
                    "0"
                })
                .arg(CHARGED_TTL_SECS);
            let _: i64 = invocation
                .invoke_async(&mut self.connection.clone())
                .await
                .map_err(unavailable)?;
            Ok(())
        })
    }

    fn record_traffic<'a>(
        &'a self,
        key: &'a str,
        bytes_in: u64,
        bytes_out: u64,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let _: () = redis::pipe()
                .atomic()
                .hincr(format!("bbt:usage:{key}"), "bytes_in", bytes_in)
                .ignore()
                .hincr(format!("bbt:usage:{key}"), "bytes_out", bytes_out)
                .ignore()
                .query_async(&mut self.connection.clone())
                .await
                .map_err(unavailable)?;
            Ok(())
        })
    }

    fn usage<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Usage> {
        Box::pin(async move {
            let fields: std::collections::HashMap<String, u64> = redis::cmd("HGETALL")
                .arg(format!("bbt:usage:{key}"))
                .query_async(&mut self.connection.clone())
                .await
                .map_err(unavailable)?;
            let field = |name: &str| fields.get(name).copied().unwrap_or(0);
            Ok(Usage {
                api_calls: field("api_calls"),
                tokens: field("tokens"),
                bytes_in: field("bytes_in"),
                bytes_out: field("bytes_out"),
                quota_remaining: None,
            })
        })
    }
}
