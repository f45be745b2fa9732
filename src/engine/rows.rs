//! What a forward takes and gives: rows of token and prompt segments, continuous prompts
//! (with optional per-layer deep vectors), the readout, and the output.

use candle_core::Tensor;

/// One piece of an input sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Ordinary tokens, embedded with the model's word embeddings.
    Tokens(Vec<u32>),
    /// A continuous prompt: index into the `prompts` passed along with the rows.
    Prompt(usize),
}

/// A continuous prompt: `L` vectors placed at the embedding output.
#[derive(Debug, Clone)]
pub struct Prompt {
    /// `[L, hidden]`, in the model's embedding space (unscaled, like rows of the embedding matrix).
    pub embeddings: Tensor,
    /// Optional `[num_layers, L, hidden]`: layer `l`'s vectors are added to the hidden states at the
    /// prompt's positions before layer `l` (deep prompts, BBTv2).
    pub deep: Option<Tensor>,
}

impl Prompt {
    /// A prompt from its `[L, hidden]` matrix, without deep vectors.
    pub fn new(embeddings: Tensor) -> Self {
        Self {
            embeddings,
            deep: None,
        }
    }

    /// Number of prompt vectors.
    pub fn len(&self) -> usize {
        self.embeddings.dim(0).unwrap_or(0)
    }

    /// Whether the prompt has no vectors (L = 0).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One sequence to run: its segments, and optionally the cached past row it continues.
#[derive(Debug, Clone)]
pub struct Row {
    pub segments: Vec<Segment>,
    /// Row of the [`KvCache`] passed to [`Engine::forward`] whose positions precede this row.
    pub past_row: Option<usize>,
}

impl Row {
    /// A row with no past.
    pub fn new(segments: Vec<Segment>) -> Self {
        Self {
            segments,
            past_row: None,
        }
    }
}

/// Which logits to compute at each row's prediction (last) position.
#[derive(Debug, Clone)]
pub enum Readout {
    /// Only these token ids (a verbalizer): the full output head is never computed.
    Tokens(Vec<u32>),
    /// The whole vocabulary.
    FullVocabulary,
}

/// Result of a forward pass.
#[derive(Debug)]
pub struct ForwardOutput {
    /// `[rows, k]`: logits at each row's last position over the readout's tokens, f32 whatever
    /// the compute dtype (so scores and losses are read the same way on every device), except
    /// that an f64 model keeps f64.
    pub logits: Tensor,
    /// `[rows, hidden]`: final-norm hidden state at the same position, when asked for, in the
    /// compute dtype (a trained head multiplies it there).
    pub features: Option<Tensor>,
}

/// Positions a row adds (its tokens and prompt vectors; unknown prompts count zero and fail later).
pub(super) fn row_positions(row: &Row, prompts: &[Prompt]) -> usize {
    row.segments
        .iter()
        .map(|s| match s {
            Segment::Tokens(ids) => ids.len(),
            Segment::Prompt(i) => prompts.get(*i).map_or(0, Prompt::len),
        })
        .sum()
}
