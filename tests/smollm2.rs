//! The engine on the real default model (SmolLM2-135M-Instruct Q4_1, fetched on first use).
//!
//! Reference: candle-transformers' `quantized_llama`, an independent implementation of the
//! architecture, run on the same GGUF with `CANDLE_DEQUANTIZE_ALL=1` so both sides compute in f32
//! from the same dequantized weights. What remains is summation order (fused vs separate
//! projections, different attention kernels): measured 5.5e-5 over the 22 sentences below, on
//! logits of magnitude ~20,
//! so the bound below (2e-3 absolute) leaves a wide margin and still fails on any real mistake
//! (a wrong rotary layout, mask or norm moves logits by whole units).

use std::sync::OnceLock;

use bbt::{Engine, Prompt, Readout, Row, Segment};
use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};

const MAX_ABS_DEVIATION: f32 = 2e-3;

/// Twenty-plus sentences of the kinds bbt scores (reviews, news, pairs) plus odd inputs.
const SENTENCES: &[&str] = &[
    "The capital of France is",
    "the movie was a complete waste of time . It was",
    "a gorgeous , witty , seductive movie . It was",
    "Wall St. Bears Claw Back Into the Black (Reuters) Reuters - Short-sellers",
    "Once upon a time, there was a little",
    "def fibonacci(n):\n    if n <",
    "1, 2, 3, 4, 5,",
    "Water boils at 100 degrees",
    "I loved every minute of this film, the acting was",
    "The service at this restaurant was terrible and the food",
    "Question: Is the sky blue? Answer:",
    "The quick brown fox jumps over the lazy",
    "Barack Obama was born in",
    "The chemical symbol for gold is",
    "In 1492, Columbus sailed",
    "Apple Inc. reported quarterly earnings of",
    "The Eiffel Tower is located in",
    "She opened the door and saw",
    "Résumé: naïve café in São Paulo —",
    "日本の首都は",
    "Premise: A man is playing guitar. Hypothesis: A man plays music ?",
    "   leading spaces and\ttabs\n\nnewlines",
];

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| Engine::load("smollm2-135m", &Device::Cpu).expect("load SmolLM2"))
}

fn tokens(text: &str) -> Vec<u32> {
    engine().tokenizer().encode(text).unwrap()
}

fn logits(rows: &[Row], prompts: &[Prompt], readout: &Readout) -> Vec<Vec<f32>> {
    engine()
        .forward(rows, prompts, None, readout, false)
        .unwrap()
        .logits
        .to_vec2()
        .unwrap()
}

