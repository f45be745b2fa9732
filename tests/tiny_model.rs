//! Edge cases of the engine on small random-weight models built here (milliseconds per test).

use bbt::model::config::{Architecture, ModelConfig};
use bbt::testing::random_model as random;
use bbt::tokenizer::Tokenizer;
use bbt::{Engine, Prompt, Readout, Row, Segment};
use candle_core::{DType, Device, Tensor};

const VOCAB: usize = random::TINY_VOCAB;
const BOS: u32 = random::TINY_BOS;

fn config(architecture: Architecture) -> ModelConfig {
    random::tiny_config(architecture)
}

fn random_weights(cfg: &ModelConfig) -> bbt::model::weights::DecoderWeights {
    random::random_weights(cfg, 7)
}

fn word_level_tokenizer() -> tokenizers::Tokenizer {
    random::word_level_tokenizer(VOCAB)
}

fn tiny_engine(architecture: Architecture) -> Engine {
    random::tiny_engine(architecture, 7)
}

fn randn(dims: &[usize], std: f64) -> Tensor {
    Tensor::randn(0f32, std as f32, dims, &Device::Cpu).unwrap()
}

fn ids(seed: u32, n: usize) -> Vec<u32> {
    (0..n as u32)
        .map(|i| 3 + (seed * 7 + i * 13) % (VOCAB as u32 - 3))
        .collect()
}

fn run(engine: &Engine, rows: &[Row], prompts: &[Prompt]) -> Vec<Vec<f32>> {
    engine
        .forward(rows, prompts, None, &Readout::FullVocabulary, false)
        .unwrap()
        .logits
        .to_vec2()
        .unwrap()
}

fn assert_close(a: &[Vec<f32>], b: &[Vec<f32>], tol: f32) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        for (p, q) in x.iter().zip(y) {
            assert!((p - q).abs() <= tol, "{p} vs {q}");
        }
    }
}

fn prompt(len: usize, hidden: usize) -> Prompt {
    Prompt::new(randn(&[len, hidden], 1.0))
}

#[test]
fn ragged_batch_equals_one_at_a_time_for_both_architectures() {
    for arch in [Architecture::Llama, Architecture::Gemma3] {
        let engine = tiny_engine(arch);
        let prompts = vec![prompt(3, 32), prompt(2, 32)];
        let rows: Vec<Row> = (0..6)
            .map(|i| {
                let mut segs = vec![Segment::Tokens(vec![BOS])];
                if i % 2 == 0 {
                    segs.push(Segment::Prompt(i % 4 / 2));
                }
                segs.push(Segment::Tokens(ids(i as u32, 1 + 3 * i)));
                Row::new(segs)
            })
            .collect();
        let batched = run(&engine, &rows, &prompts);
        for (i, row) in rows.iter().enumerate() {
            let alone = run(&engine, std::slice::from_ref(row), &prompts);
            assert_close(&batched[i..i + 1], &alone, 1e-4);
        }
    }
}

#[test]
fn empty_text_works_in_both_placements() {
    let engine = tiny_engine(Architecture::Llama);
    let prompts = vec![prompt(4, 32)];
    let template = ids(9, 2);
    // Prefix placement with an empty text: only the template follows the prompt.
    let prefix = engine
        .run_prefix(
            &prompts,
            std::slice::from_ref(&template),
            &Readout::FullVocabulary,
        )
        .unwrap();
    let alone = run(
        &engine,
        &[Row::new(vec![
            Segment::Tokens(vec![BOS]),
            Segment::Prompt(0),
            Segment::Tokens(template.clone()),
        ])],
        &prompts,
    );
    assert_close(&prefix.logits.to_vec2().unwrap(), &alone, 1e-4);
    // Suffix placement: the cache of an empty text holds BOS alone.
    let cache = engine.cache_texts(&[vec![], ids(1, 5)]).unwrap();
    assert_eq!(cache.lengths, vec![1, 6]);
    let suffix = engine
        .run_suffix(
            &cache,
            &prompts,
            &[template.clone(), template.clone()],
            &Readout::FullVocabulary,
        )
        .unwrap();
    assert_close(&suffix.logits.to_vec2().unwrap()[..1], &alone, 1e-4);
    // Nothing after the prompt to predict from is an error, not a panic.
    let err = engine.run_prefix(&prompts, &[vec![]], &Readout::FullVocabulary);
    assert!(err
        .unwrap_err()
        .to_string()
        .contains("at least one token after the prompt"));
}

