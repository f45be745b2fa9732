//! Checks shared by the real-model test files: each takes the engine under test.
//!
//! Reference: candle-transformers' quantized models, independent implementations of the
//! architectures, run on the same GGUF with `CANDLE_DEQUANTIZE_ALL=1` so both sides compute in f32
//! from the same dequantized weights. What remains is summation order (fused vs separate
//! projections, different attention kernels): measured 5.5e-5 (SmolLM2, 22 sentences) on logits
//! of magnitude ~20, so the bound [`MAX_ABS_DEVIATION`] leaves a wide margin and still fails on any
//! real mistake (a wrong rotary layout, mask or norm moves logits by whole units).

#![allow(dead_code)] // each test file uses the subset it needs

use bbt::{Engine, Prompt, Readout, Row, Segment};
use candle_core::{Device, Tensor};

/// Largest |logit difference| accepted against the reference implementation.
pub const MAX_ABS_DEVIATION: f32 = 2e-3;

/// Largest |logit difference| accepted against llama.cpp. Measured 0.60 (SmolLM2) and 0.68
/// (Gemma-3) over the 22 sentences: llama.cpp quantizes activations to 8 bits in its matmuls.
/// Real mistakes move logits by whole units (SiLU instead of Gemma's GELU shifts them by ~8), so
/// 1.0 separates the two.
pub const LLAMA_CPP_MAX_DEVIATION: f32 = 1.0;

/// Defines the tests every real model gets: `$engine` is an expression yielding `&Engine`,
/// `$fixtures` the file-name prefix of its fixtures in `tests/fixtures/`.
macro_rules! shared_real_model_tests {
    ($engine:expr, $fixtures:literal) => {
        #[test]
        fn prompt_of_token_embeddings_reproduces_token_logits() {
            common::prompt_of_token_embeddings_reproduces_token_logits($engine);
        }

        #[test]
        fn prefix_placement_shared_prefix_equals_one_at_a_time() {
            common::prefix_placement_shared_prefix_equals_one_at_a_time($engine);
        }

        #[test]
        fn suffix_placement_cached_texts_equal_one_at_a_time() {
            common::suffix_placement_cached_texts_equal_one_at_a_time($engine);
        }

        #[test]
        fn verbalizer_readout_equals_full_vocabulary_columns() {
            common::verbalizer_readout_equals_full_vocabulary_columns($engine);
        }

        #[test]
        fn tokenizer_matches_llama_cpp_reference_encodings() {
            common::check_tokenizer_fixture(
                $engine,
                include_str!(concat!("fixtures/", $fixtures, "_tokenizer.json")),
            );
        }

        #[test]
        fn agrees_with_llama_cpp() {
            common::check_against_llama_cpp(
                $engine,
                include_str!(concat!("fixtures/", $fixtures, "_llama_cpp_logits.json")),
                common::LLAMA_CPP_MAX_DEVIATION,
            );
        }
    };
}
pub(crate) use shared_real_model_tests;

/// Twenty-plus sentences of the kinds bbt scores (reviews, news, pairs) plus odd inputs.
pub const SENTENCES: &[&str] = &[
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

/// The catalogued model `name` in `dtype` on the CPU (fetched on first use).
pub fn load_cpu(name: &str, dtype: candle_core::DType) -> Engine {
    let path = bbt::assets::resolve_model(name).expect("fetch the model");
    Engine::load_path(&path, &Device::Cpu, dtype).expect("load the model")
}

pub fn tokens(engine: &Engine, text: &str) -> Vec<u32> {
    engine.tokenizer().encode(text).unwrap()
}

pub fn logits(
    engine: &Engine,
    rows: &[Row],
    prompts: &[Prompt],
    readout: &Readout,
) -> Vec<Vec<f32>> {
    engine
        .forward(rows, prompts, None, readout, false)
        .unwrap()
        .logits
        .to_vec2()
        .unwrap()
}

pub fn full_logits(engine: &Engine, rows: &[Row], prompts: &[Prompt]) -> Vec<Vec<f32>> {
    logits(engine, rows, prompts, &Readout::FullVocabulary)
}

pub fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap()
        .0
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// `[bos] text` as one token row.
pub fn text_row(engine: &Engine, text: &str) -> Row {
    let mut ids = engine.bos_segment();
    ids.extend(tokens(engine, text));
    Row::new(vec![Segment::Tokens(ids)])
}

/// The top-1 next token of `text`, decoded.
pub fn top1(engine: &Engine, text: &str) -> String {
    let logits = full_logits(engine, &[text_row(engine, text)], &[]);
    engine
        .tokenizer()
        .decode(&[argmax(&logits[0]) as u32])
        .unwrap()
}

/// All [`SENTENCES`] in one padded batch against a reference that runs each alone and returns
/// last-position logits: top-1 equal everywhere, max deviation under the bound. Returns it.
pub fn check_against_reference(
    engine: &Engine,
    mut reference: impl FnMut(&Tensor) -> Tensor,
) -> f32 {
    let rows: Vec<Row> = SENTENCES.iter().map(|s| text_row(engine, s)).collect();
    let ours = full_logits(engine, &rows, &[]);
    let mut worst = 0f32;
    for (i, row) in rows.iter().enumerate() {
        let Segment::Tokens(ids) = &row.segments[0] else {
            unreachable!()
        };
        let input = Tensor::new(ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let theirs: Vec<f32> = reference(&input).flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(
            argmax(&ours[i]),
            argmax(&theirs),
            "top-1 differs on {:?}",
            SENTENCES[i]
        );
        worst = worst.max(max_abs_diff(&ours[i], &theirs));
    }
    eprintln!(
        "max |logit difference| vs reference over {} sentences: {worst:.2e}",
        rows.len()
    );
    assert!(
        worst < MAX_ABS_DEVIATION,
        "max deviation {worst} exceeds {MAX_ABS_DEVIATION}"
    );
    worst
}

/// Loads the GGUF of `spec` for a reference implementation (dequantized to f32).
pub fn reference_gguf(
    spec: &bbt::assets::AssetSpec,
) -> (candle_core::quantized::gguf_file::Content, std::fs::File) {
    // candle's QMatMul reads this once per thread when the reference loads, on the calling test's
    // thread; the engine under test does not use QMatMul.
    std::env::set_var("CANDLE_DEQUANTIZE_ALL", "1");
    let path = bbt::assets::ensure(spec).unwrap();
    let mut file = std::fs::File::open(&path).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut file).unwrap();
    (content, file)
}

/// The tokenizer reproduces llama.cpp's encodings (fixture JSON) and decodes them back.
pub fn check_tokenizer_fixture(engine: &Engine, fixture_json: &str) {
    let fixture: serde_json::Value = serde_json::from_str(fixture_json).unwrap();
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
        assert_eq!(tokens(engine, text), want, "encoding of {text:?}");
        assert_eq!(
            engine.tokenizer().decode(&want).unwrap(),
            text,
            "round trip of {text:?}"
        );
    }
}

