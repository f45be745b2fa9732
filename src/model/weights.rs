//! Model weights in the engine's compute dtype, loaded from GGUF or HF safetensors.
//!
//! Quantized GGUF tensors are dequantized once at load: on a small CPU, candle's f32 matmul is
//! several times faster than its quantized kernels, and the models bbt targets are small enough
//! that f32 copies fit comfortably in memory. Related projections are fused (q|k|v, gate|up) so
//! each layer runs two large matmuls instead of five small ones.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use anyhow::Context;
use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};

use super::config::{Architecture, ModelConfig};
use super::linear::{BlockAdapters, Linear};
use crate::blas::{Blas, Precision};

/// Weights of one transformer block. Matrices are `[out, in]`, as in both file formats.
#[derive(Clone)]
pub struct LayerWeights {
    pub attn_norm: Tensor,
    /// q, k and v projections stacked along the output dimension.
    pub wqkv: Linear,
    pub wo: Linear,
    pub ffn_norm: Tensor,
    /// gate and up projections stacked along the output dimension.
    pub w_gate_up: Linear,
    pub w_down: Linear,
    /// Gemma 3 only: per-head RMSNorm weights of queries and keys.
    pub q_norm: Option<Tensor>,
    pub k_norm: Option<Tensor>,
    /// Gemma 3 only: norms applied to the attention and MLP outputs before the residual add.
    pub post_attn_norm: Option<Tensor>,
    pub post_ffn_norm: Option<Tensor>,
    /// Adapters a parameter-efficient method attached (none in a loaded model).
    pub adapters: BlockAdapters,
}

/// The linear projections of a block by name: the hook points where LoRA factors and biases
/// attach, whatever the fused storage behind them.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub enum Proj {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Proj {
    /// Every projection, in block order.
    pub const ALL: [Proj; 7] = [
        Proj::Q,
        Proj::K,
        Proj::V,
        Proj::O,
        Proj::Gate,
        Proj::Up,
        Proj::Down,
    ];

    /// The short name used on the command line (`q`, `k`, `v`, `o`, `gate`, `up`, `down`).
    pub fn name(self) -> &'static str {
        match self {
            Proj::Q => "q",
            Proj::K => "k",
            Proj::V => "v",
            Proj::O => "o",
            Proj::Gate => "gate",
            Proj::Up => "up",
            Proj::Down => "down",
        }
    }

    /// HF transformers' module name (`q_proj`, `gate_proj`, ...).
    pub fn hf_name(self) -> String {
        format!("{}_proj", self.name())
    }

    /// HF transformers' module path inside a decoder layer (`self_attn.q_proj`, ...).
    pub fn hf_module(self) -> &'static str {
        match self {
            Proj::Q => "self_attn.q_proj",
            Proj::K => "self_attn.k_proj",
            Proj::V => "self_attn.v_proj",
            Proj::O => "self_attn.o_proj",
            Proj::Gate => "mlp.gate_proj",
            Proj::Up => "mlp.up_proj",
            Proj::Down => "mlp.down_proj",
        }
    }
}

impl std::str::FromStr for Proj {
    type Err = String;

    /// The projection named `name`: a short name, or HF's `q_proj`, `gate_proj`, ...
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let short = name.strip_suffix("_proj").unwrap_or(name);
        Proj::ALL
            .into_iter()
            .find(|p| p.name() == short)
            .ok_or_else(|| format!("unknown projection {name:?}: use q, k, v, o, gate, up or down"))
    }
}

impl TryFrom<String> for Proj {
    type Error = String;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        name.parse()
    }
}

impl From<Proj> for String {
    fn from(p: Proj) -> String {
        p.name().to_string()
    }
}

/// Where a projection lives: which stored linear layer and which slice of its outputs.
pub struct ProjSlot {
    pub offset: usize,
    pub len: usize,
}

impl LayerWeights {
    /// The stored linear layer holding `proj`, and the slice of its outputs that is `proj`.
    pub fn proj_mut(&mut self, proj: Proj, cfg: &ModelConfig) -> (&mut Linear, ProjSlot) {
        let (q, kv) = (
            cfg.num_heads * cfg.head_dim,
            cfg.num_kv_heads * cfg.head_dim,
        );
        let (offset, len) = match proj {
            Proj::Q => (0, q),
            Proj::K => (q, kv),
            Proj::V => (q + kv, kv),
            Proj::O => (0, cfg.hidden_size),
            Proj::Gate => (0, cfg.ffn_size),
            Proj::Up => (cfg.ffn_size, cfg.ffn_size),
            Proj::Down => (0, cfg.hidden_size),
        };
        let linear = match proj {
            Proj::Q | Proj::K | Proj::V => &mut self.wqkv,
            Proj::O => &mut self.wo,
            Proj::Gate | Proj::Up => &mut self.w_gate_up,
            Proj::Down => &mut self.w_down,
        };
        (linear, ProjSlot { offset, len })
    }