#[test]
fn zero_length_prompt_equals_no_prompt() {
    let engine = tiny_engine(Architecture::Llama);
    let empty = vec![prompt(0, 32)];
    let tail = ids(4, 6);
    let plain = run(
        &engine,
        &[Row::new(vec![Segment::Tokens(
            [vec![BOS], tail.clone()].concat(),
        )])],
        &[],
    );
    let prefix = engine
        .run_prefix(
            &empty,
            std::slice::from_ref(&tail),
            &Readout::FullVocabulary,
        )
        .unwrap();
    assert_close(&prefix.logits.to_vec2().unwrap(), &plain, 1e-4);
    let cache = engine.cache_texts(&[tail[..3].to_vec()]).unwrap();
    let suffix = engine
        .run_suffix(
            &cache,
            &empty,
            &[tail[3..].to_vec()],
            &Readout::FullVocabulary,
        )
        .unwrap();
    assert_close(&suffix.logits.to_vec2().unwrap(), &plain, 1e-4);
}

#[test]
fn maximum_length_is_accepted_and_one_more_is_a_clear_error() {
    let engine = tiny_engine(Architecture::Llama);
    let max = engine.max_positions();
    let at_max = Row::new(vec![Segment::Tokens(ids(2, max))]);
    assert_eq!(run(&engine, &[at_max], &[]).len(), 1);
    let over = Row::new(vec![Segment::Tokens(ids(2, max + 1))]);
    let err = engine
        .forward(&[over], &[], None, &Readout::FullVocabulary, false)
        .expect_err("too long must fail");
    assert!(
        err.to_string().contains("exceeds the model's maximum"),
        "{err}"
    );
    // Past plus new positions count together.
    let cache = engine.cache_texts(&[ids(3, max - 2)]).unwrap();
    let err = engine
        .run_suffix(
            &cache,
            &[prompt(2, 32)],
            &[vec![5]],
            &Readout::FullVocabulary,
        )
        .expect_err("past + new beyond the maximum must fail");
    assert!(
        err.to_string().contains("exceeds the model's maximum"),
        "{err}"
    );
}

#[test]
fn deep_prompt_at_layer_zero_equals_shifting_the_prompt() {
    let engine = tiny_engine(Architecture::Llama);
    let base = randn(&[3, 32], 1.0);
    let shift = randn(&[3, 32], 0.5);
    let mut deep = Tensor::zeros((3, 3, 32), DType::F32, &Device::Cpu).unwrap();
    deep = deep
        .slice_assign(&[0..1, 0..3, 0..32], &shift.unsqueeze(0).unwrap())
        .unwrap();
    let row = Row::new(vec![
        Segment::Tokens(vec![BOS]),
        Segment::Prompt(0),
        Segment::Tokens(ids(5, 4)),
    ]);
    let with_deep = run(
        &engine,
        std::slice::from_ref(&row),
        &[Prompt {
            embeddings: base.clone(),
            deep: Some(deep.clone()),
        }],
    );
    let shifted = run(
        &engine,
        std::slice::from_ref(&row),
        &[Prompt::new((&base + &shift).unwrap())],
    );
    assert_close(&with_deep, &shifted, 1e-4);
    // Vectors at a later layer change the output too (they are not ignored).
    let later = deep.roll(1, 0).unwrap();
    let moved = run(
        &engine,
        &[row],
        &[Prompt {
            embeddings: base,
            deep: Some(later),
        }],
    );
    assert!(moved[0]
        .iter()
        .zip(&with_deep[0])
        .any(|(a, b)| (a - b).abs() > 1e-3));
}

