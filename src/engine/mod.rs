//! The one forward everything in bbt uses: sequences of token and continuous-prompt segments in,
//! logits restricted to a verbalizer (and optionally features) out.
//!
//! The server's `/evaluate`, the stateless `/forward`, the demos and (later) the gradient
//! baselines all call this module; the architecture-specific work lives in [`crate::model`].
//!
//! `rows.rs`: what a forward takes and gives (segments, prompts, rows, readouts);
//! `placements.rs`: BBT's prefix and suffix placements on top of [`Engine::forward`];
//! `pack.rs`: rows laid end to end as one packed input.

mod pack;
mod placements;
mod rows;
mod spread;

use rows::row_positions;
pub use rows::{ForwardOutput, Prompt, Readout, Row, Segment};

use std::path::Path;

use anyhow::Context;
use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use crate::blas::Precision;
use crate::model::config::{HfLlamaConfig, ModelConfig};
use crate::model::decoder::{Decoder, KvCache};
use crate::model::weights::DecoderWeights;
use crate::tokenizer::Tokenizer;

/// Positions per engine pass when a forward is split into chunks.
const CHUNK_TOKENS: usize = 2048;

/// Longest sequence the engine prepares rotary tables for, whatever the model claims.
const MAX_POSITIONS_CAP: usize = 32_768;

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
    /// The dtype the model was loaded in (`--dtype`); see [`Engine::model_dtype`].
    model_dtype: DType,
    /// The CPU kernels the weights are prepared for (`None` off the CPU).
    cpu_kernels: Option<String>,
}

/// The default dtype of a device: bf16 on GPUs; on the CPU bf16 where its matmuls are native
/// (AMX or AVX512-BF16) and a library that runs them natively (oneMKL on Intel, oneDNN) is
/// loaded, f32 elsewhere.
pub fn default_dtype(device: &Device) -> DType {
    if !device.is_cpu() {
        return DType::BF16;
    }
    let native_bf16 =
        crate::blas::kernels().is_ok_and(|k| k.blas().is_some_and(|b| b.has_fast_bf16()));
    if native_bf16 {
        DType::BF16
    } else {
        DType::F32
    }
}

/// The dtype tensors are stored and computed in for a model loaded in `dtype`: on the CPU a
/// bf16 model keeps f32 activations, norms and embeddings, and only its matmuls take bf16
/// inputs (candle's CPU kernels have no fast bf16 arithmetic; oneMKL's and oneDNN's bf16 matmuls
/// accumulate in f32).
pub fn compute_dtype(device: &Device, dtype: DType) -> DType {
    if device.is_cpu() && dtype == DType::BF16 {
        DType::F32
    } else {
        dtype
    }
}

/// The precision of a model's matmuls on the CPU.
fn matmul_precision(dtype: DType) -> Precision {
    match dtype {
        DType::BF16 => Precision::Bf16,
        _ => Precision::F32,
    }
}

/// Prepares `weights`' matmuls for the CPU kernels of this process (a no-op off the CPU).
fn prepare_cpu(
    device: &Device,
    precision: Precision,
    weights: &mut DecoderWeights,
) -> anyhow::Result<()> {
    if device.is_cpu() {
        weights.prepare_cpu(crate::blas::kernels()?.blas(), precision)?;
    }
    Ok(())
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
        // A bf16 model on the CPU is read in f32 (see `compute_dtype`), never rounded twice.
        let storage = compute_dtype(device, dtype);
        let (cfg, weights, tokenizer) = if path.is_dir() {
            let config_path = path.join("config.json");
            let text = std::fs::read_to_string(&config_path)
                .with_context(|| format!("read {}", config_path.display()))?;
            let hf: HfLlamaConfig = serde_json::from_str(&text)
                .with_context(|| format!("parse {}", config_path.display()))?;
            let cfg = hf.to_model_config()?;
            let weights = DecoderWeights::from_safetensors_dir(path, &cfg, device, storage)?;
            let tokenizer = Tokenizer::load(path)?;
            (cfg, weights, tokenizer)
        } else {
            let mut file = std::fs::File::open(path)
                .with_context(|| format!("open model {}", path.display()))?;
            let content = gguf_file::Content::read(&mut file).map_err(|e| {
                anyhow::anyhow!("{} is not a readable GGUF file: {e}", path.display())
            })?;
            let cfg = ModelConfig::from_gguf(&content)?;
            let weights = DecoderWeights::from_gguf(path, &content, &cfg, device, storage)?;
            let tokenizer = Tokenizer::from_gguf(&content)?;
            (cfg, weights, tokenizer)
        };
        Self::from_parts(name, cfg, weights, tokenizer, device, dtype)
    }

    fn matmul_precision(&self) -> Precision {
        matmul_precision(self.model_dtype)
    }

    /// Re-prepares the weights for `blas` or, with `None`, for candle's gemm: how tests and
    /// benchmarks compare kernel families in one process. CPU only.
    pub fn use_cpu_kernels(
        &mut self,
        blas: Option<&'static crate::blas::Blas>,
    ) -> anyhow::Result<()> {
        anyhow::ensure!(self.device().is_cpu(), "CPU kernels need a CPU model");
        let precision = self.matmul_precision();
        self.decoder.weights.prepare_cpu(blas, precision)?;
        self.cpu_kernels = Some(blas.map_or_else(|| "candle-gemm".into(), |b| b.label()));
        Ok(())
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
        let storage = compute_dtype(device, dtype);
        let mut weights = if weights.embed.dtype() == storage {
            weights
        } else {
            weights.to_dtype(storage)?
        };
        prepare_cpu(device, matmul_precision(dtype), &mut weights)?;
        let decoder = Decoder::new(cfg, weights, max_position, device, storage)?;
        let cpu_kernels = match device.is_cpu() {
            true => Some(crate::blas::kernels()?.label()),
            false => None,
        };
        Ok(Self {
            decoder,
            tokenizer,
            info,
            model_dtype: dtype,
            cpu_kernels,
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
        let mut weights = weights;
        prepare_cpu(self.device(), self.matmul_precision(), &mut weights)?;
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

    /// The dtype tensors are computed in (activations, prompts, caches): the model's dtype,
    /// except f32 for a bf16 model on the CPU (see [`compute_dtype`]).
    pub fn dtype(&self) -> DType {
        self.decoder.dtype()
    }

    /// The dtype the model was loaded in (`--dtype`), as reported to users: on the CPU, bf16
    /// means bf16 matmul inputs with f32 accumulation and f32 everywhere else.
    pub fn model_dtype(&self) -> DType {
        self.model_dtype
    }

    /// The CPU kernels the matmuls run on (`onemkl-2026.2`, `openblas-0.3.34`, `candle-gemm`);
    /// `None` off the CPU.
    pub fn cpu_kernels(&self) -> Option<&str> {
        self.cpu_kernels.as_deref()
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
        // Half-precision logits are widened; f64 ones (gradient checks) keep their precision.
        let logits = match logits.dtype() {
            DType::F64 => logits,
            _ => logits.to_dtype(DType::F32)?,
        };
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
                Ok(spread::clipped_std(&values, clip_rounds))
            })
            .collect()
    }

    fn check_ids(&self, ids: &[u32]) -> anyhow::Result<()> {
        let vocab = self.decoder.cfg.vocab_size;
        match ids.iter().find(|&&i| i as usize >= vocab) {
            Some(bad) => anyhow::bail!("token id {bad} is outside the vocabulary (size {vocab})"),
            None => Ok(()),
        }
    }
}