    /// Every stored linear layer of the block.
    pub fn linears_mut(&mut self) -> [&mut Linear; 4] {
        [
            &mut self.wqkv,
            &mut self.wo,
            &mut self.w_gate_up,
            &mut self.w_down,
        ]
    }

    /// The block's norm weights (two for Llama, six for Gemma 3), by GGUF-style name.
    pub fn norms_mut(&mut self) -> Vec<(&'static str, &mut Tensor)> {
        let mut out = vec![
            ("attn_norm", &mut self.attn_norm),
            ("ffn_norm", &mut self.ffn_norm),
        ];
        for (name, t) in [
            ("attn_q_norm", self.q_norm.as_mut()),
            ("attn_k_norm", self.k_norm.as_mut()),
            ("post_attention_norm", self.post_attn_norm.as_mut()),
            ("post_ffw_norm", self.post_ffn_norm.as_mut()),
        ] {
            if let Some(t) = t {
                out.push((name, t));
            }
        }
        out
    }

    /// The block cut off from the gradient graph (dropout off), for evaluation.
    pub fn for_inference(&self) -> Self {
        let d = |t: &Option<Tensor>| t.as_ref().map(Tensor::detach);
        Self {
            attn_norm: self.attn_norm.detach(),
            wqkv: self.wqkv.for_inference(),
            wo: self.wo.for_inference(),
            ffn_norm: self.ffn_norm.detach(),
            w_gate_up: self.w_gate_up.for_inference(),
            w_down: self.w_down.for_inference(),
            q_norm: d(&self.q_norm),
            k_norm: d(&self.k_norm),
            post_attn_norm: d(&self.post_attn_norm),
            post_ffn_norm: d(&self.post_ffn_norm),
            adapters: self.adapters.for_inference(),
        }
    }
}

/// All weights of a decoder-only model. Cloning shares the tensors (it copies no data).
#[derive(Clone)]
pub struct DecoderWeights {
    /// Token embedding matrix `[vocab, hidden]`.
    pub embed: Tensor,
    pub layers: Vec<LayerWeights>,
    pub final_norm: Tensor,
    /// Output head `[vocab, hidden]`; `None` when tied to `embed`.
    pub lm_head: Option<Tensor>,
}

/// A named-tensor source: GGUF or safetensors, yielding tensors already on `device` in `dtype`.
trait TensorSource {
    fn get(&mut self, name: &str) -> anyhow::Result<Tensor>;
    fn has(&self, name: &str) -> bool;
}

struct GgufSource<'a> {
    content: &'a gguf_file::Content,
    file: File,
    device: Device,
    dtype: DType,
}

impl TensorSource for GgufSource<'_> {
    fn get(&mut self, name: &str) -> anyhow::Result<Tensor> {
        let q = self
            .content
            .tensor(&mut self.file, name, &Device::Cpu)
            .with_context(|| format!("GGUF tensor {name}"))?;
        let t = q.dequantize(&Device::Cpu)?;
        Ok(t.to_device(&self.device)?.to_dtype(self.dtype)?)
    }

    fn has(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }
}

struct SafetensorsSource {
    tensors: HashMap<String, Tensor>,
    device: Device,
    dtype: DType,
}

impl TensorSource for SafetensorsSource {
    fn get(&mut self, name: &str) -> anyhow::Result<Tensor> {
        let t = self
            .tensors
            .remove(name)
            .with_context(|| format!("safetensors checkpoint lacks {name}"))?;
        Ok(t.to_device(&self.device)?.to_dtype(self.dtype)?)
    }

    fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

/// A stored tensor of a decoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LayerTensor {
    AttnNorm,
    Proj(Proj),
    FfnNorm,
    /// Gemma 3's per-head query and key norms, and its norms of the sublayers' outputs.
    QNorm,
    KNorm,
    PostAttnNorm,
    PostFfnNorm,
}

/// Tensor names of one file format.
struct Names {
    embed: &'static str,
    final_norm: &'static str,
    lm_head: &'static str,
    /// Layer `i`'s tensor named `part` (a name of [`Names::part`]).
    layer: fn(usize, &str) -> String,
    /// A layer tensor's name in this format, if the format has it.
    part: fn(LayerTensor) -> Option<&'static str>,
}

impl Names {
    /// Layer `i`'s `tensor`, or an error naming what this format lacks.
    fn of(&self, i: usize, tensor: LayerTensor) -> anyhow::Result<String> {
        let part = (self.part)(tensor).ok_or_else(|| {
            anyhow::anyhow!("this model format has no name for a layer's {tensor:?} tensor")
        })?;
        Ok((self.layer)(i, part))
    }
}

