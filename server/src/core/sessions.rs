//! Tuning sessions: a task's encoded splits, the projection `A`, and (suffix placement) the
//! texts' key/value caches, owned by one API key, dropped when idle or evicted under the
//! memory caps (per key and global; the owner is told on its next call).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bbt::model::decoder::KvCache;
use bbt::projection::{DeepProjection, Projection};
use bbt::protocol::{Loss, Placement, SessionInfo, SessionSummary, SplitName};
use bbt::scoring::EncodedSplit;
use bbt::tasks::{TaskSpec, Verbalizer};
use bbt::Prompt;
use candle_core::Tensor;
use parking_lot::Mutex;

use super::{CoreError, Limits};

/// How a session turns candidates `z` into prompts.
pub enum SessionProjection {
    /// BBT: one projection, the prompt at the input.
    Shallow(Projection),
    /// BBTv2: one projection per layer, and each layer's chosen offsets `A_l·z_l`
    /// (`[layers, L, hidden]`, f32; zero until the client sets a layer).
    Deep {
        projection: DeepProjection,
        chosen: Mutex<Tensor>,
    },
}

/// What a deep session's candidates are.
#[derive(Debug, Clone)]
pub enum DeepCandidates {
    /// One layer's `z` each; every other layer at the chosen offsets (`[layers, L, hidden]`)
    /// of when the request arrived.
    Layer(usize, Tensor),
    /// Whole deep prompts: every layer's `z`, layer by layer (`layers * d` numbers each).
    Whole,
}

impl SessionProjection {
    /// Intrinsic dimension `d` of the candidates.
    pub fn intrinsic_dim(&self) -> usize {
        match self {
            Self::Shallow(p) => p.intrinsic_dim(),
            Self::Deep { projection, .. } => projection.intrinsic_dim(),
        }
    }

    /// Bytes held (a deep projection draws its matrices per call and keeps only the offsets).
    pub fn bytes(&self) -> usize {
        match self {
            Self::Shallow(p) => p.bytes(),
            Self::Deep { chosen, .. } => chosen.lock().elem_count() * 4,
        }
    }
}

/// In-context demonstrations a session puts before every candidate's prompt.
pub struct Context {
    /// Word embeddings of the demonstrations' tokens, `[tokens, hidden]` in the model's dtype.
    pub embeddings: Tensor,
    /// Training examples they hold.
    pub count: usize,
}

/// Who a session is and belongs to.
#[derive(Debug, Clone)]
pub struct SessionIdentity {
    pub id: String,
    /// The API key that created it (`None` when the server runs without keys).
    pub owner: Option<String>,
    /// Digest of the creation request, so a repeated `PUT` of the same session is recognised.
    pub request_digest: u64,
}

/// One tuning session.
pub struct Session {
    pub id: String,
    /// The API key that created it (`None` when the server runs without keys).
    pub owner: Option<String>,
    /// See [`SessionIdentity::request_digest`].
    pub request_digest: u64,
    pub spec: TaskSpec,
    /// Token ids of each class's label words.
    pub verbalizer: Verbalizer,
    pub splits: HashMap<SplitName, EncodedSplit>,
    pub projection: SessionProjection,
    pub placement: Placement,
    pub loss: Loss,
    pub prompt_length: usize,
    /// In-context demonstrations, placed before the prompt (prefix placement).
    pub context: Option<Context>,
    /// Suffix placement: `[bos][head]` keys/values per split, built on first use.
    pub caches: Mutex<HashMap<SplitName, Arc<KvCache>>>,
    pub api_calls: std::sync::atomic::AtomicU64,
    last_used: Mutex<Instant>,
}

