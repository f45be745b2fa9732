//! The engine on the real default model (SmolLM2-135M-Instruct Q4_1, fetched on first use).

mod common;

use std::sync::OnceLock;

use bbt::Engine;
use candle_core::Device;

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| Engine::load("smollm2-135m", &Device::Cpu).expect("load SmolLM2"))
}

#[test]
fn capital_of_france_is_paris() {
    assert_eq!(common::top1(engine(), "The capital of France is"), " Paris");
}

#[test]
fn agrees_with_candle_transformers_quantized_llama() {
    let (content, mut file) = common::reference_gguf(&bbt::assets::SMOLLM2_135M);
    let mut reference = candle_transformers::models::quantized_llama::ModelWeights::from_gguf(
        content,
        &mut file,
        &Device::Cpu,
    )
    .unwrap();
    common::check_against_reference(engine(), |ids| reference.forward(ids, 0).unwrap());
}

common::shared_real_model_tests!(engine(), "smollm2");
