//! The engine on Gemma-3-270M base (Q4_K_M GGUF, fetched on first use).
//!
//! candle-transformers' `quantized_gemma3` is not a usable reference here: its MLP applies SiLU
//! where Gemma uses GELU (tanh). With our activation switched to SiLU the two agree to 7e-5 over
//! the 22 sentences, which checks everything else; with GELU we compare against llama.cpp.

mod common;

use std::sync::OnceLock;

use bbt::Engine;

/// The model in f32, whatever this CPU's default dtype: the reference implementations and the
/// exactness checks below are f32 (the bf16 path has its own comparisons).
fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| common::load_cpu("gemma3-270m", candle_core::DType::F32))
}

#[test]
fn capital_of_france_is_paris() {
    // The base model continues "The capital of France is" with " the" (llama.cpp agrees).
    assert_eq!(
        common::top1(engine(), "The capital of France is the city of"),
        " Paris"
    );
}

common::shared_real_model_tests!(engine(), "gemma3");