impl Session {
    /// Builds a session (the caches start empty).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        identity: SessionIdentity,
        spec: TaskSpec,
        verbalizer: Verbalizer,
        splits: HashMap<SplitName, EncodedSplit>,
        projection: SessionProjection,
        placement: Placement,
        loss: Loss,
        prompt_length: usize,
        context: Option<Context>,
    ) -> Self {
        Self {
            id: identity.id,
            owner: identity.owner,
            request_digest: identity.request_digest,
            spec,
            verbalizer,
            splits,
            projection,
            placement,
            loss,
            prompt_length,
            context,
            caches: Mutex::new(HashMap::new()),
            api_calls: Default::default(),
            last_used: Mutex::new(Instant::now()),
        }
    }

    /// Bytes held: the projection, the demonstrations and any caches.
    pub fn bytes(&self) -> usize {
        let caches: usize = self.caches.lock().values().map(|c| c.bytes()).sum();
        let context = self.context.as_ref().map_or(0, |c| {
            c.embeddings.elem_count() * c.embeddings.dtype().size_in_bytes()
        });
        self.projection.bytes() + context + caches
    }

    /// The examples of `name`; a 422 if the session has none.
    pub fn split(&self, name: SplitName) -> Result<&EncodedSplit, CoreError> {
        self.splits
            .get(&name)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| CoreError::Invalid(format!("the session has no {name:?} examples")))
    }

    /// Positions each candidate adds before the examples: demonstrations and prompt vectors.
    pub fn prompt_positions(&self) -> usize {
        self.context_tokens() + self.prompt_length
    }

    fn context_tokens(&self) -> usize {
        self.context
            .as_ref()
            .map_or(0, |c| c.embeddings.dim(0).unwrap_or(0))
    }

    /// The candidates' prompts: `A·z + p0` (`z` is `[count, d]`), or for a deep session `p0`
    /// with the offsets `deep` says; after the session's demonstrations, if it has any.
    pub fn prompts(
        &self,
        z: &Tensor,
        deep: Option<&DeepCandidates>,
    ) -> anyhow::Result<Vec<Prompt>> {
        let prompts = match (&self.projection, deep) {
            (SessionProjection::Shallow(p), None) => p.prompts(z)?,
            (
                SessionProjection::Deep { projection, .. },
                Some(DeepCandidates::Layer(l, chosen)),
            ) => projection.prompts(*l, z, chosen)?,
            (SessionProjection::Deep { projection, .. }, Some(DeepCandidates::Whole)) => {
                projection.whole_prompts(z)?
            }
            _ => anyhow::bail!("the job's candidates do not match the session's prompt"),
        };
        let Some(context) = &self.context else {
            return Ok(prompts);
        };
        prompts
            .into_iter()
            .map(|p| {
                anyhow::ensure!(p.deep.is_none(), "demonstrations with a deep prompt");
                let embeddings = Tensor::cat(&[&context.embeddings, &p.embeddings], 0)?;
                Ok(Prompt::new(embeddings))
            })
            .collect()
    }

    fn touch(&self) {
        *self.last_used.lock() = Instant::now();
    }

    fn idle_since(&self) -> Instant {
        *self.last_used.lock()
    }

    /// The public description.
    pub fn info(&self) -> SessionInfo {
        let size = |s: SplitName| self.splits.get(&s).map_or(0, EncodedSplit::len);
        SessionInfo {
            id: self.id.clone(),
            task: self.spec.name.clone(),
            classes: self.spec.classes.clone(),
            verbalizer: self.spec.verbalizer.clone(),
            metric: self.spec.metric,
            prompt_length: self.prompt_length,
            placement: self.placement,
            intrinsic_dim: self.projection.intrinsic_dim(),
            train_size: size(SplitName::Train),
            dev_size: size(SplitName::Dev),
            test_size: size(SplitName::Test),
            api_calls: self.api_calls.load(std::sync::atomic::Ordering::Relaxed),
            deep: matches!(self.projection, SessionProjection::Deep { .. }),
            layer_scales: match &self.projection {
                SessionProjection::Deep { projection, .. } => Some(projection.scales().to_vec()),
                SessionProjection::Shallow(_) => None,
            },
            demonstrations: self.context.as_ref().map_or(0, |c| c.count),
            context_tokens: self.context_tokens(),
        }
    }
}

/// How many dropped session ids the store remembers (to answer 410 rather than 404); the
/// oldest are forgotten first, so this memory stays bounded however many sessions come and go.
pub const REMEMBERED_EVICTIONS: usize = 10_000;

/// `bytes` for people: bytes below 1 MiB, else MiB with one decimal.
fn human_bytes(bytes: usize) -> String {
    if bytes < 1 << 20 {
        format!("{bytes} bytes")
    } else {
        format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
    }
}

/// Ids of dropped sessions, oldest first, at most [`REMEMBERED_EVICTIONS`].
#[derive(Default)]
struct Evictions {
    order: VecDeque<String>,
    ids: HashSet<String>,
}