fn full_logits(rows: &[Row], prompts: &[Prompt]) -> Vec<Vec<f32>> {
    logits(rows, prompts, &Readout::FullVocabulary)
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap()
        .0
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn text_row(text: &str) -> Row {
    let mut ids = engine().bos_segment();
    ids.extend(tokens(text));
    Row::new(vec![Segment::Tokens(ids)])
}

#[test]
fn capital_of_france_is_paris() {
    let logits = full_logits(&[text_row("The capital of France is")], &[]);
    let top = argmax(&logits[0]) as u32;
    assert_eq!(engine().tokenizer().decode(&[top]).unwrap(), " Paris");
}

#[test]
fn agrees_with_candle_transformers_reference() {
    // SAFETY-free: the variable is read once per thread by candle's QMatMul when the reference
    // loads, on this test's thread; the engine under test does not use QMatMul.
    std::env::set_var("CANDLE_DEQUANTIZE_ALL", "1");
    let path = bbt::assets::ensure(&bbt::assets::SMOLLM2_135M).unwrap();
    let mut file = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let mut reference = candle_transformers::models::quantized_llama::ModelWeights::from_gguf(
        content,
        &mut file,
        &Device::Cpu,
    )
    .unwrap();
    let rows: Vec<Row> = SENTENCES.iter().map(|s| text_row(s)).collect();
    // All sentences in one padded batch: also checks padding against one-at-a-time references.
    let ours = full_logits(&rows, &[]);
    let mut worst = 0f32;
    for (i, row) in rows.iter().enumerate() {
        let Segment::Tokens(ids) = &row.segments[0] else {
            unreachable!()
        };
        let input = Tensor::new(ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let theirs: Vec<f32> = reference
            .forward(&input, 0)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(
            argmax(&ours[i]),
            argmax(&theirs),
            "top-1 differs on {:?}",
            SENTENCES[i]
        );
        worst = worst.max(max_abs_diff(&ours[i], &theirs));
    }
    eprintln!(
        "max |logit difference| vs candle-transformers over {} sentences: {worst:.2e}",
        rows.len()
    );
    assert!(
        worst < MAX_ABS_DEVIATION,
        "max deviation {worst} exceeds {MAX_ABS_DEVIATION}"
    );
}

#[test]
fn prompt_of_token_embeddings_reproduces_token_logits() {
    let prompt_text = tokens(" Review of a film. Sentiment of the review:");
    let text = tokens(" a gorgeous, witty, seductive movie. It was");
    let bos = engine().bos_segment();
    let as_tokens = Row::new(vec![
        Segment::Tokens(bos.clone()),
        Segment::Tokens(prompt_text.clone()),
        Segment::Tokens(text.clone()),
    ]);
    let prompt = Prompt::new(engine().embed_tokens(&prompt_text).unwrap());
    let as_prompt = Row::new(vec![
        Segment::Tokens(bos),
        Segment::Prompt(0),
        Segment::Tokens(text),
    ]);
    let a = full_logits(&[as_tokens], &[]);
    let b = full_logits(&[as_prompt], &[prompt]);
    assert!(max_abs_diff(&a[0], &b[0]) < 1e-4);
}

/// Two candidate prompts of length 5 from real token embeddings plus a small perturbation.
fn candidate_prompts() -> Vec<Prompt> {
    let seeds = [
        " Here is a movie review and its sentiment",
        " Is this review positive or negative?",
    ];
    seeds
        .iter()
        .map(|s| {
            let ids: Vec<u32> = tokens(s).into_iter().take(5).collect();
            assert_eq!(ids.len(), 5);
            let e = engine().embed_tokens(&ids).unwrap();
            let noise = Tensor::randn(0f32, 0.01, e.dims(), &Device::Cpu).unwrap();
            Prompt::new((e + noise).unwrap())
        })
        .collect()
}

fn verbalizer() -> Readout {
    Readout::Tokens(vec![tokens(" bad")[0], tokens(" great")[0]])
}

fn examples() -> Vec<Vec<u32>> {
    [
        " the movie was a complete waste of time.",
        " a gorgeous, witty, seductive movie.",
        " bland.",
        " an utterly charming and hilarious film that reminded me why I love cinema.",
    ]
    .iter()
    .map(|s| tokens(s))
    .collect()
}

#[test]
fn prefix_placement_shared_prefix_equals_one_at_a_time() {
    let prompts = candidate_prompts();
    let template = tokens(" It was");
    let tails: Vec<Vec<u32>> = examples()
        .into_iter()
        .map(|t| t.into_iter().chain(template.iter().copied()).collect())
        .collect();
    let shared: Vec<Vec<f32>> = engine()
        .score_prefix(&prompts, &tails, &verbalizer())
        .unwrap()
        .logits
        .to_vec2()
        .unwrap();
    let bos = engine().bos_segment();
    for (c, prompt) in prompts.iter().enumerate() {
        for (e, tail) in tails.iter().enumerate() {
            let alone = logits(
                &[Row::new(vec![
                    Segment::Tokens(bos.clone()),
                    Segment::Prompt(0),
                    Segment::Tokens(tail.clone()),
                ])],
                std::slice::from_ref(prompt),
                &verbalizer(),
            );
            let d = max_abs_diff(&shared[c * tails.len() + e], &alone[0]);
            assert!(d < 1e-4, "candidate {c} example {e}: {d}");
        }
    }
}

#[test]
fn suffix_placement_cached_texts_equal_one_at_a_time() {
    let prompts = candidate_prompts();
    let texts = examples();
    let template = tokens(" It was");
    let tails = vec![template.clone(); texts.len()];
    let cache = engine().cache_texts(&texts).unwrap();
    // The same cache serves two different prompt populations.
    for round in 0..2 {
        let prompts: Vec<Prompt> = if round == 0 {
            prompts.clone()
        } else {
            prompts.iter().rev().cloned().collect()
        };
        let cached: Vec<Vec<f32>> = engine()
            .score_suffix(&cache, &prompts, &tails, &verbalizer())
            .unwrap()
            .logits
            .to_vec2()
            .unwrap();
        for (c, prompt) in prompts.iter().enumerate() {
            for (e, text) in texts.iter().enumerate() {
                let mut head = engine().bos_segment();
                head.extend(text);
                let alone = logits(
                    &[Row::new(vec![
                        Segment::Tokens(head),
                        Segment::Prompt(0),
                        Segment::Tokens(template.clone()),
                    ])],
                    std::slice::from_ref(prompt),
                    &verbalizer(),
                );
                let d = max_abs_diff(&cached[c * texts.len() + e], &alone[0]);
                assert!(d < 1e-4, "round {round} candidate {c} example {e}: {d}");
            }
        }
    }
}

#[test]
fn verbalizer_readout_equals_full_vocabulary_columns() {
    let rows: Vec<Row> = SENTENCES[..4].iter().map(|s| text_row(s)).collect();
    let ids = vec![tokens(" Paris")[0], tokens(" bad")[0], tokens(" great")[0]];
    let full = full_logits(&rows, &[]);
    let restricted = logits(&rows, &[], &Readout::Tokens(ids.clone()));
    for (f, r) in full.iter().zip(&restricted) {
        for (k, &id) in ids.iter().enumerate() {
            assert!((f[id as usize] - r[k]).abs() < 1e-4);
        }
    }
}

#[test]
fn tokenizer_matches_llama_cpp_reference_encodings() {
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/smollm2_tokenizer.json")).unwrap();
    let encodings = fixture["encodings"].as_array().unwrap();
    assert!(encodings.len() >= 20);
    for e in encodings {
        let text = e["text"].as_str().unwrap();
        let want: Vec<u32> = e["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(tokens(text), want, "encoding of {text:?}");
        assert_eq!(
            engine().tokenizer().decode(&want).unwrap(),
            text,
            "round trip of {text:?}"
        );
    }
}
