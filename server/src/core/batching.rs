//! Running queued `evaluate` requests, merging those that can share an engine pass.
//!
//! Prefix-placement requests — from any sessions — merge into one pass: every candidate's
//! `[bos][prompt]` is prefilled together, then every (candidate, example) row continues its
//! candidate's keys/values, and the logits are read over the union of the sessions' label words.
//! Rows are independent, so merged results equal separate ones. Suffix-placement requests run on
//! their own, continuing their session's cached texts.

use std::collections::BTreeMap;
use std::sync::Arc;

use bbt::protocol::{CandidateResult, Placement, SplitName};
use bbt::scoring;
use bbt::{Engine, Prompt, Readout};
use candle_core::Tensor;

use super::sessions::Session;
use super::CoreError;

/// One `evaluate` request's model work.
pub struct EvaluateJob {
    pub session: Arc<Session>,
    pub split: SplitName,
    /// `count * d` numbers.
    pub z: Vec<f32>,
    pub count: usize,
    pub return_logits: bool,
    /// Deep sessions: the layer the candidates are for, and every layer's chosen offsets when
    /// the request arrived.
    pub layer: Option<(usize, candle_core::Tensor)>,
}

fn internal(e: impl std::fmt::Display) -> CoreError {
    CoreError::Internal(format!("{e:#}"))
}

/// Positions a job adds to an engine pass (prompts and examples).
pub fn job_tokens(job: &EvaluateJob) -> usize {
    let split = &job.session.splits[&job.split];
    job.count * (split.tokens() + split.len() * job.session.prompt_positions())
}

/// The candidates' prompts (see [`Session::prompts`]).
fn prompts(engine: &Engine, job: &EvaluateJob) -> Result<Vec<Prompt>, CoreError> {
    let d = job.session.projection.intrinsic_dim();
    let z = Tensor::from_vec(job.z.clone(), (job.count, d), engine.device()).map_err(internal)?;
    job.session
        .prompts(&z, job.layer.as_ref())
        .map_err(internal)
}

/// Per-candidate scores from `[candidates][examples][classes]` logits.
fn results(job: &EvaluateJob, logits: Vec<Vec<Vec<f32>>>) -> Vec<CandidateResult> {
    let session = &job.session;
    let labels = &session.splits[&job.split].labels;
    logits
        .into_iter()
        .map(|l| {
            let mut r = bbt::metrics::score(&l, labels, session.loss, session.spec.metric);
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
    .map_err(internal)?;
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
            .map_err(internal)?,
    );
    session.caches.lock().insert(job.split, built.clone());
    Ok(built)
}

/// Several prefix-placement jobs in one engine pass; one result list per job, in order.
pub fn evaluate_prefix_merged(
    engine: &Engine,
    jobs: &[&EvaluateJob],
) -> Result<Vec<Vec<CandidateResult>>, CoreError> {
    // Every job's candidates, each reading its job's split.
    let mut all_prompts = Vec::new();
    let mut texts: Vec<Vec<Vec<u32>>> = Vec::with_capacity(jobs.len());
    for job in jobs {
        all_prompts.extend(prompts(engine, job)?);
        let split = &job.session.splits[&job.split];
        texts.push(
            split
                .heads
                .iter()
                .zip(&split.tails)
                .map(|(h, t)| h.iter().chain(t).copied().collect())
                .collect(),
        );
    }
    let groups: Vec<&[Vec<u32>]> = jobs
        .iter()
        .zip(&texts)
        .flat_map(|(job, t)| std::iter::repeat_n(t.as_slice(), job.count))
        .collect();
    // The union of label words; each job reads its own columns.
    let mut columns: BTreeMap<u32, usize> = BTreeMap::new();
    for job in jobs {
        for &id in job.session.verbalizer.ids() {
            let next = columns.len();
            columns.entry(id).or_insert(next);
        }
    }
    let mut union = vec![0u32; columns.len()];
    for (&id, &col) in &columns {
        union[col] = id;
    }
    let logits: Vec<Vec<f32>> = engine
        .score_prefix_groups(&all_prompts, &groups, &Readout::Tokens(union))
        .map_err(internal)?
        .logits
        .to_vec2()
        .map_err(internal)?;
    let mut out = Vec::with_capacity(jobs.len());
    let mut next = 0;
    for job in jobs {
        let split = &job.session.splits[&job.split];
        let verbalizer = &job.session.verbalizer;
        let cols: Vec<usize> = verbalizer.ids().iter().map(|id| columns[id]).collect();
        let per_candidate: Vec<Vec<Vec<f32>>> = (0..job.count)
            .map(|_| {
                let block = &logits[next..next + split.len()];
                next += split.len();
                block
                    .iter()
                    .map(|row| {
                        let words: Vec<f32> = cols.iter().map(|&c| row[c]).collect();
                        verbalizer.class_scores(&words)
                    })
                    .collect()
            })
            .collect();
        out.push(results(job, per_candidate));
    }
    Ok(out)
}