impl Evictions {
    fn remember(&mut self, id: String) {
        if self.ids.insert(id.clone()) {
            self.order.push_back(id);
        }
        while self.order.len() > REMEMBERED_EVICTIONS {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
    }
}

/// All live sessions, plus the ids recently dropped (so their owners get a clear answer).
///
/// Memory is capped per key and for all keys together. A key over its own cap loses its own
/// least recently used sessions. Over the global cap, the key holding the most memory loses its
/// least recently used session first, so one busy key cannot push the others out.
pub struct SessionStore {
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    evicted: Mutex<Evictions>,
    limits: Limits,
    /// Counts the sessions dropped, by reason (`expired`, `evicted`).
    dropped: prometheus::IntCounterVec,
}

impl SessionStore {
    /// An empty store under `limits`, counting the sessions it drops in `dropped`.
    pub fn new(limits: Limits, dropped: prometheus::IntCounterVec) -> Self {
        Self {
            sessions: Mutex::new(HashMap::new()),
            evicted: Mutex::new(Evictions::default()),
            limits,
            dropped,
        }
    }

    /// A 413 unless a new session of about `bytes` fits under the per-key and global caps
    /// (evicting older sessions if need be). Checked before anything is allocated.
    pub fn check_room(&self, bytes: usize) -> Result<(), CoreError> {
        let cap = self
            .limits
            .max_session_bytes_per_key
            .min(self.limits.max_session_bytes);
        if bytes > cap {
            return Err(CoreError::TooLarge(format!(
                "this session would hold about {} (its projection L x hidden x d, and its \
                 demonstrations); this server allows {} per key: use a smaller prompt_length \
                 or intrinsic_dim",
                human_bytes(bytes),
                human_bytes(cap)
            )));
        }
        Ok(())
    }

    /// Adds a session, then drops idle ones and evicts to stay under the memory caps. If a
    /// session with its id is already there (built meanwhile by a concurrent request for the
    /// same id), nothing changes and that one is returned as the error.
    pub fn insert(&self, session: Session) -> Result<Arc<Session>, Arc<Session>> {
        let session = Arc::new(session);
        {
            let mut sessions = self.sessions.lock();
            if let Some(existing) = sessions.get(&session.id) {
                return Err(existing.clone());
            }
            sessions.insert(session.id.clone(), session.clone());
        }
        self.enforce_limits(Some(&session.id));
        Ok(session)
    }

    /// The session `id` if `key` may use it. A session of another key is reported as missing.
    pub fn get(&self, id: &str, key: Option<&str>) -> Result<Arc<Session>, CoreError> {
        self.enforce_limits(None);
        let found = self.sessions.lock().get(id).cloned();
        match found {
            Some(s) if s.owner.as_deref() == key => {
                s.touch();
                Ok(s)
            }
            Some(_) => Err(CoreError::NotFound(format!("no session {id}"))),
            None if self.evicted.lock().ids.contains(id) => Err(CoreError::Gone(format!(
                "session {id} was dropped (idle for longer than {} s, or evicted to stay under the \
                 server's session memory caps); create a new session",
                self.limits.session_idle.as_secs()
            ))),
            None => Err(CoreError::NotFound(format!("no session {id}"))),
        }
    }

    /// The live sessions `key` owns, most recently used first (listing is not a use).
    pub fn list(&self, key: Option<&str>) -> Vec<SessionSummary> {
        self.enforce_limits(None);
        let mut owned: Vec<Arc<Session>> = self
            .sessions
            .lock()
            .values()
            .filter(|s| s.owner.as_deref() == key)
            .cloned()
            .collect();
        owned.sort_by_key(|s| std::cmp::Reverse(s.idle_since()));
        owned
            .iter()
            .map(|s| SessionSummary {
                id: s.id.clone(),
                task: s.spec.name.clone(),
                prompt_length: s.prompt_length,
                placement: s.placement,
                deep: matches!(s.projection, SessionProjection::Deep { .. }),
                api_calls: s.api_calls.load(std::sync::atomic::Ordering::Relaxed),
                bytes: s.bytes() as u64,
                idle_seconds: s.idle_since().elapsed().as_secs_f64(),
            })
            .collect()
    }

