//! Every gradient method on the tiny random models of both architectures, in f64: gradients
//! against central finite differences, training-mode logits against the fused inference path,
//! frozen weights untouched by training, parameter counts.

use bbt::model::config::Architecture;
use bbt::model::weights::{DecoderWeights, Proj};
use bbt::peft::{Method, MethodConfig, Trainable, Trainer};
use bbt::protocol::Placement;
use bbt::scoring::EncodedSplit;
use bbt::tasks::Verbalizer;
use bbt::testing::random_model::tiny_engine_in;
use bbt::testing::small_method_config;
use bbt::Engine;
use candle_core::{DType, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const ARCHITECTURES: [Architecture; 2] = [Architecture::Llama, Architecture::Gemma3];
/// One label word per class.
fn verbalizer() -> Verbalizer {
    Verbalizer::single(&[30, 31, 32]).unwrap()
}

fn split() -> EncodedSplit {
    EncodedSplit {
        heads: vec![vec![5, 9, 12, 7], vec![14, 3], vec![22, 8, 40, 41, 2, 6]],
        tails: vec![vec![20, 21]; 3],
        labels: vec![0, 2, 1],
    }
}

fn engine(arch: Architecture, dtype: DType) -> Engine {
    tiny_engine_in(arch, 11, dtype)
}

fn random_like(t: &Tensor, rng: &mut ChaCha8Rng, scale: f64) -> Tensor {
    let n = t.elem_count();
    let v: Vec<f64> = (0..n)
        .map(|_| scale * (rng.random::<f64>() * 2.0 - 1.0))
        .collect();
    Tensor::from_vec(v, t.shape(), t.device())
        .unwrap()
        .to_dtype(t.dtype())
        .unwrap()
}

/// Moves every parameter off its initial value (zero-initialised LoRA B, adapter up-projections
/// and biases would otherwise hide wrong gradients of the pieces before them).
fn perturb(trainable: &Trainable, rng: &mut ChaCha8Rng) {
    for p in trainable.params() {
        let noise = random_like(p.var.as_tensor(), rng, 0.3);
        p.var.set(&(p.var.as_tensor() + noise).unwrap()).unwrap();
    }
}

fn dot(a: &Tensor, b: &Tensor) -> f64 {
    (a * b)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

#[test]
fn gradients_match_central_finite_differences() {
    let split = split();
    let idx = [0usize, 1, 2];
    for arch in ARCHITECTURES {
        for method in Method::ALL {
            for placement in [Placement::Prefix, Placement::Suffix] {
                let mut engine = engine(arch, DType::F64);
                let mut config = small_method_config(method);
                match config.tuner.prompt_tuning_mut() {
                    Some(prompt) => prompt.placement = placement,
                    None if placement == Placement::Suffix => continue,
                    None => {}
                }
                let trainable = Trainable::new(&engine, &config, &verbalizer(), 5).unwrap();
                let what = format!("{arch:?} {method} {placement:?}");
                check_gradients(&mut engine, trainable, &split, &idx, &what);
            }
        }
    }
}

/// Perturbs `trainable`'s parameters, then checks each one's gradient against a central finite
/// difference along a random direction, and that at least half of them get a gradient.
fn check_gradients(
    engine: &mut Engine,
    trainable: Trainable,
    split: &EncodedSplit,
    idx: &[usize],
    what: &str,
) {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    perturb(&trainable, &mut rng);
    let trainer = Trainer::new(trainable, 1).unwrap();
    let (_, grads) = trainer.gradients(engine, split, idx).unwrap();
    let params = trainer.trainable.params();
    assert_eq!(grads.len(), params.len());
    let mut nonzero = 0;
    for (p, g) in params.iter().zip(&grads) {
        // Directional derivative along a random direction of this parameter alone.
        let d = random_like(p.var.as_tensor(), &mut rng, 1.0);
        let base = p.var.as_tensor().copy().unwrap();
        let eps = 1e-5;
        let mut loss_at = |sign: f64| {
            p.var
                .set(&(&base + (&d * (sign * eps)).unwrap()).unwrap())
                .unwrap();
            trainer.gradients(engine, split, idx).unwrap().0
        };
        let numeric = (loss_at(1.0) - loss_at(-1.0)) / (2.0 * eps);
        p.var.set(&base).unwrap();
        let analytic = dot(g, &d);
        let tol = 1e-6 + 1e-4 * numeric.abs().max(analytic.abs());
        assert!(
            (numeric - analytic).abs() < tol,
            "{what}: parameter {}: finite difference {numeric:.9} vs gradient {analytic:.9}",
            p.name
        );
        nonzero += usize::from(analytic.abs() > 1e-9);
    }
    assert!(
        nonzero * 2 >= params.len(),
        "{what}: only {nonzero} of {} parameters get a gradient",
        params.len()
    );
}

/// Several label words per class: each class scores the mean of its words' logits (what the
/// same method reads for every word alone), and gradients still match finite differences,
/// through the trainable head rows of norm tuning too.
#[test]
fn several_label_words_per_class_score_their_mean_and_train() {
    let split = split();
    let idx = [0usize, 1, 2];
    let many = Verbalizer::new(vec![vec![30, 33], vec![31], vec![32, 34, 35]]).unwrap();
    let each_word = Verbalizer::single(many.ids()).unwrap();
    for method in [Method::PromptTuning, Method::NormTuning, Method::Lora] {
        let mut engine = engine(Architecture::Llama, DType::F64);
        let config = small_method_config(method);
        let grouped = Trainable::new(&engine, &config, &many, 5).unwrap();
        let alone = Trainable::new(&engine, &config, &each_word, 5).unwrap();
        let scores: Vec<Vec<f64>> = grouped
            .logits(&mut engine, &split, &idx, false)
            .unwrap()
            .to_vec2()
            .unwrap();
        let words: Vec<Vec<f64>> = alone
            .logits(&mut engine, &split, &idx, false)
            .unwrap()
            .to_vec2()
            .unwrap();
        for (s, w) in scores.iter().zip(&words) {
            let w32: Vec<f32> = w.iter().map(|&x| x as f32).collect();
            let want = many.class_scores(&w32);
            assert_eq!(s.len(), 3, "{method}: one score per class");
            for (a, b) in s.iter().zip(&want) {
                assert!((*a as f32 - b).abs() < 1e-4, "{method}: {s:?} vs {want:?}");
            }
        }
        check_gradients(
            &mut engine,
            grouped,
            &split,
            &idx,
            &format!("{method} grouped"),
        );
    }
}

/// The differentiable ops (training mode) and the fused kernels (inference) give the same
/// logits, in f32, the engine's CPU dtype.
#[test]
fn training_and_inference_forwards_agree() {
    let split = split();
    let idx = [0usize, 1, 2];
    for arch in ARCHITECTURES {
        for method in Method::ALL {
            let mut engine = engine(arch, DType::F32);
            let trainable =
                Trainable::new(&engine, &small_method_config(method), &verbalizer(), 5).unwrap();
            perturb(&trainable, &mut ChaCha8Rng::seed_from_u64(3));
            let train: Vec<f32> = trainable
                .logits(&mut engine, &split, &idx, true)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let infer: Vec<f32> = trainable
                .logits(&mut engine, &split, &idx, false)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let diff = train
                .iter()
                .zip(&infer)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                diff < 1e-4,
                "{arch:?} {method}: train vs inference logits differ by {diff}"
            );
        }
    }
}

/// Values of every tensor of the base model that `method` must leave alone.
fn frozen_values(weights: &DecoderWeights, method: Method) -> Vec<Vec<f32>> {
    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let mut out = vec![flat(&weights.embed)];
    let norms = method == Method::NormTuning;
    if !norms {
        out.push(flat(&weights.final_norm));
    }
    for l in &weights.layers {
        for lin in [&l.wqkv, &l.wo, &l.w_gate_up, &l.w_down] {
            out.push(flat(&lin.weight));
        }
        if !norms {
            out.push(flat(&l.attn_norm));
            out.push(flat(&l.ffn_norm));
        }
    }
    out
}

#[test]
fn training_moves_parameters_and_leaves_frozen_weights_bitwise_unchanged() {
    let split = split();
    for arch in ARCHITECTURES {
        for method in Method::ALL {
            if bbt::testing::tunes_all_weights(method) {
                continue;
            }
            let mut engine = engine(arch, DType::F32);
            let before = frozen_values(engine.weights(), method);
            let trainable =
                Trainable::new(&engine, &small_method_config(method), &verbalizer(), 5).unwrap();
            let initial: Vec<Vec<f32>> = trainable
                .params()
                .iter()
                .map(|p| p.var.flatten_all().unwrap().to_vec1().unwrap())
                .collect();
            let mut trainer = Trainer::new(trainable, 1).unwrap();
            for _ in 0..3 {
                trainer.step(&mut engine, &split, &[0, 1, 2], 1e-2).unwrap();
            }
            let after = frozen_values(trainer.trainable.weights(), method);
            assert!(
                before == after,
                "{arch:?} {method}: a frozen weight changed"
            );
            let moved = trainer
                .trainable
                .params()
                .iter()
                .zip(&initial)
                .filter(|(p, init)| {
                    p.var.flatten_all().unwrap().to_vec1::<f32>().unwrap() != **init
                })
                .count();
            assert!(moved > 0, "{arch:?} {method}: no parameter moved");
        }
    }
}

#[test]
fn micro_batches_give_the_whole_batchs_loss_and_gradients() {
    let split = split();
    let idx = [0usize, 1, 2];
    for method in [Method::PromptTuning, Method::Lora, Method::ModelTuning] {
        let mut engine = engine(Architecture::Llama, DType::F64);
        let whole_config = small_method_config(method);
        let mut chunked_config = whole_config.clone();
        chunked_config.training.micro_batch = Some(2);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let whole = Trainable::new(&engine, &whole_config, &verbalizer(), 5).unwrap();
        perturb(&whole, &mut rng);
        let chunked = Trainable::new(&engine, &chunked_config, &verbalizer(), 5).unwrap();
        for (a, b) in whole.params().iter().zip(chunked.params()) {
            b.var.set(a.var.as_tensor()).unwrap();
        }
        let (whole_loss, whole_grads) = Trainer::new(whole, 1)
            .unwrap()
            .gradients(&mut engine, &split, &idx)
            .unwrap();
        let (chunked_loss, chunked_grads) = Trainer::new(chunked, 1)
            .unwrap()
            .gradients(&mut engine, &split, &idx)
            .unwrap();
        assert!((whole_loss - chunked_loss).abs() < 1e-12, "{method}");
        for (a, b) in whole_grads.iter().zip(&chunked_grads) {
            let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
            let scale = a.abs().unwrap().max_all().unwrap();
            let (diff, scale) = (
                diff.to_scalar::<f64>().unwrap(),
                scale.to_scalar::<f64>().unwrap(),
            );
            assert!(
                diff <= 1e-10 * scale.max(1.0),
                "{method}: {diff} of {scale}"
            );
        }
        assert!(whole_grads.iter().any(|g| dot(g, g) > 0.0), "{method}");
    }
}

#[test]
fn trainable_parameter_counts() {
    for arch in ARCHITECTURES {
        let engine = engine(arch, DType::F32);
        let cfg = engine.config().clone();
        let (h, layers) = (cfg.hidden_size, cfg.num_layers);
        let q_out = cfg.num_heads * cfg.head_dim;
        let kv_out = cfg.num_kv_heads * cfg.head_dim;
        let count = |c: &MethodConfig| {
            Trainable::new(&engine, c, &verbalizer(), 1)
                .unwrap()
                .num_trainable()
        };
        let r = 2;
        let lora = small_method_config(Method::Lora);
        assert_eq!(count(&lora), layers * (r * (h + q_out) + r * (h + kv_out)));
        let mut lora_all = lora.clone();
        lora_all.tuner.lora_mut().unwrap().targets = Proj::ALL.to_vec();
        let ffn = cfg.ffn_size;
        let per_layer = r * (h + q_out)
            + 2 * r * (h + kv_out)
            + r * (q_out + h)
            + 2 * r * (h + ffn)
            + r * (ffn + h);
        assert_eq!(count(&lora_all), layers * per_layer);
        assert_eq!(count(&small_method_config(Method::PromptTuning)), 3 * h);
        assert_eq!(
            count(&small_method_config(Method::PTuningV2)),
            layers * 2 * 2 * kv_out
        );
        let m = 4;
        let adapter = 2 * m * h + m + h;
        assert_eq!(
            count(&small_method_config(Method::Adapter)),
            layers * 2 * adapter
        );
        assert_eq!(
            count(&small_method_config(Method::ParallelAdapter)),
            layers * adapter
        );
        let biases = q_out + 2 * kv_out + h + 2 * ffn + h;
        assert_eq!(count(&small_method_config(Method::Bitfit)), layers * biases);
        let total_weights: usize = {
            let w = engine.weights();
            let mut n = w.embed.elem_count() + w.final_norm.elem_count();
            for l in &w.layers {
                n += [&l.wqkv, &l.wo, &l.w_gate_up, &l.w_down]
                    .iter()
                    .map(|x| x.weight.elem_count())
                    .sum::<usize>();
                let mut l = l.clone();
                n += l
                    .norms_mut()
                    .iter()
                    .map(|(_, t)| t.elem_count())
                    .sum::<usize>();
            }
            n
        };
        assert_eq!(
            count(&small_method_config(Method::ModelTuning)),
            total_weights
        );
    }
}

#[test]
fn bad_settings_are_refused_with_a_message() {
    let engine = engine(Architecture::Llama, DType::F32);
    let mut c = small_method_config(Method::Lora);
    c.tuner.lora_mut().unwrap().targets.clear();
    let err = Trainable::new(&engine, &c, &verbalizer(), 1).err().unwrap();
    assert!(err.to_string().contains("LoRA needs a target"), "{err}");
    let mut c = small_method_config(Method::PromptTuning);
    c.tuner.prompt_tuning_mut().unwrap().length = 0;
    assert!(Trainable::new(&engine, &c, &verbalizer(), 1).is_err());
    let mut c = small_method_config(Method::Adapter);
    c.training.learning_rate = -1.0;
    assert!(Trainable::new(&engine, &c, &verbalizer(), 1).is_err());
}

#[test]
fn saved_and_reloaded_parameters_give_the_same_logits() {
    let split = split();
    let idx = [0usize, 1, 2];
    let dir = tempfile::tempdir().unwrap();
    for arch in ARCHITECTURES {
        for method in Method::ALL {
            let mut engine = engine(arch, DType::F32);
            let config = small_method_config(method);
            let trained = Trainable::new(&engine, &config, &verbalizer(), 5).unwrap();
            perturb(&trained, &mut ChaCha8Rng::seed_from_u64(4));
            let path = dir.path().join(format!("{arch:?}-{method}.safetensors"));
            trained.save(&path).unwrap();
            let fresh = Trainable::new(&engine, &config, &verbalizer(), 6).unwrap();
            let logits = |t: &Trainable, e: &mut Engine| -> Vec<f32> {
                t.logits(e, &split, &idx, false)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap()
            };
            let before = logits(&fresh, &mut engine);
            fresh.load(&path).unwrap();
            let want = logits(&trained, &mut engine);
            assert_eq!(logits(&fresh, &mut engine), want, "{arch:?} {method}");
            assert_ne!(
                before, want,
                "{arch:?} {method}: the parameters changed nothing"
            );
        }
    }
    // A file for another method is refused with a message.
    let engine = engine(Architecture::Llama, DType::F32);
    let lora = Trainable::new(
        &engine,
        &small_method_config(Method::Lora),
        &verbalizer(),
        1,
    )
    .unwrap();
    let err = lora
        .load(&dir.path().join("Llama-bitfit.safetensors"))
        .unwrap_err();
    assert!(err.to_string().contains("lacks"), "{err}");
}
