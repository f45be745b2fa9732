//! The one forward everything in bbt uses: sequences of token and continuous-prompt segments in,
//! logits restricted to a verbalizer (and optionally features) out.
//!
//! The server's `/evaluate`, the stateless `/forward`, the demos and (later) the gradient
//! baselines all call this module; the architecture-specific work lives in [`crate::model`].

use std::path::Path;

use anyhow::Context;
use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use crate::model::config::{HfLlamaConfig, ModelConfig};
use crate::model::decoder::{Decoder, DeepAdd, KvCache, PackedInput};
use crate::model::weights::DecoderWeights;
use crate::tokenizer::Tokenizer;

/// Positions per engine pass when a forward is split into chunks.
const CHUNK_TOKENS: usize = 2048;

/// Positions a row adds (its tokens and prompt vectors; unknown prompts count zero and fail later).
fn row_positions(row: &Row, prompts: &[Prompt]) -> usize {
    row.segments
        .iter()
        .map(|s| match s {
            Segment::Tokens(ids) => ids.len(),
            Segment::Prompt(i) => prompts.get(*i).map_or(0, Prompt::len),
        })
        .sum()
}

/// Longest sequence the engine prepares rotary tables for, whatever the model claims.
const MAX_POSITIONS_CAP: usize = 32_768;

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
    /// `[rows, k]`: logits at each row's last position over the readout's tokens.
    pub logits: Tensor,
    /// `[rows, hidden]`: final-norm hidden state at the same position, when asked for.
    pub features: Option<Tensor>,
}

/// Facts about the loaded model that clients need (e.g. to scale a random projection).
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub name: String,
    pub config: ModelConfig,
    /// Mean of all entries of the word-embedding matrix.
    pub embedding_mean: f64,
    /// Standard deviation of all entries of the word-embedding matrix.
    pub embedding_std: f64,
    pub bos_token_id: Option<u32>,
}

/// A loaded model and its tokenizer on one device.
pub struct Engine {
    decoder: Decoder,
    tokenizer: Tokenizer,
    info: ModelInfo,
}

/// The default compute dtype of a device: f32 on CPU, bf16 on GPUs.
pub fn default_dtype(device: &Device) -> DType {
    if device.is_cpu() {
        DType::F32
    } else {
        DType::BF16
    }
}

impl Engine {
    /// Loads a model given as a known asset name (fetched on first use), a `.gguf` file, or a
    /// HF-style directory (`config.json`, `*.safetensors`, `tokenizer.json`).
    pub fn load(model: &str, device: &Device) -> anyhow::Result<Self> {
        let path = crate::assets::resolve_model(model)?;
        Self::load_path(&path, device, default_dtype(device))
    }