    /// The live session `id`, whoever owns it (not counted as a use).
    pub fn peek(&self, id: &str) -> Option<Arc<Session>> {
        self.sessions.lock().get(id).cloned()
    }

    /// Deletes a session `key` owns.
    pub fn remove(&self, id: &str, key: Option<&str>) -> Result<(), CoreError> {
        self.get(id, key)?;
        self.sessions.lock().remove(id);
        Ok(())
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.sessions.lock().len()
    }

    /// Whether there are no live sessions.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held by all sessions.
    pub fn bytes(&self) -> usize {
        self.sessions.lock().values().map(|s| s.bytes()).sum()
    }

    /// Drops idle sessions, then evicts least recently used ones while a key is over its cap or
    /// all keys together are over the global cap (never `keep`, the one just created).
    pub fn enforce_limits(&self, keep: Option<&str>) {
        let mut sessions = self.sessions.lock();
        let mut dropped = Vec::new();
        let now = Instant::now();
        sessions.retain(|id, s| {
            let idle = now.duration_since(s.idle_since()) > self.limits.session_idle;
            let drop = idle && Some(id.as_str()) != keep;
            if drop {
                dropped.push(id.clone());
            }
            !drop
        });
        let expired = dropped.len();
        // (last used, id, owner, bytes) of every session that may be evicted, oldest first.
        let mut candidates: Vec<(Instant, String, Option<String>, usize)> = sessions
            .values()
            .filter(|s| Some(s.id.as_str()) != keep)
            .map(|s| (s.idle_since(), s.id.clone(), s.owner.clone(), s.bytes()))
            .collect();
        candidates.sort();
        let mut per_key: HashMap<Option<String>, usize> = HashMap::new();
        for s in sessions.values() {
            *per_key.entry(s.owner.clone()).or_default() += s.bytes();
        }
        let mut evict =
            |index: usize,
             per_key: &mut HashMap<Option<String>, usize>,
             candidates: &mut Vec<(Instant, String, Option<String>, usize)>| {
                let (_, id, owner, bytes) = candidates.remove(index);
                sessions.remove(&id);
                *per_key.entry(owner).or_default() -= bytes;
                dropped.push(id);
            };
        // Each key over its own cap loses its own oldest sessions.
        let mut i = 0;
        while i < candidates.len() {
            let owner = &candidates[i].2;
            if per_key[owner] > self.limits.max_session_bytes_per_key {
                evict(i, &mut per_key, &mut candidates);
            } else {
                i += 1;
            }
        }
        // Over the global cap: the heaviest key's oldest session, until under it.
        while per_key.values().sum::<usize>() > self.limits.max_session_bytes {
            let heaviest = candidates
                .iter()
                .map(|c| &c.2)
                .max_by_key(|owner| per_key[*owner])
                .cloned();
            let Some(heaviest) = heaviest else { break };
            let index = candidates
                .iter()
                .position(|c| c.2 == heaviest)
                .expect("the heaviest key has a candidate");
            evict(index, &mut per_key, &mut candidates);
        }
        drop(sessions);
        self.dropped
            .with_label_values(&["expired"])
            .inc_by(expired as u64);
        self.dropped
            .with_label_values(&["evicted"])
            .inc_by((dropped.len() - expired) as u64);
        if !dropped.is_empty() {
            let mut evicted = self.evicted.lock();
            for id in dropped {
                evicted.remember(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_of_dropped_ids_is_bounded_and_forgets_the_oldest() {
        let mut evicted = Evictions::default();
        for i in 0..REMEMBERED_EVICTIONS + 5 {
            evicted.remember(format!("ses_{i}"));
        }
        evicted.remember("ses_9".into());
        assert_eq!(evicted.order.len(), REMEMBERED_EVICTIONS);
        assert_eq!(evicted.ids.len(), REMEMBERED_EVICTIONS);
        assert!(!evicted.ids.contains("ses_4"));
        assert!(evicted.ids.contains("ses_5"));
        assert!(evicted
            .ids
            .contains(&format!("ses_{}", REMEMBERED_EVICTIONS + 4)));
    }

    #[test]
    fn sizes_read_in_bytes_or_mib() {
        assert_eq!(human_bytes(2304), "2304 bytes");
        assert_eq!(human_bytes(600 << 20), "600.0 MiB");
    }
}