const GGUF_NAMES: Names = Names {
    embed: "token_embd.weight",
    final_norm: "output_norm.weight",
    lm_head: "output.weight",
    layer: |i, part| format!("blk.{i}.{part}.weight"),
    part: |tensor| {
        Some(match tensor {
            LayerTensor::AttnNorm => "attn_norm",
            LayerTensor::Proj(Proj::Q) => "attn_q",
            LayerTensor::Proj(Proj::K) => "attn_k",
            LayerTensor::Proj(Proj::V) => "attn_v",
            LayerTensor::Proj(Proj::O) => "attn_output",
            LayerTensor::FfnNorm => "ffn_norm",
            LayerTensor::Proj(Proj::Gate) => "ffn_gate",
            LayerTensor::Proj(Proj::Up) => "ffn_up",
            LayerTensor::Proj(Proj::Down) => "ffn_down",
            LayerTensor::QNorm => "attn_q_norm",
            LayerTensor::KNorm => "attn_k_norm",
            LayerTensor::PostAttnNorm => "post_attention_norm",
            LayerTensor::PostFfnNorm => "post_ffw_norm",
        })
    },
};

/// HF transformers' Llama layout (Gemma 3's extra norms are read from GGUF files only).
const HF_NAMES: Names = Names {
    embed: "model.embed_tokens.weight",
    final_norm: "model.norm.weight",
    lm_head: "lm_head.weight",
    layer: |i, part| format!("model.layers.{i}.{part}.weight"),
    part: |tensor| match tensor {
        LayerTensor::AttnNorm => Some("input_layernorm"),
        LayerTensor::Proj(p) => Some(p.hf_module()),
        LayerTensor::FfnNorm => Some("post_attention_layernorm"),
        LayerTensor::QNorm
        | LayerTensor::KNorm
        | LayerTensor::PostAttnNorm
        | LayerTensor::PostFfnNorm => None,
    },
};

impl DecoderWeights {
    /// Loads and dequantizes every tensor of a GGUF model.
    pub fn from_gguf(
        path: &Path,
        content: &gguf_file::Content,
        cfg: &ModelConfig,
        device: &Device,
        dtype: DType,
    ) -> anyhow::Result<Self> {
        let file = File::open(path).with_context(|| format!("open {}", path.display()))?;
        let mut src = GgufSource {
            content,
            file,
            device: device.clone(),
            dtype,
        };
        Self::load(&mut src, &GGUF_NAMES, cfg)
    }

    /// Loads a HF-style llama checkpoint: every `*.safetensors` file in `dir`.
    pub fn from_safetensors_dir(
        dir: &Path,
        cfg: &ModelConfig,
        device: &Device,
        dtype: DType,
    ) -> anyhow::Result<Self> {
        let mut tensors = HashMap::new();
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("read {}", dir.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        files.sort();
        anyhow::ensure!(
            !files.is_empty(),
            "no *.safetensors file in {}",
            dir.display()
        );
        for f in files {
            let loaded = candle_core::safetensors::load(&f, &Device::Cpu)
                .with_context(|| format!("read {}", f.display()))?;
            tensors.extend(loaded);
        }
        let mut src = SafetensorsSource {
            tensors,
            device: device.clone(),
            dtype,
        };
        Self::load(&mut src, &HF_NAMES, cfg)
    }

    fn load(src: &mut dyn TensorSource, names: &Names, cfg: &ModelConfig) -> anyhow::Result<Self> {
        let gemma = cfg.architecture == Architecture::Gemma3;
        let embed = src.get(names.embed)?;
        check_shape(&embed, &[cfg.vocab_size, cfg.hidden_size], names.embed)?;
        let lm_head = if src.has(names.lm_head) {
            Some(src.get(names.lm_head)?)
        } else {
            None
        };
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let mut get = |tensor: LayerTensor| src.get(&names.of(i, tensor)?);
            let q = get(LayerTensor::Proj(Proj::Q))?;
            let k = get(LayerTensor::Proj(Proj::K))?;
            let v = get(LayerTensor::Proj(Proj::V))?;
            check_shape(
                &q,
                &[cfg.num_heads * cfg.head_dim, cfg.hidden_size],
                "q projection",
            )?;
            check_shape(
                &k,
                &[cfg.num_kv_heads * cfg.head_dim, cfg.hidden_size],
                "k projection",
            )?;
            let gate = get(LayerTensor::Proj(Proj::Gate))?;
            let up = get(LayerTensor::Proj(Proj::Up))?;
            check_shape(&gate, &[cfg.ffn_size, cfg.hidden_size], "gate projection")?;
            let mut opt = |tensor| {
                if gemma {
                    get(tensor).map(Some)
                } else {
                    Ok(None)
                }
            };
            let (q_norm, k_norm) = (opt(LayerTensor::QNorm)?, opt(LayerTensor::KNorm)?);
            let (post_attn_norm, post_ffn_norm) = (
                opt(LayerTensor::PostAttnNorm)?,
                opt(LayerTensor::PostFfnNorm)?,
            );
            layers.push(LayerWeights {
                attn_norm: get(LayerTensor::AttnNorm)?,
                wqkv: Linear::new(Tensor::cat(&[&q, &k, &v], 0)?),
                wo: Linear::new(get(LayerTensor::Proj(Proj::O))?),
                ffn_norm: get(LayerTensor::FfnNorm)?,
                w_gate_up: Linear::new(Tensor::cat(&[&gate, &up], 0)?),
                w_down: Linear::new(get(LayerTensor::Proj(Proj::Down))?),
                q_norm,
                k_norm,
                post_attn_norm,
                post_ffn_norm,
                adapters: BlockAdapters::default(),
            });
        }
        Ok(Self {
            embed,
            layers,
            final_norm: src.get(names.final_norm)?,
            lm_head,
        })
    }

