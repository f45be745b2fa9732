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
use bbt::{Engine, Prompt, Readout, Row, Segment};
use candle_core::Tensor;

use super::sessions::Session;
use super::worker::EvaluateJob;
use super::CoreError;

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
    // All candidates' prompts, grouped by length (a prefill batch needs no equal lengths, but
    // rows continuing a past must each name theirs).
    let mut all_prompts = Vec::new();
    let mut first_prompt = Vec::with_capacity(jobs.len());
    for job in jobs {
        first_prompt.push(all_prompts.len());
        all_prompts.extend(prompts(engine, job)?);
    }
    let bos = engine.bos_segment();
    let prefix_rows: Vec<Row> = (0..all_prompts.len())
        .map(|g| Row::new(vec![Segment::Tokens(bos.clone()), Segment::Prompt(g)]))
        .collect();
    // The union of label words; each job reads its own columns.
    let mut columns: BTreeMap<u32, usize> = BTreeMap::new();
    for job in jobs {
        for &id in &job.session.verbalizer {
            let next = columns.len();
            columns.entry(id).or_insert(next);
        }
    }
    let mut union = vec![0u32; columns.len()];
    for (&id, &col) in &columns {
        union[col] = id;
    }
    let mut rows = Vec::new();
    for (j, job) in jobs.iter().enumerate() {
        let split = &job.session.splits[&job.split];
        for c in 0..job.count {
            for (h, t) in split.heads.iter().zip(&split.tails) {
                rows.push(Row {
                    segments: vec![Segment::Tokens(h.iter().chain(t).copied().collect())],
                    past_row: Some(first_prompt[j] + c),
                });
            }
        }
    }
    let logits: Vec<Vec<f32>> = if bos.is_empty() && all_prompts.iter().all(Prompt::is_empty) {
        // Nothing to prefill (L = 0, no BOS): the rows stand alone.
        let alone: Vec<Row> = rows.into_iter().map(|r| Row::new(r.segments)).collect();
        engine.forward(&alone, &[], None, &Readout::Tokens(union), false)
    } else {
        let cache = engine
            .prefill(&prefix_rows, &all_prompts)
            .map_err(internal)?;
        engine.forward(&rows, &[], Some(&cache), &Readout::Tokens(union), false)
    }
    .map_err(internal)?
    .logits
    .to_vec2()
    .map_err(internal)?;
    let mut out = Vec::with_capacity(jobs.len());
    let mut next = 0;
    for job in jobs {
        let split = &job.session.splits[&job.split];
        let cols: Vec<usize> = job
            .session
            .verbalizer
            .iter()
            .map(|id| columns[id])
            .collect();
        let per_candidate: Vec<Vec<Vec<f32>>> = (0..job.count)
            .map(|_| {
                let block = &logits[next..next + split.len()];
                next += split.len();
                block
                    .iter()
                    .map(|row| cols.iter().map(|&c| row[c]).collect())
                    .collect()
            })
            .collect();
        out.push(results(job, per_candidate));
    }
    Ok(out)
}
