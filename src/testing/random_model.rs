//! Small random-weight models, seeded, for fast tests of everything above the engine (server,
//! client) and of the engine's edge cases. Real results always come from real weights.

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::engine::Engine;
use crate::model::config::{Architecture, ModelConfig, RopeStyle};
use crate::model::linear::{BlockAdapters, Linear};
use crate::model::weights::{DecoderWeights, LayerWeights};
use crate::tokenizer::Tokenizer;

/// Vocabulary size of the tiny models: tokens `t0 .. t63`, `t1` being BOS.
pub const TINY_VOCAB: usize = 64;
/// BOS id of the tiny models.
pub const TINY_BOS: u32 = 1;

/// A 3-layer, 32-wide configuration of `architecture` (Gemma 3: a 4-token sliding window on
/// every layer), 40 positions.
pub fn tiny_config(architecture: Architecture) -> ModelConfig {
    let gemma = architecture == Architecture::Gemma3;
    let head_dim = if gemma { 16 } else { 8 };
    ModelConfig {
        architecture,
        num_layers: 3,
        hidden_size: 32,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim,
        ffn_size: 48,
        vocab_size: TINY_VOCAB,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        rope_theta_local: 1_000.0,
        rope_style: if gemma {
            RopeStyle::Half
        } else {
            RopeStyle::Interleaved
        },
        sliding_window: gemma.then_some(4),
        global_every: if gemma { 1000 } else { 1 },
        attention_scale: 1.0 / (head_dim as f64).sqrt(),
        max_position: 40,
    }
}

/// Seeded random f32 weights for `cfg` (norm weights near 1, matrices with std 0.2).
pub fn random_weights(cfg: &ModelConfig, seed: u64) -> DecoderWeights {
    random_weights_in(cfg, seed, DType::F32)
}

/// [`random_weights`] in `dtype` (f64 for finite-difference gradient checks).
pub fn random_weights_in(cfg: &ModelConfig, seed: u64, dtype: DType) -> DecoderWeights {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut randn = |dims: &[usize], mean: f32, std: f32| -> Tensor {
        let normal = Normal::new(mean, std).expect("valid std");
        let n: usize = dims.iter().product();
        let values: Vec<f32> = (0..n).map(|_| normal.sample(&mut rng)).collect();
        Tensor::from_vec(values, dims, &Device::Cpu)
            .and_then(|t| t.to_dtype(dtype))
            .expect("shape matches")
    };
    let (h, hd) = (cfg.hidden_size, cfg.head_dim);
    let qkv_rows = (cfg.num_heads + 2 * cfg.num_kv_heads) * hd;
    let gemma = cfg.architecture == Architecture::Gemma3;
    let layers = (0..cfg.num_layers)
        .map(|_| LayerWeights {
            attn_norm: randn(&[h], 1.0, 0.1),
            wqkv: Linear::new(randn(&[qkv_rows, h], 0.0, 0.2)),
            wo: Linear::new(randn(&[h, cfg.num_heads * hd], 0.0, 0.2)),
            ffn_norm: randn(&[h], 1.0, 0.1),
            w_gate_up: Linear::new(randn(&[2 * cfg.ffn_size, h], 0.0, 0.2)),
            w_down: Linear::new(randn(&[h, cfg.ffn_size], 0.0, 0.2)),
            q_norm: gemma.then(|| randn(&[hd], 1.0, 0.1)),
            k_norm: gemma.then(|| randn(&[hd], 1.0, 0.1)),
            post_attn_norm: gemma.then(|| randn(&[h], 1.0, 0.1)),
            post_ffn_norm: gemma.then(|| randn(&[h], 1.0, 0.1)),
            adapters: BlockAdapters::default(),
        })
        .collect();
    DecoderWeights {
        embed: randn(&[cfg.vocab_size, h], 0.0, 1.0),
        layers,
        final_norm: randn(&[h], 1.0, 0.1),
        lm_head: None,
    }
}

/// A whitespace-split word-level tokenizer over `t0 .. t{vocab-1}` (`t0` stands for unknown
/// words).
pub fn word_level_tokenizer(vocab: usize) -> tokenizers::Tokenizer {
    let map = (0..vocab as u32).map(|i| (format!("t{i}"), i)).collect();
    let model = tokenizers::models::wordlevel::WordLevel::builder()
        .vocab(map)
        .unk_token("t0".into())
        .build()
        .expect("valid word-level vocabulary");
    let mut tk = tokenizers::Tokenizer::new(model);
    tk.with_pre_tokenizer(Some(tokenizers::pre_tokenizers::whitespace::Whitespace {}));
    tk
}

/// A tiny random engine of `architecture` on the CPU in f32.
pub fn tiny_engine(architecture: Architecture, seed: u64) -> Engine {
    tiny_engine_in(architecture, seed, DType::F32)
}

/// A tiny random engine of `architecture` on the CPU in `dtype`.
pub fn tiny_engine_in(architecture: Architecture, seed: u64, dtype: DType) -> Engine {
    let cfg = tiny_config(architecture);
    let weights = random_weights_in(&cfg, seed, dtype);
    let tokenizer = Tokenizer::new(word_level_tokenizer(TINY_VOCAB), Some(TINY_BOS));
    Engine::from_parts(
        "tiny-random".into(),
        cfg,
        weights,
        tokenizer,
        &Device::Cpu,
        dtype,
    )
    .expect("tiny model parts are consistent")
}