/// BBTv2 in the suffix placement: deep vectors at prompt positions after the cached texts. The
/// texts' keys/values do not depend on the prompt, so the cached pass must equal each row run
/// whole on its own, for both architectures and for several candidates at once.
#[test]
fn deep_prompts_after_cached_texts_equal_one_at_a_time() {
    for architecture in [Architecture::Llama, Architecture::Gemma3] {
        let engine = tiny_engine(architecture);
        let layers = engine.config().num_layers;
        let hidden = engine.config().hidden_size;
        let prompts: Vec<Prompt> = (0..2)
            .map(|_| Prompt {
                embeddings: randn(&[3, hidden], 1.0),
                deep: Some(randn(&[layers, 3, hidden], 0.5)),
            })
            .collect();
        let texts = vec![ids(1, 5), ids(2, 3), ids(3, 7)];
        let tails = vec![ids(4, 2), ids(5, 2), ids(6, 3)];
        let cache = engine.cache_texts(&texts).unwrap();
        let cached = engine
            .run_suffix(&cache, &prompts, &tails, &Readout::FullVocabulary)
            .unwrap()
            .logits
            .to_vec2()
            .unwrap();
        let mut alone = Vec::new();
        for p in &prompts {
            for (text, tail) in texts.iter().zip(&tails) {
                let row = Row::new(vec![
                    Segment::Tokens([BOS].iter().chain(text).copied().collect()),
                    Segment::Prompt(0),
                    Segment::Tokens(tail.clone()),
                ]);
                alone.extend(run(&engine, &[row], std::slice::from_ref(p)));
            }
        }
        assert_close(&cached, &alone, 1e-4);
        // The deep vectors matter here (they are not dropped on the cached path).
        let shallow: Vec<Prompt> = prompts
            .iter()
            .map(|p| Prompt::new(p.embeddings.clone()))
            .collect();
        let without: Vec<Vec<f32>> = engine
            .run_suffix(&cache, &shallow, &tails, &Readout::FullVocabulary)
            .unwrap()
            .logits
            .to_vec2()
            .unwrap();
        assert!(without[0]
            .iter()
            .zip(&cached[0])
            .any(|(a, b)| (a - b).abs() > 1e-3));
    }
}

#[test]
fn sliding_window_limits_what_local_layers_see() {
    // Window 4, 3 local layers: the last position's receptive field is 3 * (4 - 1) = 9 tokens.
    let engine = tiny_engine(Architecture::Gemma3);
    let mut a = ids(6, 20);
    let last = |row: &Vec<u32>| {
        run(
            &engine,
            &[Row::new(vec![Segment::Tokens(row.clone())])],
            &[],
        )
    };
    let reference = last(&a);
    a[5] = (a[5] + 1) % VOCAB as u32; // 14 positions back: outside the receptive field
    assert_close(&last(&a), &reference, 1e-5);
    a[15] = (a[15] + 1) % VOCAB as u32; // 4 positions back: inside it
    assert!(last(&a)[0]
        .iter()
        .zip(&reference[0])
        .any(|(x, y)| (x - y).abs() > 1e-4));
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let engine = tiny_engine(Architecture::Llama);
    let fwd = |rows: &[Row], prompts: &[Prompt], readout: &Readout| {
        engine
            .forward(rows, prompts, None, readout, false)
            .err()
            .map(|e| e.to_string())
    };
    let row = Row::new(vec![Segment::Tokens(vec![BOS, 5])]);
    let oov = Row::new(vec![Segment::Tokens(vec![BOS, VOCAB as u32])]);
    assert!(fwd(&[oov], &[], &Readout::FullVocabulary)
        .unwrap()
        .contains("outside the vocabulary"));
    assert!(
        fwd(std::slice::from_ref(&row), &[], &Readout::Tokens(vec![999]))
            .unwrap()
            .contains("outside the vocabulary")
    );
    assert!(fwd(&[], &[], &Readout::FullVocabulary)
        .unwrap()
        .contains("no rows"));
    let empty = Row::new(vec![Segment::Tokens(vec![])]);
    assert!(fwd(&[empty], &[], &Readout::FullVocabulary)
        .unwrap()
        .contains("no tokens"));
    let uses_prompt = Row::new(vec![Segment::Tokens(vec![BOS]), Segment::Prompt(3)]);
    assert!(fwd(&[uses_prompt], &[], &Readout::FullVocabulary)
        .unwrap()
        .contains("prompt 3"));
    let wrong_width = Prompt::new(randn(&[2, 31], 1.0));
    let uses_prompt = Row::new(vec![Segment::Tokens(vec![BOS]), Segment::Prompt(0)]);
    assert!(
        fwd(&[uses_prompt], &[wrong_width], &Readout::FullVocabulary)
            .unwrap()
            .contains("must be [L, 32]")
    );
}

