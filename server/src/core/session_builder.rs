//! Building a session: label-word ids, tokenised splits under the limits, `p0` and the
//! projection. Runs off the async runtime (it draws `L * hidden * d` random numbers).

use std::collections::HashMap;

use bbt::projection::{DeepProjection, Projection};
use bbt::protocol::{
    CreateSessionRequest, DemonstrationSpec, Placement, PromptInit, SplitName, CONTENT_FREE_TEXTS,
};
use bbt::scoring::EncodedSplit;
use bbt::tasks::{demonstrations, Example, MultiTokenWords, TaskSpec, Verbalizer};
use bbt::{Engine, Prompt, Row};
use candle_core::{DType, Tensor};

use super::sessions::{Context, Session, SessionIdentity, SessionProjection};
use super::{CoreError, Limits};

/// Token ids of the label words, by class; a multi-token or unknown word is a 422 naming it.
pub fn verbalizer_ids(engine: &Engine, spec: &TaskSpec) -> Result<Verbalizer, CoreError> {
    spec.verbalizer_ids(engine.tokenizer(), MultiTokenWords::Reject)
        .map(|(ids, _)| ids)
        .map_err(|e| CoreError::Invalid(format!("{e:#}")))
}

/// Tokenises a split, refusing examples longer than the limit.
pub fn encode_split(
    engine: &Engine,
    limits: &Limits,
    spec: &TaskSpec,
    examples: &[Example],
) -> Result<EncodedSplit, CoreError> {
    let split = EncodedSplit::new(engine, spec, examples)
        .map_err(|e| CoreError::Invalid(format!("{e:#}")))?;
    if let Some((i, len)) = split
        .heads
        .iter()
        .zip(&split.tails)
        .map(|(h, t)| h.len() + t.len())
        .enumerate()
        .find(|(_, len)| *len > limits.max_example_tokens)
    {
        return Err(CoreError::TooLarge(format!(
            "example {i} is {len} tokens with its template; this server's limit is {}",
            limits.max_example_tokens
        )));
    }
    Ok(split)
}

/// Bytes a session for `req` may hold, known before anything is built: its projection
/// (`L x hidden x d`, f32 on every device; a deep session keeps `layers x L x hidden` f32
/// offsets and draws each `A_l` per call) and its demonstrations (at most the context budget,
/// in the model's dtype).
pub fn estimated_bytes(engine: &Engine, limits: &Limits, req: &CreateSessionRequest) -> usize {
    let hidden = engine.config().hidden_size;
    let width = engine.dtype().size_in_bytes();
    let f32_width = DType::F32.size_in_bytes();
    let rows = req.prompt_length.saturating_mul(hidden);
    let projection = if req.deep {
        rows.saturating_mul(engine.config().num_layers)
            .saturating_mul(f32_width)
    } else {
        rows.saturating_mul(req.projection.intrinsic_dim)
            .saturating_mul(f32_width)
    };
    let context = req.demonstrations.as_ref().map_or(0, |demos| {
        limits
            .max_context_tokens
            .min(demos.max_tokens.unwrap_or(usize::MAX))
            .saturating_mul(hidden)
            .saturating_mul(width)
    });
    projection.saturating_add(context)
}

/// Everything a session needs, built off the async runtime.
pub fn build_session(
    engine: &Engine,
    limits: &Limits,
    identity: SessionIdentity,
    spec: TaskSpec,
    splits: HashMap<SplitName, Vec<Example>>,
    req: CreateSessionRequest,
) -> Result<Session, CoreError> {
    let verbalizer = verbalizer_ids(engine, &spec)?;
    let encoded = encode_splits(engine, limits, &spec, &splits)?;
    let longest = encoded
        .values()
        .flat_map(|s| s.heads.iter().zip(&s.tails).map(|(h, t)| h.len() + t.len()))
        .max()
        .unwrap_or(0);
    let positions = longest + req.prompt_length + engine.bos_segment().len();
    if positions > engine.max_positions() {
        return Err(CoreError::TooLarge(format!(
            "the longest example needs {positions} positions with the prompt; the model allows {}",
            engine.max_positions()
        )));
    }
    let train = &splits[&SplitName::Train];
    let context = match &req.demonstrations {
        None => None,
        Some(_) if req.placement != Placement::Prefix || req.deep => {
            return Err(CoreError::Invalid(
                "demonstrations need the prefix placement and a shallow prompt".into(),
            ));
        }
        Some(demos) => {
            let room = engine.max_positions() - positions;
            Some(context(
                engine,
                limits,
                demos,
                &spec,
                &verbalizer,
                train,
                room,
            )?)
        }
    };
    let p0 = starting_prompt(engine, &req, &spec, &verbalizer, train)?;
    let projection = if req.deep {
        deep_projection(engine, &req, &encoded[&SplitName::Train], p0)?
    } else {
        SessionProjection::Shallow(
            Projection::new(
                &req.projection,
                req.prompt_length,
                engine.config().hidden_size,
                engine.info().embedding_std,
                p0,
                engine.device(),
                engine.dtype(),
            )
            .map_err(|e| CoreError::Invalid(format!("projection: {e:#}")))?,
        )
    };
    Ok(Session::new(
        identity,
        spec,
        verbalizer,
        encoded,
        projection,
        req.placement,
        req.loss,
        req.prompt_length,
        context,
    ))
}