pub fn prompt_of_token_embeddings_reproduces_token_logits(engine: &Engine) {
    let prompt_text = tokens(engine, " Review of a film. Sentiment of the review:");
    let text = tokens(engine, " a gorgeous, witty, seductive movie. It was");
    let bos = engine.bos_segment();
    let as_tokens = Row::new(vec![
        Segment::Tokens(bos.clone()),
        Segment::Tokens(prompt_text.clone()),
        Segment::Tokens(text.clone()),
    ]);
    let prompt = Prompt::new(engine.embed_tokens(&prompt_text).unwrap());
    let as_prompt = Row::new(vec![
        Segment::Tokens(bos),
        Segment::Prompt(0),
        Segment::Tokens(text),
    ]);
    let a = full_logits(engine, &[as_tokens], &[]);
    let b = full_logits(engine, &[as_prompt], &[prompt]);
    assert!(max_abs_diff(&a[0], &b[0]) < 1e-4);
}

/// Two candidate prompts of length 5 from real token embeddings plus a small perturbation.
fn candidate_prompts(engine: &Engine) -> Vec<Prompt> {
    let seeds = [
        " Here is a movie review and its sentiment",
        " Is this review positive or negative?",
    ];
    seeds
        .iter()
        .map(|s| {
            let ids: Vec<u32> = tokens(engine, s).into_iter().take(5).collect();
            assert_eq!(ids.len(), 5);
            let e = engine.embed_tokens(&ids).unwrap();
            let noise = Tensor::randn(0f32, 0.01, e.dims(), &Device::Cpu).unwrap();
            Prompt::new((e + noise).unwrap())
        })
        .collect()
}

fn verbalizer(engine: &Engine) -> Readout {
    Readout::Tokens(vec![tokens(engine, " bad")[0], tokens(engine, " great")[0]])
}

fn examples(engine: &Engine) -> Vec<Vec<u32>> {
    [
        " the movie was a complete waste of time.",
        " a gorgeous, witty, seductive movie.",
        " bland.",
        " an utterly charming and hilarious film that reminded me why I love cinema.",
    ]
    .iter()
    .map(|s| tokens(engine, s))
    .collect()
}

pub fn prefix_placement_shared_prefix_equals_one_at_a_time(engine: &Engine) {
    let prompts = candidate_prompts(engine);
    let template = tokens(engine, " It was");
    let tails: Vec<Vec<u32>> = examples(engine)
        .into_iter()
        .map(|t| t.into_iter().chain(template.iter().copied()).collect())
        .collect();
    let shared: Vec<Vec<f32>> = engine
        .run_prefix(&prompts, &tails, &verbalizer(engine))
        .unwrap()
        .logits
        .to_vec2()
        .unwrap();
    let bos = engine.bos_segment();
    for (c, prompt) in prompts.iter().enumerate() {
        for (e, tail) in tails.iter().enumerate() {
            let alone = logits(
                engine,
                &[Row::new(vec![
                    Segment::Tokens(bos.clone()),
                    Segment::Prompt(0),
                    Segment::Tokens(tail.clone()),
                ])],
                std::slice::from_ref(prompt),
                &verbalizer(engine),
            );
            let d = max_abs_diff(&shared[c * tails.len() + e], &alone[0]);
            assert!(d < 1e-4, "candidate {c} example {e}: {d}");
        }
    }
}

