//! Everything between HTTP and the engine: sessions, the model worker and its queue, usage and
//! metrics. Nothing here knows about axum.

pub mod batching;
pub mod candidates;
pub mod metrics;
pub mod service;
pub mod session_builder;
pub mod sessions;
pub mod task_request;
pub mod usage;
pub mod worker;

use bbt::protocol::ErrorKind;

/// An error the HTTP layer turns into a status code and a JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoreError {
    /// 400: the request cannot be understood.
    BadRequest(String),
    /// 404: no such session (or not yours).
    NotFound(String),
    /// 404: one of the paper's tasks whose data this server lacks (its operator can fetch it).
    TaskDataMissing(String),
    /// 410: the session's caches were evicted or it expired.
    Gone(String),
    /// 409: the session id is taken (by another key, or for a different creation request).
    Conflict(String),
    /// 413: over a size limit.
    TooLarge(String),
    /// 422: well-formed but invalid (wrong length, NaN, unknown label word, ...).
    Invalid(String),
    /// 429: the key's quota of API calls is spent (retrying will not help).
    Quota(String),
    /// 503 with `Retry-After`: the model queue is full; the same request may succeed shortly.
    Busy(String),
    /// 503: the model worker is gone or shutting down.
    Unavailable(String),
    /// 500: a bug or an engine failure.
    Internal(String),
}

impl std::fmt::Display for CoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, detail) = self.parts();
        write!(f, "{kind}: {detail}")
    }
}

impl CoreError {
    /// A 500 from any failure below (the engine, candle), with its whole chain of causes.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        Self::Internal(format!("{e:#}"))
    }

    /// `(machine-readable kind, human detail)`.
    pub fn parts(&self) -> (ErrorKind, &str) {
        match self {
            Self::BadRequest(d) => (ErrorKind::BadRequest, d),
            Self::NotFound(d) => (ErrorKind::NotFound, d),
            Self::TaskDataMissing(d) => (ErrorKind::TaskDataMissing, d),
            Self::Gone(d) => (ErrorKind::SessionGone, d),
            Self::Conflict(d) => (ErrorKind::Conflict, d),
            Self::TooLarge(d) => (ErrorKind::TooLarge, d),
            Self::Invalid(d) => (ErrorKind::Invalid, d),
            Self::Quota(d) => (ErrorKind::QuotaExceeded, d),
            Self::Busy(d) => (ErrorKind::Busy, d),
            Self::Unavailable(d) => (ErrorKind::Unavailable, d),
            Self::Internal(d) => (ErrorKind::Internal, d),
        }
    }
}

/// Limits an operator sets; every one is checked before work is queued.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Candidates per `/evaluate` call.
    pub max_candidates: usize,
    /// Examples per split of a session, and inputs per `/forward`.
    pub max_examples: usize,
    /// Tokens per example (text + template).
    pub max_example_tokens: usize,
    /// Prompt length `L`.
    pub max_prompt_length: usize,
    /// Tokens of in-context demonstrations a session may put before every input.
    pub max_context_tokens: usize,
    /// Intrinsic dimension `d`.
    pub max_intrinsic_dim: usize,
    /// Sessions idle this long are dropped.
    pub session_idle: std::time::Duration,
    /// Memory held by all sessions' projections, demonstrations and caches.
    pub max_session_bytes: usize,
    /// Memory held by one key's sessions; a key over it loses its own oldest sessions.
    pub max_session_bytes_per_key: usize,
    /// Jobs waiting for the model worker before new ones are refused with 503.
    pub max_queue: usize,
    /// Positions one merged engine pass may gather from queued evaluate requests.
    pub max_batch_tokens: usize,
    /// How long the worker waits for more requests to join a batch.
    pub max_batch_wait: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 8 << 20,
            max_candidates: 64,
            max_examples: 2048,
            max_example_tokens: 512,
            max_prompt_length: 128,
            max_context_tokens: 4096,
            max_intrinsic_dim: 2048,
            session_idle: std::time::Duration::from_secs(3600),
            max_session_bytes: 2 << 30,
            max_session_bytes_per_key: 1 << 30,
            max_queue: 256,
            max_batch_tokens: 65_536,
            max_batch_wait: std::time::Duration::from_millis(2),
        }
    }
}