    /// Prepares every block's linear layers for the CPU kernels (see [`Linear::prepare_cpu`]).
    pub fn prepare_cpu(
        &mut self,
        blas: Option<&'static Blas>,
        precision: Precision,
    ) -> candle_core::Result<()> {
        for layer in &mut self.layers {
            for linear in layer.linears_mut() {
                linear.prepare_cpu(blas, precision)?;
            }
        }
        Ok(())
    }

    /// A copy of freshly loaded weights in `dtype` (nothing attached by a method yet).
    pub fn to_dtype(&self, dtype: DType) -> anyhow::Result<Self> {
        let cast = |t: &Tensor| t.to_dtype(dtype);
        let cast_opt = |t: &Option<Tensor>| t.as_ref().map(cast).transpose();
        let layers = self
            .layers
            .iter()
            .map(|l| {
                anyhow::ensure!(
                    l.adapters.is_empty()
                        && l.wqkv.lora.is_empty()
                        && l.w_gate_up.lora.is_empty()
                        && l.wo.lora.is_empty()
                        && l.w_down.lora.is_empty(),
                    "only freshly loaded weights change dtype"
                );
                let linear = |x: &Linear| -> candle_core::Result<Linear> {
                    let mut y = Linear::new(cast(&x.weight)?);
                    y.bias = x.bias.as_ref().map(cast).transpose()?;
                    Ok(y)
                };
                Ok(LayerWeights {
                    attn_norm: cast(&l.attn_norm)?,
                    wqkv: linear(&l.wqkv)?,
                    wo: linear(&l.wo)?,
                    ffn_norm: cast(&l.ffn_norm)?,
                    w_gate_up: linear(&l.w_gate_up)?,
                    w_down: linear(&l.w_down)?,
                    q_norm: cast_opt(&l.q_norm)?,
                    k_norm: cast_opt(&l.k_norm)?,
                    post_attn_norm: cast_opt(&l.post_attn_norm)?,
                    post_ffn_norm: cast_opt(&l.post_ffn_norm)?,
                    adapters: BlockAdapters::default(),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self {
            embed: cast(&self.embed)?,
            layers,
            final_norm: cast(&self.final_norm)?,
            lm_head: cast_opt(&self.lm_head)?,
        })
    }

    /// The output head: `lm_head` if the model has one, else the tied embeddings.
    pub fn output_head(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// The weights cut off from the gradient graph (dropout off): what evaluation runs while a
    /// method trains, sharing the same storage.
    pub fn for_inference(&self) -> Self {
        Self {
            embed: self.embed.detach(),
            layers: self
                .layers
                .iter()
                .map(LayerWeights::for_inference)
                .collect(),
            final_norm: self.final_norm.detach(),
            lm_head: self.lm_head.as_ref().map(Tensor::detach),
        }
    }
}

/// Rows of a q or k projection (or anything indexed by its outputs, such as a LoRA B factor)
/// from GGUF llama's interleaved-pair order to HF's `rotate_half` order: llama.cpp permuted each
/// head's rows at conversion, and this undoes it.
pub fn interleaved_to_half_rows(w: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    let hd = rows / heads;
    w.reshape((heads, hd / 2, 2, cols))?
        .transpose(1, 2)?
        .reshape((rows, cols))
}

fn check_shape(t: &Tensor, want: &[usize], what: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        t.dims() == want,
        "{what} has shape {:?}, expected {want:?} from the model config",
        t.dims()
    );
    Ok(())
}
