//! Running queued `evaluate` requests, merging those that can share an engine pass.
//!
//! Prefix-placement requests — from any sessions — merge into one pass
//! ([`scoring::merged_prefix_logits`]); rows are independent, so merged results equal separate
//! ones. Suffix-placement requests run on their own, continuing their session's cached texts.
//! Everything reaches the engine through [`bbt::scoring`].

use std::sync::Arc;

use bbt::protocol::{CandidateResult, Placement, SplitName};
use bbt::scoring::{self, PrefixPart};
use bbt::{Engine, Prompt};
use candle_core::Tensor;

use super::sessions::{DeepCandidates, Session};
use super::CoreError;

/// One `evaluate` request's model work.
pub struct EvaluateJob {
    pub session: Arc<Session>,
    pub split: SplitName,
    /// `count * d` numbers.
    pub z: Vec<f32>,
    pub count: usize,
    pub return_logits: bool,
    /// Deep sessions: what the candidates are (one layer's, or whole deep prompts).
    pub deep: Option<DeepCandidates>,
}

/// Positions a job adds to an engine pass (prompts and examples).
pub fn job_tokens(job: &EvaluateJob) -> usize {
    let split = &job.session.splits[&job.split];
    job.count * split.positions_under_prompt(job.session.prompt_positions())
}

/// The candidates' prompts (see [`Session::prompts`]).
fn prompts(engine: &Engine, job: &EvaluateJob) -> Result<Vec<Prompt>, CoreError> {
    // `d` numbers a candidate, or `layers * d` for whole deep prompts.
    let width = job.z.len() / job.count.max(1);
    let z = Tensor::from_vec(job.z.clone(), (job.count, width), engine.device())
        .map_err(CoreError::internal)?;
    job.session
        .prompts(&z, job.deep.as_ref())
        .map_err(CoreError::internal)
}

/// Per-candidate scores from `[candidates][examples][classes]` logits.
fn results(job: &EvaluateJob, logits: Vec<Vec<Vec<f32>>>) -> Vec<CandidateResult> {
    let session = &job.session;
    let labels = &session.splits[&job.split].labels;
    logits
        .into_iter()
        .map(|l| {
            let mut r = bbt::metrics::measure(&l, labels, session.loss, session.spec.metric);
            if job.return_logits {
                r.logits = Some(l);
            }
            r
        })
        .collect()
}

/// One job on its own (any placement).
pub fn evaluate_one(engine: &Engine, job: &EvaluateJob) -> Result<Vec<CandidateResult>, CoreError> {
    let session = &job.session;
    let split = &session.splits[&job.split];
    let prompts = prompts(engine, job)?;
    // A test split is scored once: one uncached pass is cheaper than building a cache.
    let cache = match session.placement {
        Placement::Suffix if job.split != SplitName::Test => {
            Some(text_cache(engine, session, job)?)
        }
        Placement::Suffix | Placement::Prefix => None,
    };
    let logits = scoring::candidate_logits(
        engine,
        split,
        &prompts,
        session.placement,
        cache.as_deref(),
        &session.verbalizer,
    )
    .map_err(CoreError::internal)?;
    Ok(results(job, logits))
}

/// The session's cached `[bos][head]` keys/values of the job's split, built on first use.
fn text_cache(
    engine: &Engine,
    session: &Session,
    job: &EvaluateJob,
) -> Result<Arc<bbt::KvCache>, CoreError> {
    if let Some(c) = session.caches.lock().get(&job.split) {
        return Ok(c.clone());
    }
    let built = Arc::new(
        session.splits[&job.split]
            .cache_heads(engine)
            .map_err(CoreError::internal)?,
    );
    session.caches.lock().insert(job.split, built.clone());
    Ok(built)
}

/// Several prefix-placement jobs in one engine pass; one result list per job, in order.
pub fn evaluate_prefix_merged(
    engine: &Engine,
    jobs: &[&EvaluateJob],
) -> Result<Vec<Vec<CandidateResult>>, CoreError> {
    let parts = jobs
        .iter()
        .map(|job| {
            Ok(PrefixPart {
                split: &job.session.splits[&job.split],
                prompts: prompts(engine, job)?,
                verbalizer: &job.session.verbalizer,
            })
        })
        .collect::<Result<Vec<_>, CoreError>>()?;
    let logits = scoring::merged_prefix_logits(engine, &parts).map_err(CoreError::internal)?;
    Ok(jobs
        .iter()
        .zip(logits)
        .map(|(job, l)| results(job, l))
        .collect())
}
