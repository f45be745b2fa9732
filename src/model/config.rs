//! The hyper-parameters of a decoder-only transformer, read from GGUF metadata or `config.json`.

use candle_core::quantized::gguf_file;
use serde::{Deserialize, Serialize};

/// Model families the engine runs. Encoder MLMs (BERT/RoBERTa, prediction at the mask) will be
/// another variant behind the same [`crate::engine::Engine`] interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    /// Llama family (Llama, SmolLM2, Mistral-style): SiLU-gated MLP, RMSNorm, rotary positions.
    Llama,
    /// Gemma 3: GELU-gated MLP, sandwich norms, q/k norms, scaled embeddings, local/global layers.
    Gemma3,
}

/// How rotary embeddings pair up the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RopeStyle {
    /// Adjacent pairs (2i, 2i+1): GGUF llama files, whose q/k rows llama.cpp permuted at conversion.
    Interleaved,
    /// First half with second half (GPT-NeoX / HF `rotate_half`).
    Half,
}

/// Everything the forward needs to know about a model's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub num_layers: usize,
    pub hidden_size: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub ffn_size: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f64,
    /// Rotary base of global-attention layers.
    pub rope_theta: f64,
    /// Rotary base of sliding-window layers (Gemma 3); equals `rope_theta` otherwise.
    pub rope_theta_local: f64,
    pub rope_style: RopeStyle,
    /// Sliding-window width of local layers, if the model has them.
    pub sliding_window: Option<usize>,
    /// Every `global_every`-th layer (1-based) attends globally; the others use the window.
    pub global_every: usize,
    /// Scale applied to queries before the dot product (1/sqrt(head_dim) unless the model says).
    pub attention_scale: f64,
    /// Maximum sequence length the model was trained for.
    pub max_position: usize,
}

impl ModelConfig {
    /// Whether layer `index` (0-based) is a sliding-window layer.
    pub fn is_local_layer(&self, index: usize) -> bool {
        self.sliding_window.is_some() && (index + 1) % self.global_every != 0
    }

    /// Reads the configuration from a GGUF file's metadata.
    pub fn from_gguf(content: &gguf_file::Content) -> anyhow::Result<Self> {
        let md = &content.metadata;
        let arch_name = md
            .get("general.architecture")
            .ok_or_else(|| anyhow::anyhow!("GGUF has no general.architecture"))?
            .to_string()?
            .clone();
        let architecture = match arch_name.as_str() {
            "llama" => Architecture::Llama,
            "gemma3" => Architecture::Gemma3,
            other => {
                anyhow::bail!("unsupported GGUF architecture `{other}` (supported: llama, gemma3)")
            }
        };
        let get = |key: &str| {
            md.get(&format!("{arch_name}.{key}"))
                .ok_or_else(|| anyhow::anyhow!("GGUF metadata lacks {arch_name}.{key}"))
        };
        let get_usize = |key: &str| -> anyhow::Result<usize> { Ok(get(key)?.to_u32()? as usize) };
        let num_heads = get_usize("attention.head_count")?;
        let hidden_size = get_usize("embedding_length")?;
        let head_dim = get_usize("attention.key_length").unwrap_or(hidden_size / num_heads);
        let vocab_size = match get_usize("vocab_size") {
            Ok(v) => v,
            Err(_) => md
                .get("tokenizer.ggml.tokens")
                .ok_or_else(|| anyhow::anyhow!("GGUF has neither vocab_size nor tokens"))?
                .to_vec()?
                .len(),
        };
        let rope_theta = get("rope.freq_base")
            .and_then(|v| Ok(v.to_f32()?))
            .unwrap_or(10_000.0) as f64;
        let gemma = architecture == Architecture::Gemma3;
        let sliding_window = if gemma {
            Some(get_usize("attention.sliding_window")?)
        } else {
            None
        };
        Ok(Self {
            architecture,
            num_layers: get_usize("block_count")?,
            hidden_size,
            num_heads,
            num_kv_heads: get_usize("attention.head_count_kv").unwrap_or(num_heads),
            head_dim,
            ffn_size: get_usize("feed_forward_length")?,
            vocab_size,
            rms_norm_eps: get("attention.layer_norm_rms_epsilon")?.to_f32()? as f64,
            rope_theta: if gemma && rope_theta == 10_000.0 {
                1_000_000.0
            } else {
                rope_theta
            },
            rope_theta_local: if gemma {
                get("rope.local_freq_base")
                    .and_then(|v| Ok(v.to_f32()?))
                    .unwrap_or(10_000.0) as f64
            } else {
                rope_theta
            },
            rope_style: if gemma {
                RopeStyle::Half
            } else {
                RopeStyle::Interleaved
            },
            sliding_window,
            global_every: if gemma { 6 } else { 1 },
            attention_scale: 1.0 / (head_dim as f64).sqrt(),
            max_position: get_usize("context_length").unwrap_or(2048),
        })
    }
}

/// The subset of a Hugging Face `config.json` that llama-family checkpoints use.
#[derive(Debug, Deserialize)]
pub struct HfLlamaConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_attention_heads: usize,
    pub num_hidden_layers: usize,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub vocab_size: usize,
    pub rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default = "default_max_position")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    pub model_type: Option<String>,
}

fn default_rope_theta() -> f64 {
    10_000.0
}

fn default_max_position() -> usize {
    2048
}

impl HfLlamaConfig {
    /// Converts to the engine's configuration; HF checkpoints use the `rotate_half` rotary layout.
    pub fn to_model_config(&self) -> anyhow::Result<ModelConfig> {
        if let Some(t) = &self.model_type {
            anyhow::ensure!(
                matches!(t.as_str(), "llama" | "mistral"),
                "config.json model_type `{t}` is not supported for directories (supported: llama, mistral)"
            );
        }
        let head_dim = self
            .head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads);
        Ok(ModelConfig {
            architecture: Architecture::Llama,
            num_layers: self.num_hidden_layers,
            hidden_size: self.hidden_size,
            num_heads: self.num_attention_heads,
            num_kv_heads: self.num_key_value_heads.unwrap_or(self.num_attention_heads),
            head_dim,
            ffn_size: self.intermediate_size,
            vocab_size: self.vocab_size,
            rms_norm_eps: self.rms_norm_eps,
            rope_theta: self.rope_theta,
            rope_theta_local: self.rope_theta,
            rope_style: RopeStyle::Half,
            sliding_window: None,
            global_every: 1,
            attention_scale: 1.0 / (head_dim as f64).sqrt(),
            max_position: self.max_position_embeddings,
        })
    }
}