/// Every split as token ids, the content-free inputs of contextual calibration included.
fn encode_splits(
    engine: &Engine,
    limits: &Limits,
    spec: &TaskSpec,
    splits: &HashMap<SplitName, Vec<Example>>,
) -> Result<HashMap<SplitName, EncodedSplit>, CoreError> {
    let mut encoded = HashMap::new();
    for (name, examples) in splits {
        encoded.insert(*name, encode_split(engine, limits, spec, examples)?);
    }
    let content_free = encode_split(engine, limits, spec, &content_free_inputs(spec))?;
    encoded.insert(SplitName::ContentFree, content_free);
    Ok(encoded)
}

/// In-context learning: training examples rendered with their label words, within the tokens
/// the longest input leaves (`room`) and the operator's and the request's limits, embedded once.
fn context(
    engine: &Engine,
    limits: &Limits,
    demos: &DemonstrationSpec,
    spec: &TaskSpec,
    verbalizer: &Verbalizer,
    train: &[Example],
    room: usize,
) -> Result<Context, CoreError> {
    let budget = limits
        .max_context_tokens
        .min(room)
        .min(demos.max_tokens.unwrap_or(usize::MAX));
    let built = demonstrations::assemble(
        engine.tokenizer(),
        spec,
        verbalizer,
        train,
        demos.seed,
        demos.max,
        budget,
    )
    .map_err(|e| CoreError::Invalid(format!("demonstrations: {e:#}")))?;
    if built.count == 0 && demos.max != Some(0) {
        return Err(CoreError::TooLarge(format!(
            "no demonstration fits in {budget} tokens of context"
        )));
    }
    let embeddings = engine
        .embed_tokens(&built.ids)
        .and_then(|e| Ok(e.to_dtype(engine.dtype())?))
        .map_err(CoreError::internal)?;
    Ok(Context {
        embeddings,
        count: built.count,
    })
}