/// Suffix placement: cached texts, and the uncached single pass, equal one row at a time.
pub fn suffix_placement_cached_texts_equal_one_at_a_time(engine: &Engine) {
    let prompts = candidate_prompts(engine);
    let texts = examples(engine);
    let template = tokens(engine, " It was");
    let tails = vec![template.clone(); texts.len()];
    let cache = engine.cache_texts(&texts).unwrap();
    // The same cache serves two different prompt populations.
    for round in 0..2 {
        let prompts: Vec<Prompt> = if round == 0 {
            prompts.clone()
        } else {
            prompts.iter().rev().cloned().collect()
        };
        let cached: Vec<Vec<f32>> = engine
            .run_suffix(&cache, &prompts, &tails, &verbalizer(engine))
            .unwrap()
            .logits
            .to_vec2()
            .unwrap();
        // The uncached single pass (used for test splits) gives the same logits.
        let inline: Vec<Vec<f32>> = engine
            .run_inline(&prompts, &texts, &tails, &verbalizer(engine))
            .unwrap()
            .logits
            .to_vec2()
            .unwrap();
        for (row, (a, b)) in cached.iter().zip(&inline).enumerate() {
            let d = max_abs_diff(a, b);
            assert!(d < 1e-4, "round {round} row {row}: inline vs cached {d}");
        }
        for (c, prompt) in prompts.iter().enumerate() {
            for (e, text) in texts.iter().enumerate() {
                let mut head = engine.bos_segment();
                head.extend(text);
                let alone = logits(
                    engine,
                    &[Row::new(vec![
                        Segment::Tokens(head),
                        Segment::Prompt(0),
                        Segment::Tokens(template.clone()),
                    ])],
                    std::slice::from_ref(prompt),
                    &verbalizer(engine),
                );
                let d = max_abs_diff(&cached[c * texts.len() + e], &alone[0]);
                assert!(d < 1e-4, "round {round} candidate {c} example {e}: {d}");
            }
        }
    }
}

pub fn verbalizer_readout_equals_full_vocabulary_columns(engine: &Engine) {
    let rows: Vec<Row> = SENTENCES[..4].iter().map(|s| text_row(engine, s)).collect();
    let ids = vec![
        tokens(engine, " Paris")[0],
        tokens(engine, " bad")[0],
        tokens(engine, " great")[0],
    ];
    let full = full_logits(engine, &rows, &[]);
    let restricted = logits(engine, &rows, &[], &Readout::Tokens(ids.clone()));
    for (f, r) in full.iter().zip(&restricted) {
        for (k, &id) in ids.iter().enumerate() {
            assert!((f[id as usize] - r[k]).abs() < 1e-4);
        }
    }
}

/// Agreement with llama.cpp's logits for [`SENTENCES`] (fixture from `make_logits_fixture.py`):
/// same input ids, top-1 equal on at least 20 sentences, and logits of llama.cpp's top-8 tokens
/// within `bound`. llama.cpp multiplies with quantized weights *and* 8-bit-quantized activations,
/// so unlike the f32 reference it deviates by tenths of a logit; near-ties may flip.
/// Returns (top-1 matches, max deviation).
pub fn check_against_llama_cpp(engine: &Engine, fixture_json: &str, bound: f32) -> (usize, f32) {
    let fixture: serde_json::Value = serde_json::from_str(fixture_json).unwrap();
    let fixture_rows = fixture["rows"].as_array().unwrap();
    assert_eq!(fixture_rows.len(), SENTENCES.len());
    let u32s = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let rows: Vec<Row> = SENTENCES.iter().map(|s| text_row(engine, s)).collect();
    let ours = full_logits(engine, &rows, &[]);
    let (mut matches, mut worst) = (0, 0f32);
    for ((row, fx), ours) in rows.iter().zip(fixture_rows).zip(&ours) {
        assert_eq!(
            row.segments[0],
            Segment::Tokens(u32s(&fx["ids"])),
            "input ids of {}",
            fx["text"]
        );
        let top = u32s(&fx["top"]);
        matches += usize::from(argmax(ours) as u32 == top[0]);
        for (id, l) in top.iter().zip(fx["logits"].as_array().unwrap()) {
            worst = worst.max((ours[*id as usize] - l.as_f64().unwrap() as f32).abs());
        }
    }
    eprintln!(
        "vs llama.cpp: top-1 equal on {matches}/{} sentences, max |logit difference| {worst:.3}",
        rows.len()
    );
    assert!(matches >= 20, "top-1 equal on only {matches} sentences");
    assert!(worst < bound, "max deviation {worst} exceeds {bound}");
    (matches, worst)
}
