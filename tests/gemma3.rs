//! The engine on Gemma-3-270M base (Q4_K_M GGUF, fetched on first use).
//!
//! candle-transformers' `quantized_gemma3` is not a usable reference here: its MLP applies SiLU
//! where Gemma uses GELU (tanh). With our activation switched to SiLU the two agree to 7e-5 over
//! the 22 sentences, which checks everything else; with GELU we compare against llama.cpp.

mod common;

use std::sync::OnceLock;

use bbt::Engine;
use candle_core::Device;

/// Measured 0.60 (SmolLM2) and 0.68 (Gemma-3) over the 22 sentences: llama.cpp quantizes
/// activations to 8 bits in its matmuls. Real mistakes move logits by whole units (using SiLU
/// instead of Gemma's GELU shifts them by ~8), so 1.0 separates the two.
const LLAMA_CPP_MAX_DEVIATION: f32 = 1.0;

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| Engine::load("gemma3-270m", &Device::Cpu).expect("load Gemma-3"))
}

#[test]
fn capital_of_france_is_paris() {
    // The base model continues "The capital of France is" with " the" (llama.cpp agrees).
    assert_eq!(
        common::top1(engine(), "The capital of France is the city of"),
        " Paris"
    );
}

#[test]
fn prompt_of_token_embeddings_reproduces_token_logits() {
    common::prompt_of_token_embeddings_reproduces_token_logits(engine());
}

#[test]
fn prefix_placement_shared_prefix_equals_one_at_a_time() {
    common::prefix_placement_shared_prefix_equals_one_at_a_time(engine());
}

#[test]
fn suffix_placement_cached_texts_equal_one_at_a_time() {
    common::suffix_placement_cached_texts_equal_one_at_a_time(engine());
}

#[test]
fn verbalizer_readout_equals_full_vocabulary_columns() {
    common::verbalizer_readout_equals_full_vocabulary_columns(engine());
}

#[test]
fn tokenizer_matches_llama_cpp_reference_encodings() {
    common::check_tokenizer_fixture(engine(), include_str!("fixtures/gemma3_tokenizer.json"));
}

#[test]
fn agrees_with_llama_cpp() {
    common::check_against_llama_cpp(
        engine(),
        include_str!("fixtures/gemma3_llama_cpp_logits.json"),
        LLAMA_CPP_MAX_DEVIATION,
    );
}