/// The prompt's starting point `p0` (`[L, hidden]`, f32) from the request's `p0`: zeros, token
/// embeddings, the embeddings of a text or of demonstrations, or the client's own vectors.
fn starting_prompt(
    engine: &Engine,
    req: &CreateSessionRequest,
    spec: &TaskSpec,
    verbalizer: &Verbalizer,
    train: &[Example],
) -> Result<Tensor, CoreError> {
    let hidden = engine.config().hidden_size;
    Ok(match &req.p0 {
        PromptInit::Zeros => {
            Tensor::zeros((req.prompt_length, hidden), DType::F32, engine.device())
                .map_err(CoreError::internal)?
        }
        PromptInit::Tokens { ids } => {
            if ids.len() != req.prompt_length {
                return Err(CoreError::Invalid(format!(
                    "p0 has {} token ids, prompt_length is {}",
                    ids.len(),
                    req.prompt_length
                )));
            }
            engine
                .embed_tokens(ids)
                .map_err(|e| CoreError::Invalid(format!("p0: {e:#}")))?
        }
        PromptInit::Text { text } => {
            let ids = engine
                .tokenizer()
                .encode(text)
                .map_err(|e| CoreError::Invalid(format!("p0 text: {e:#}")))?;
            if ids.is_empty() {
                return Err(CoreError::Invalid(
                    "p0 text has no tokens: give an instruction or demonstrations".into(),
                ));
            }
            embed_first_tokens(engine, &ids, req.prompt_length)?
        }
        PromptInit::Demonstrations { seed } => {
            let built = demonstrations::assemble(
                engine.tokenizer(),
                spec,
                verbalizer,
                train,
                *seed,
                None,
                usize::MAX,
            )
            .map_err(|e| CoreError::Invalid(format!("p0 demonstrations: {e:#}")))?;
            if built.ids.is_empty() {
                return Err(CoreError::Invalid(
                    "p0 demonstrations: the session has no training examples".into(),
                ));
            }
            embed_first_tokens(engine, &built.ids, req.prompt_length)?
        }
        PromptInit::Vectors { rows } => {
            if rows.len() != req.prompt_length {
                return Err(CoreError::Invalid(format!(
                    "p0 has {} rows, prompt_length is {}",
                    rows.len(),
                    req.prompt_length
                )));
            }
            if let Some((i, row)) = rows
                .iter()
                .enumerate()
                .find(|(_, r)| r.len() != hidden || r.iter().any(|x| !x.is_finite()))
            {
                return Err(CoreError::Invalid(format!(
                    "p0 row {i} must be {hidden} finite numbers (the model's hidden size), got {} \
                     numbers",
                    row.len()
                )));
            }
            Tensor::from_vec(rows.concat(), (rows.len(), hidden), engine.device())
                .map_err(CoreError::internal)?
        }
    })
}

/// Contextual calibration's content-free inputs (Zhao et al. 2021), in both slots of a
/// two-input template.
fn content_free_inputs(spec: &TaskSpec) -> Vec<Example> {
    CONTENT_FREE_TEXTS
        .iter()
        .map(|text| Example {
            text_a: text.to_string(),
            text_b: spec.template.two_inputs().then(|| text.to_string()),
            label: 0,
        })
        .collect()
}

/// The embeddings of the first `len` of `ids` (repeated from the start when there are fewer):
/// a prompt of the model's own word embeddings.
fn embed_first_tokens(engine: &Engine, ids: &[u32], len: usize) -> Result<Tensor, CoreError> {
    let ids: Vec<u32> = ids.iter().copied().cycle().take(len).collect();
    engine.embed_tokens(&ids).map_err(CoreError::internal)
}

/// Rounds of 3-sigma clipping when measuring hidden-state spreads (as the BBTv2 reference code).
const SPREAD_CLIP_ROUNDS: usize = 5;

/// Training examples the spreads are measured on (the first ones; a few-shot split has 32 for a
/// binary task), which bounds the memory of keeping every layer's hidden states.
const SPREAD_EXAMPLES: usize = 64;

/// BBTv2's per-layer projections, scaled by the spread of the hidden states entering each
/// layer when the model reads the training inputs with `p0` in the session's placement
/// (`[bos][p0][text]` or `[bos][text][p0][template tail]`).
fn deep_projection(
    engine: &Engine,
    req: &CreateSessionRequest,
    train: &EncodedSplit,
    p0: Tensor,
) -> Result<SessionProjection, CoreError> {
    if req.prompt_length == 0 {
        return Err(CoreError::Invalid(
            "deep prompts need prompt_length of at least 1".into(),
        ));
    }
    let rows: Vec<Row> = train
        .rows_with_prompt(engine, req.placement)
        .into_iter()
        .take(SPREAD_EXAMPLES)
        .collect();
    let prompt = Prompt::new(p0.to_dtype(engine.dtype()).map_err(CoreError::internal)?);
    let spreads = engine
        .layer_input_spread(&rows, &[prompt], SPREAD_CLIP_ROUNDS)
        .map_err(CoreError::internal)?;
    let scales = DeepProjection::layer_std(&req.projection, engine.info().embedding_std, &spreads);
    let hidden = engine.config().hidden_size;
    let projection = DeepProjection::new(
        &req.projection,
        req.prompt_length,
        hidden,
        scales,
        p0,
        engine.dtype(),
    )
    .map_err(|e| CoreError::Invalid(format!("projection: {e:#}")))?;
    let chosen = projection
        .zero_layers(engine.device())
        .map_err(CoreError::internal)?;
    Ok(SessionProjection::Deep {
        projection,
        chosen: parking_lot::Mutex::new(chosen),
    })
}
