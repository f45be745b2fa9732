//! The engine on the real default model (SmolLM2-135M-Instruct, fetched on first use).

use std::sync::OnceLock;

use bbt::{Engine, Prompt, Readout, Row, Segment};
use candle_core::{Device, Tensor, D};

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| Engine::load("smollm2-135m", &Device::Cpu).expect("load SmolLM2"))
}

fn tokens(text: &str) -> Vec<u32> {
    engine().tokenizer().encode(text).unwrap()
}

fn full_logits(rows: &[Row], prompts: &[Prompt]) -> Vec<Vec<f32>> {
    engine()
        .forward(rows, prompts, None, &Readout::FullVocabulary, false)
        .unwrap()
        .logits
        .to_vec2()
        .unwrap()
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap()
        .0
}

#[test]
fn capital_of_france_is_paris() {
    let ids = tokens("The capital of France is");
    let logits = full_logits(&[Row::new(vec![Segment::Tokens(ids)])], &[]);
    let top = argmax(&logits[0]) as u32;
    assert_eq!(engine().tokenizer().decode(&[top]).unwrap(), " Paris");
}