    /// Loads from a path in the given compute dtype.
    pub fn load_path(path: &Path, device: &Device, dtype: DType) -> anyhow::Result<Self> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        let (cfg, weights, tokenizer) = if path.is_dir() {
            let config_path = path.join("config.json");
            let text = std::fs::read_to_string(&config_path)
                .with_context(|| format!("read {}", config_path.display()))?;
            let hf: HfLlamaConfig = serde_json::from_str(&text)
                .with_context(|| format!("parse {}", config_path.display()))?;
            let cfg = hf.to_model_config()?;
            let weights = DecoderWeights::from_safetensors_dir(path, &cfg, device, dtype)?;
            let tokenizer = Tokenizer::load(path)?;
            (cfg, weights, tokenizer)
        } else {
            let mut file = std::fs::File::open(path)
                .with_context(|| format!("open model {}", path.display()))?;
            let content = gguf_file::Content::read(&mut file).map_err(|e| {
                anyhow::anyhow!("{} is not a readable GGUF file: {e}", path.display())
            })?;
            let cfg = ModelConfig::from_gguf(&content)?;
            let weights = DecoderWeights::from_gguf(path, &content, &cfg, device, dtype)?;
            let tokenizer = Tokenizer::from_gguf(&content)?;
            (cfg, weights, tokenizer)
        };
        Self::from_parts(name, cfg, weights, tokenizer, device, dtype)
    }

    /// Assembles an engine from loaded parts (also how tests build small random models).
    pub fn from_parts(
        name: String,
        cfg: ModelConfig,
        weights: DecoderWeights,
        tokenizer: Tokenizer,
        device: &Device,
        dtype: DType,
    ) -> anyhow::Result<Self> {
        let embed = weights.embed.to_dtype(DType::F32)?;
        let embedding_mean = embed.mean_all()?.to_scalar::<f32>()? as f64;
        let embedding_std = embed
            .broadcast_sub(&Tensor::new(embedding_mean as f32, embed.device())?)?
            .sqr()?
            .mean_all()?
            .to_scalar::<f32>()?
            .sqrt() as f64;
        let max_position = cfg.max_position.min(MAX_POSITIONS_CAP);
        let info = ModelInfo {
            name,
            config: cfg.clone(),
            embedding_mean,
            embedding_std,
            bos_token_id: tokenizer.bos(),
        };
        let decoder = Decoder::new(cfg, weights, max_position, device, dtype)?;
        Ok(Self {
            decoder,
            tokenizer,
            info,
        })
    }

    /// Model facts for clients.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.decoder.cfg
    }

    /// The model's weights (cloning them shares the tensors).
    pub fn weights(&self) -> &DecoderWeights {
        &self.decoder.weights
    }

    /// Swaps in weights of the same architecture and shapes (a training method's version of the
    /// model: trainable copies, attached LoRA factors, adapters, biases), returning the ones
    /// that were in use. Every forward then runs them.
    pub fn replace_weights(&mut self, weights: DecoderWeights) -> anyhow::Result<DecoderWeights> {
        let old = &self.decoder.weights;
        anyhow::ensure!(
            weights.layers.len() == old.layers.len()
                && weights.embed.dims() == old.embed.dims()
                && weights.lm_head.is_some() == old.lm_head.is_some(),
            "replacement weights do not match the loaded model's shapes"
        );
        Ok(std::mem::replace(&mut self.decoder.weights, weights))
    }

    /// The model's tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The device the model runs on.
    pub fn device(&self) -> &Device {
        self.decoder.device()
    }

    /// The compute dtype.
    pub fn dtype(&self) -> DType {
        self.decoder.dtype()
    }

    /// Largest number of positions (past + new) one sequence may have.
    pub fn max_positions(&self) -> usize {
        self.decoder.max_position()
    }

    /// The `[len, hidden]` word embeddings of `ids` (e.g. to initialise or test a prompt).
    pub fn embed_tokens(&self, ids: &[u32]) -> anyhow::Result<Tensor> {
        self.check_ids(ids)?;
        Ok(self.decoder.embed(ids)?)
    }

    /// The leading segments every input starts with: `[bos]` when the model uses one.
    pub fn bos_segment(&self) -> Vec<u32> {
        self.tokenizer.bos().into_iter().collect()
    }

    /// Runs `rows` (continuing `past` where a row names a past row) and reads logits out at each
    /// row's last position. Padding never changes a row's result: each row's logits equal those
    /// of running it alone.
    pub fn forward(
        &self,
        rows: &[Row],
        prompts: &[Prompt],
        past: Option<&KvCache>,
        readout: &Readout,
        features: bool,
    ) -> anyhow::Result<ForwardOutput> {
        let ids = match readout {
            Readout::Tokens(ids) => {
                self.check_ids(ids)?;
                Some(ids.as_slice())
            }
            Readout::FullVocabulary => None,
        };
        // Large batches run in chunks of about CHUNK_TOKENS positions: activations then stay
        // cache-sized, and results are the same (rows are independent).
        let mut hidden = Vec::new();
        let mut start = 0;
        while start < rows.len() {
            let mut end = start;
            let mut tokens = 0;
            while end < rows.len()
                && (end == start || tokens + row_positions(&rows[end], prompts) <= CHUNK_TOKENS)
            {
                tokens += row_positions(&rows[end], prompts);
                end += 1;
            }
            let input = self.pack(&rows[start..end], prompts, past, false)?;
            hidden.push(self.decoder.run(input)?.last_hidden);
            start = end;
        }
        anyhow::ensure!(!hidden.is_empty(), "no rows to run");
        let last_hidden = Tensor::cat(&hidden, 0)?;
        let logits = self.decoder.logits(&last_hidden, ids)?;
        Ok(ForwardOutput {
            logits,
            features: features.then_some(last_hidden),
        })
    }

    /// Runs `rows` and returns their keys/values, to be continued by later calls.
    pub fn prefill(&self, rows: &[Row], prompts: &[Prompt]) -> anyhow::Result<KvCache> {
        let input = self.pack(rows, prompts, None, true)?;
        Ok(self.decoder.run(input)?.kv.expect("keep_kv was set"))
    }

    /// BBT prefix placement, `[bos][prompt_c][tail_e]` for every candidate c and example e
    /// (row `c * E + e` of the result). Each candidate's prompt keys/values are computed once and
    /// shared by all examples.
    pub fn score_prefix(
        &self,
        prompts: &[Prompt],
        tails: &[Vec<u32>],
        readout: &Readout,
    ) -> anyhow::Result<ForwardOutput> {
        self.score_prefix_groups(prompts, &vec![tails; prompts.len()], readout)
    }

    /// The prefix placement with each prompt reading its own texts: `[bos][prompt_c][text]` for
    /// every text of `texts[c]`, rows prompt by prompt in the order of their texts. The prompts
    /// may differ in length (requests of different sessions share one pass this way); each
    /// `[bos][prompt]` is prefilled once and continued by its texts.
    pub fn score_prefix_groups(
        &self,
        prompts: &[Prompt],
        texts: &[&[Vec<u32>]],
        readout: &Readout,
    ) -> anyhow::Result<ForwardOutput> {
        anyhow::ensure!(
            texts.len() == prompts.len(),
            "{} groups of texts for {} prompts",
            texts.len(),
            prompts.len()
        );
        anyhow::ensure!(
            texts.iter().all(|g| g.iter().all(|t| !t.is_empty())),
            "every example needs at least one token after the prompt to predict from"
        );
        let bos = self.bos_segment();
        // With no BOS and empty prompts there is nothing to prefill: the texts stand alone.
        let shared = !bos.is_empty() || prompts.iter().any(|p| !p.is_empty());
        let rows: Vec<Row> = texts
            .iter()
            .enumerate()
            .flat_map(|(c, group)| {
                group.iter().map(move |t| Row {
                    segments: vec![Segment::Tokens(t.clone())],
                    past_row: shared.then_some(c),
                })
            })
            .collect();
        if !shared {
            return self.forward(&rows, &[], None, readout, false);
        }
        let prefix_rows: Vec<Row> = (0..prompts.len())
            .map(|c| Row::new(vec![Segment::Tokens(bos.clone()), Segment::Prompt(c)]))
            .collect();
        let cache = self.prefill(&prefix_rows, prompts)?;
        self.forward(&rows, &[], Some(&cache), readout, false)
    }

    /// The spread of the hidden states entering each layer over all positions of `rows`:
    /// the standard deviation after `clip_rounds` rounds of clipping to mean ± 3 std (the
    /// residual stream of pre-norm models carries a few huge outlier activations that would
    /// otherwise dominate). BBTv2 scales each layer's random projection by it.
    pub fn layer_input_spread(
        &self,
        rows: &[Row],
        prompts: &[Prompt],
        clip_rounds: usize,
    ) -> anyhow::Result<Vec<f64>> {
        let mut input = self.pack(rows, prompts, None, false)?;
        input.keep_layer_inputs = true;
        let layers = self
            .decoder
            .run(input)?
            .layer_inputs
            .expect("keep_layer_inputs was set");
        layers
            .iter()
            .map(|x| {
                let values = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                Ok(crate::projection::clipped_std(&values, clip_rounds))
            })
            .collect()
    }

    /// Keys/values of `[bos][text_e]` for each example: the per-session cache of the suffix
    /// placement, computed once and reused by every later prompt.
    pub fn cache_texts(&self, texts: &[Vec<u32>]) -> anyhow::Result<KvCache> {
        let bos = self.bos_segment();
        anyhow::ensure!(
            !bos.is_empty() || texts.iter().all(|t| !t.is_empty()),
            "empty text: this model has no BOS token to stand in for it"
        );
        let rows: Vec<Row> = texts
            .iter()
            .map(|t| {
                Row::new(vec![Segment::Tokens(
                    bos.iter().chain(t).copied().collect(),
                )])
            })
            .collect();
        self.prefill(&rows, &[])
    }

    /// BBT suffix placement, `[bos][text_e][prompt_c][tail_e]` (row `c * E + e`), continuing the
    /// cached texts from [`Engine::cache_texts`].
    pub fn score_suffix(
        &self,
        texts: &KvCache,
        prompts: &[Prompt],
        tails: &[Vec<u32>],
        readout: &Readout,
    ) -> anyhow::Result<ForwardOutput> {
        anyhow::ensure!(
            tails.len() == texts.rows(),
            "{} tails for {} cached texts",
            tails.len(),
            texts.rows()
        );
        let rows: Vec<Row> = (0..prompts.len())
            .flat_map(|c| {
                tails.iter().enumerate().map(move |(e, t)| Row {
                    segments: vec![Segment::Prompt(c), Segment::Tokens(t.clone())],
                    past_row: Some(e),
                })
            })
            .collect();
        self.forward(&rows, prompts, Some(texts), readout, false)
    }

    /// The suffix placement in one pass with no cache, `[bos][text_e][prompt_c][tail_e]`: for
    /// a split scored once (a test set), where building and keeping a cache would not pay off.
    pub fn score_inline(
        &self,
        prompts: &[Prompt],
        texts: &[Vec<u32>],
        tails: &[Vec<u32>],
        readout: &Readout,
    ) -> anyhow::Result<ForwardOutput> {
        anyhow::ensure!(
            texts.len() == tails.len(),
            "{} texts for {} tails",
            texts.len(),
            tails.len()
        );
        let bos = self.bos_segment();
        let rows: Vec<Row> = (0..prompts.len())
            .flat_map(|c| {
                let bos = &bos;
                texts.iter().zip(tails).map(move |(text, tail)| {
                    let head: Vec<u32> = bos.iter().chain(text).copied().collect();
                    Row::new(vec![
                        Segment::Tokens(head),
                        Segment::Prompt(c),
                        Segment::Tokens(tail.clone()),
                    ])
                })
            })
            .collect();
        self.forward(&rows, prompts, None, readout, false)
    }

    fn check_ids(&self, ids: &[u32]) -> anyhow::Result<()> {
        let vocab = self.decoder.cfg.vocab_size;
        match ids.iter().find(|&&i| i as usize >= vocab) {
            Some(bad) => anyhow::bail!("token id {bad} is outside the vocabulary (size {vocab})"),
            None => Ok(()),
        }
    }

    /// Builds the packed input embeddings (and deep-prompt additions) of `rows`.
    fn pack<'a>(
        &self,
        rows: &[Row],
        prompts: &[Prompt],
        past: Option<&'a KvCache>,
        keep_kv: bool,
    ) -> anyhow::Result<PackedInput<'a>> {
        let hidden = self.decoder.cfg.hidden_size;
        anyhow::ensure!(!rows.is_empty(), "no rows to run");
        for (i, p) in prompts.iter().enumerate() {
            anyhow::ensure!(
                p.embeddings.rank() == 2 && p.embeddings.dim(1)? == hidden,
                "prompt {i} must be [L, {hidden}], got {:?}",
                p.embeddings.dims()
            );
            if let Some(d) = &p.deep {
                anyhow::ensure!(
                    d.dims() == [self.decoder.cfg.num_layers, p.len(), hidden],
                    "deep prompt {i} must be [{}, {}, {hidden}], got {:?}",
                    self.decoder.cfg.num_layers,
                    p.len(),
                    d.dims()
                );
            }
        }
        // Source table = [all token embeddings; all prompts' vectors]; one gather builds the input.
        let mut token_ids = Vec::new();
        let mut prompt_offsets = Vec::with_capacity(prompts.len());
        let mut prompt_rows = 0usize;
        for p in prompts {
            prompt_offsets.push(prompt_rows);
            prompt_rows += p.len();
        }
        let mut lengths = Vec::with_capacity(rows.len());
        let mut sources: Vec<(bool, usize)> = Vec::new(); // (is_prompt, index)
        let mut deep_positions = Vec::new();
        let mut deep_sources = Vec::new();
        for row in rows {
            let start = sources.len();
            for seg in &row.segments {
                match seg {
                    Segment::Tokens(ids) => {
                        for &id in ids {
                            sources.push((false, token_ids.len()));
                            token_ids.push(id);
                        }
                    }
                    Segment::Prompt(pi) => {
                        let p = prompts.get(*pi).with_context(|| {
                            format!("segment names prompt {pi}, only {} given", prompts.len())
                        })?;
                        for j in 0..p.len() {
                            if p.deep.is_some() {
                                deep_positions.push(sources.len() as u32);
                                deep_sources.push((prompt_offsets[*pi] + j) as u32);
                            }
                            sources.push((true, prompt_offsets[*pi] + j));
                        }
                    }
                }
            }
            anyhow::ensure!(
                sources.len() > start,
                "a row has no tokens and no prompt vectors"
            );
            lengths.push(sources.len() - start);
        }
        anyhow::ensure!(
            past.is_some() == rows.iter().any(|r| r.past_row.is_some()),
            "rows name past rows exactly when a past cache is given"
        );
        let past = match past {
            Some(cache) => {
                let idx: Vec<usize> = rows
                    .iter()
                    .map(|r| {
                        r.past_row
                            .context("with a past cache, every row must name its past row")
                    })
                    .collect::<anyhow::Result<_>>()?;
                Some((cache, idx))
            }
            None => None,
        };
        self.check_ids(&token_ids)?;
        let device = self.decoder.device();
        let dtype = self.decoder.dtype();
        let token_emb = self.decoder.embed(&token_ids)?;
        let table = if prompt_rows == 0 {
            token_emb
        } else {
            let mut parts = vec![token_emb];
            for p in prompts {
                parts.push(p.embeddings.to_device(device)?.to_dtype(dtype)?);
            }
            Tensor::cat(&parts, 0)?
        };
        let n_tok = token_ids.len();
        let gather: Vec<u32> = sources
            .iter()
            .map(|&(is_prompt, i)| {
                if is_prompt {
                    (n_tok + i) as u32
                } else {
                    i as u32
                }
            })
            .collect();
        let identity =
            table.dim(0)? == gather.len() && gather.iter().enumerate().all(|(i, &g)| i as u32 == g);
        let embeddings = if identity {
            table
        } else {
            let n = gather.len();
            table.index_select(&Tensor::from_vec(gather, n, device)?, 0)?
        };
        let deep = if deep_positions.is_empty() {
            None
        } else {
            let parts = prompts
                .iter()
                .map(|p| match &p.deep {
                    Some(d) => Ok(d.to_device(device)?.to_dtype(dtype)?),
                    None => Tensor::zeros(
                        (self.decoder.cfg.num_layers, p.len(), hidden),
                        dtype,
                        device,
                    ),
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            let all = Tensor::cat(&parts, 1)?;
            let m = deep_sources.len();
            Some(DeepAdd {
                positions: Tensor::from_vec(deep_positions, m, device)?,
                vectors: all.index_select(&Tensor::from_vec(deep_sources, m, device)?, 1)?,
            })
        };
        Ok(PackedInput {
            embeddings,
            lengths,
            past,
            deep,
            keep_kv,
            keep_layer_inputs: false,
        })
    }
}
