//! Building a session: label-word ids, tokenised splits under the limits, `p0` and the
//! projection. Runs off the async runtime (it draws `L * hidden * d` random numbers).

use std::collections::HashMap;

use bbt::projection::Projection;
use bbt::protocol::{CreateSessionRequest, PromptInit, SplitName};
use bbt::scoring::EncodedSplit;
use bbt::tasks::{Example, MultiTokenWords, TaskSpec};
use bbt::Engine;
use candle_core::{DType, Tensor};

use super::sessions::Session;
use super::{CoreError, Limits};

fn internal(e: impl std::fmt::Display) -> CoreError {
    CoreError::Internal(format!("{e:#}"))
}

/// Token ids of the verbalizer; a multi-token or unknown word is a 422 naming it.
pub fn verbalizer_ids(engine: &Engine, spec: &TaskSpec) -> Result<Vec<u32>, CoreError> {
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

/// Everything a session needs, built off the async runtime.
pub fn build_session(
    engine: &Engine,
    limits: &Limits,
    owner: Option<String>,
    spec: TaskSpec,
    splits: HashMap<SplitName, Vec<Example>>,
    req: CreateSessionRequest,
) -> Result<Session, CoreError> {
    let verbalizer = verbalizer_ids(engine, &spec)?;
    let mut encoded = HashMap::new();
    for (name, examples) in &splits {
        encoded.insert(*name, encode_split(engine, limits, &spec, examples)?);
    }
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
    let hidden = engine.config().hidden_size;
    let p0 = match &req.p0 {
        PromptInit::Zeros => {
            Tensor::zeros((req.prompt_length, hidden), DType::F32, engine.device())
                .map_err(internal)?
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
    };
    let projection = Projection::new(
        &req.projection,
        req.prompt_length,
        hidden,
        engine.info().embedding_std,
        p0,
        engine.device(),
        engine.dtype(),
    )
    .map_err(|e| CoreError::Invalid(format!("projection: {e:#}")))?;
    let id = format!("ses_{:016x}", rand::random::<u64>());
    Ok(Session::new(
        id,
        owner,
        spec,
        verbalizer,
        encoded,
        projection,
        req.placement,
        req.loss,
        req.prompt_length,
    ))
}