#[test]
fn features_are_the_final_hidden_state_behind_the_logits() {
    let engine = tiny_engine(Architecture::Llama);
    let rows = vec![
        Row::new(vec![Segment::Tokens(ids(8, 5))]),
        Row::new(vec![Segment::Tokens(ids(9, 2))]),
    ];
    let out = engine
        .forward(&rows, &[], None, &Readout::Tokens(vec![4, 7]), true)
        .unwrap();
    let features = out.features.unwrap();
    assert_eq!(features.dims(), &[2, 32]);
    let embed = engine.embed_tokens(&[4, 7]).unwrap();
    let recomputed: Vec<Vec<f32>> = features
        .matmul(&embed.t().unwrap())
        .unwrap()
        .to_vec2()
        .unwrap();
    assert_close(&recomputed, &out.logits.to_vec2().unwrap(), 1e-4);
}

/// GGUF-style q/k rows (our tiny models are GGUF-style) in HF's order.
fn to_hf_rows(w: &Tensor, heads: usize) -> Tensor {
    bbt::model::weights::interleaved_to_half_rows(w, heads).unwrap()
}

#[test]
fn hf_safetensors_directory_loads_to_the_same_model() {
    let cfg = config(Architecture::Llama);
    let dir = tempfile::tempdir().unwrap();
    let (nh, nkv, hd, h) = (
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.head_dim,
        cfg.hidden_size,
    );
    let weights = random_weights(&cfg);
    let mut tensors = std::collections::HashMap::new();
    tensors.insert(
        "model.embed_tokens.weight".to_string(),
        weights.embed.clone(),
    );
    tensors.insert("model.norm.weight".to_string(), weights.final_norm.clone());
    for (i, l) in weights.layers.iter().enumerate() {
        let p = |name: &str| format!("model.layers.{i}.{name}.weight");
        let q = l.wqkv.weight.narrow(0, 0, nh * hd).unwrap();
        let k = l.wqkv.weight.narrow(0, nh * hd, nkv * hd).unwrap();
        let v = l.wqkv.weight.narrow(0, (nh + nkv) * hd, nkv * hd).unwrap();
        tensors.insert(p("self_attn.q_proj"), to_hf_rows(&q, nh));
        tensors.insert(p("self_attn.k_proj"), to_hf_rows(&k, nkv));
        tensors.insert(p("self_attn.v_proj"), v);
        tensors.insert(p("self_attn.o_proj"), l.wo.weight.clone());
        tensors.insert(p("input_layernorm"), l.attn_norm.clone());
        tensors.insert(p("post_attention_layernorm"), l.ffn_norm.clone());
        tensors.insert(
            p("mlp.gate_proj"),
            l.w_gate_up.weight.narrow(0, 0, cfg.ffn_size).unwrap(),
        );
        tensors.insert(
            p("mlp.up_proj"),
            l.w_gate_up
                .weight
                .narrow(0, cfg.ffn_size, cfg.ffn_size)
                .unwrap(),
        );
        tensors.insert(p("mlp.down_proj"), l.w_down.weight.clone());
    }
    candle_core::safetensors::save(&tensors, dir.path().join("model.safetensors")).unwrap();
    let config = serde_json::json!({
        "model_type": "llama", "hidden_size": h, "intermediate_size": cfg.ffn_size,
        "num_attention_heads": nh, "num_key_value_heads": nkv, "num_hidden_layers": cfg.num_layers,
        "vocab_size": VOCAB, "rms_norm_eps": cfg.rms_norm_eps, "rope_theta": cfg.rope_theta,
        "max_position_embeddings": cfg.max_position, "bos_token_id": BOS, "eos_token_id": 2,
        "tie_word_embeddings": true
    });
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    word_level_tokenizer()
        .save(dir.path().join("tokenizer.json"), false)
        .unwrap();

    let gguf_style = Engine::from_parts(
        "tiny".into(),
        cfg,
        weights,
        Tokenizer::new(
            tokenizers::Tokenizer::from_file(dir.path().join("tokenizer.json")).unwrap(),
            Some(BOS),
        ),
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    let hf = Engine::load_path(dir.path(), &Device::Cpu, DType::F32).unwrap();
    assert_eq!(hf.info().bos_token_id, Some(BOS));
    let rows = vec![Row::new(vec![Segment::Tokens(vec![BOS, 5, 9, 12, 30, 7])])];
    assert_close(&run(&hf, &rows, &[]), &run(&gguf_style, &rows, &[]), 1e-4);
    assert_eq!(hf.tokenizer().encode("t5 t9").unwrap(), vec![5, 9]);
}

#[test]
fn batches_larger_than_one_chunk_equal_one_at_a_time() {
    // 120 rows of 30 positions = 3,600 positions: the engine splits this into several passes.
    let engine = tiny_engine(Architecture::Llama);
    let prompts = vec![prompt(4, 32)];
    let tails: Vec<Vec<u32>> = (0..120).map(|i| ids(i, 26)).collect();
    let all = engine
        .run_prefix(&prompts, &tails, &Readout::FullVocabulary)
        .unwrap()
        .logits
        .to_vec2::<f32>()
        .unwrap();
    assert_eq!(all.len(), 120);
    for i in [0usize, 67, 68, 119] {
        let alone = engine
            .run_prefix(&prompts, &tails[i..i + 1], &Readout::FullVocabulary)
            .unwrap()
            .logits
            .to_vec2::<f32>()
            .unwrap();
        assert_close(&all[i..i + 1], &alone, 1e-4);
    }
}

/// In-context demonstrations reach the model as a prompt of their token embeddings: that must
/// read exactly like the tokens themselves (Gemma scales both the same way).
#[test]
fn a_prompt_of_token_embeddings_reads_like_the_tokens() {
    for architecture in [Architecture::Llama, Architecture::Gemma3] {
        let engine = tiny_engine(architecture);
        let context = ids(10, 7);
        let tail = ids(20, 4);
        let readout = Readout::Tokens(vec![4, 7]);
        let prompt = Prompt::new(engine.embed_tokens(&context).unwrap());
        let via_prompt = engine
            .run_prefix(&[prompt], std::slice::from_ref(&tail), &readout)
            .unwrap()
            .logits
            .to_vec2()
            .unwrap();
        let inline: Vec<u32> = engine
            .bos_segment()
            .into_iter()
            .chain(context)
            .chain(tail)
            .collect();
        let via_tokens = engine
            .forward(
                &[Row::new(vec![Segment::Tokens(inline)])],
                &[],
                None,
                &readout,
                false,
            )
            .unwrap()
            .logits
            .to_vec2()
            .unwrap();
        assert_close(&via_prompt, &via_tokens, 1e-4);
    }
}
