//! The CPU's BLAS paths (oneMKL with prepacked weights, OpenBLAS) against candle's gemm, on the
//! tiny random models of both architectures: the same logits in every placement, in f32 and in
//! bf16, and the same gradients for every training method (candle's gradients are themselves
//! checked against finite differences in `peft_gradients.rs`).
//!
//! A library this machine cannot load is skipped with a note; CI sets `BBT_REQUIRE_BLAS=1` to
//! turn that into a failure.

use bbt::blas::{library, Blas, BlasKind};
use bbt::model::config::Architecture;
use bbt::peft::{Method, Trainable, Trainer};
use bbt::protocol::Placement;
use bbt::scoring::{candidate_logits, EncodedSplit};
use bbt::testing::random_model::{tiny_engine_in, TINY_VOCAB};
use bbt::testing::small_method_config;
use bbt::{Engine, Prompt};
use candle_core::{DType, Device, Tensor};

const ARCHITECTURES: [Architecture; 2] = [Architecture::Llama, Architecture::Gemma3];

/// The libraries to compare with candle's gemm.
fn libraries() -> Vec<&'static Blas> {
    let require = std::env::var("BBT_REQUIRE_BLAS").is_ok_and(|v| v == "1");
    [BlasKind::Mkl, BlasKind::OpenBlas, BlasKind::OneDnn]
        .into_iter()
        .filter_map(|kind| {
            let lib = library(kind);
            assert!(
                lib.is_some() || !require,
                "BBT_REQUIRE_BLAS=1 but {kind:?} cannot be loaded"
            );
            if lib.is_none() {
                eprintln!("skipped: {kind:?} cannot be loaded here");
            }
            lib
        })
        .collect()
}

fn split() -> EncodedSplit {
    let id = |i: usize| (2 + (i * 7) % (TINY_VOCAB - 2)) as u32;
    EncodedSplit {
        heads: (0..6)
            .map(|e| (0..3 + e % 4).map(|t| id(e * 5 + t)).collect())
            .collect(),
        tails: vec![vec![id(40), id(41)]; 6],
        labels: (0..6).map(|e| e % 3).collect(),
    }
}

fn prompts(engine: &Engine) -> Vec<Prompt> {
    let hidden = engine.config().hidden_size;
    (0..2)
        .map(|c| {
            let values = (0..4 * hidden)
                .map(|i| ((i * 37 + c * 11) % 101) as f32 / 101.0 - 0.5)
                .collect();
            Prompt::new(Tensor::from_vec(values, (4, hidden), &Device::Cpu).unwrap())
        })
        .collect()
}

/// Every placement's candidate logits, flattened.
fn all_logits(engine: &Engine) -> Vec<f32> {
    let split = split();
    let prompts = prompts(engine);
    let cache = split.cache_heads(engine).unwrap();
    let mut out = Vec::new();
    for (placement, cache) in [
        (Placement::Prefix, None),
        (Placement::Suffix, Some(&cache)),
        (Placement::Suffix, None),
    ] {
        let verbalizer = bbt::tasks::Verbalizer::single(&[5, 9, 13]).unwrap();
        let l = candidate_logits(engine, &split, &prompts, placement, cache, &verbalizer).unwrap();
        out.extend(l.into_iter().flatten().flatten());
    }
    out
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn every_library_gives_candles_logits_in_f32_and_bf16() {
    for blas in libraries() {
        for arch in ARCHITECTURES {
            for dtype in [DType::F32, DType::BF16] {
                let mut engine = tiny_engine_in(arch, 21, dtype);
                engine.use_cpu_kernels(None).unwrap();
                let want = all_logits(&engine);
                engine.use_cpu_kernels(Some(blas)).unwrap();
                assert_eq!(engine.cpu_kernels(), Some(blas.label().as_str()));
                assert!(engine.weights().layers[0].wqkv.uses_blas());
                let got = all_logits(&engine);
                let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())).max(1.0);
                let diff = max_abs_diff(&got, &want);
                // Both sides multiply the same (bf16-rounded, for bf16) operands in f32; only the
                // order of the sums differs. In bf16 the next layer's inputs are rounded again,
                // which turns that noise into whole bf16 steps (2^-8 relative) here and there:
                // measured 2.3e-3 of the largest logit (OpenBLAS, tiny Llama).
                let tolerance = match dtype {
                    DType::F32 => 1e-4,
                    _ => 1e-2,
                };
                assert!(
                    diff <= tolerance * scale,
                    "{} {arch:?} {dtype:?}: max |Δlogit| {diff} on logits up to {scale}",
                    blas.label()
                );
            }
        }
    }
}

#[test]
fn a_bf16_model_differs_from_f32_only_by_rounding_on_every_path() {
    for blas in libraries() {
        for arch in ARCHITECTURES {
            let mut narrow = tiny_engine_in(arch, 21, DType::BF16);
            let mut wide = tiny_engine_in(arch, 21, DType::F32);
            narrow.use_cpu_kernels(Some(blas)).unwrap();
            wide.use_cpu_kernels(Some(blas)).unwrap();
            assert_eq!(narrow.model_dtype(), DType::BF16);
            assert_eq!(
                narrow.dtype(),
                DType::F32,
                "activations stay f32 on the CPU"
            );
            let (a, b) = (all_logits(&narrow), all_logits(&wide));
            let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1.0);
            let diff = max_abs_diff(&a, &b);
            assert!(diff > 0.0, "{arch:?}: bf16 really rounds");
            assert!(diff <= 0.05 * scale, "{arch:?}: {diff} vs {scale}");
        }
    }
}

/// Loss and gradients of every method after moving its parameters off their initial values.
fn gradients(engine: &mut Engine, method: Method) -> (f64, Vec<Vec<f32>>) {
    let split = split();
    let verbalizer = bbt::tasks::Verbalizer::single(&[30, 31, 32]).unwrap();
    let trainable = Trainable::new(engine, &small_method_config(method), &verbalizer, 5).unwrap();
    for (i, p) in trainable.params().iter().enumerate() {
        let t = p.var.as_tensor();
        let v: Vec<f32> = (0..t.elem_count())
            .map(|j| (((i * 31 + j * 17) % 97) as f32 / 97.0 - 0.5) * 0.3)
            .collect();
        let noise = Tensor::from_vec(v, t.shape(), t.device()).unwrap();
        p.var.set(&(t + noise).unwrap()).unwrap();
    }
    let trainer = Trainer::new(trainable, 1).unwrap();
    let (loss, grads) = trainer.gradients(engine, &split, &[0, 1, 2]).unwrap();
    let grads = grads
        .iter()
        .map(|g| g.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .collect();
    (loss, grads)
}

#[test]
fn every_method_gets_candles_gradients_through_the_libraries() {
    for blas in libraries() {
        for arch in ARCHITECTURES {
            for method in Method::ALL {
                let mut engine = tiny_engine_in(arch, 11, DType::F32);
                engine.use_cpu_kernels(None).unwrap();
                let (loss_want, want) = gradients(&mut engine, method);
                engine.use_cpu_kernels(Some(blas)).unwrap();
                let (loss_got, got) = gradients(&mut engine, method);
                let what = format!("{} {arch:?} {method}", blas.label());
                assert!((loss_got - loss_want).abs() < 1e-4, "{what}: loss");
                assert_eq!(got.len(), want.len(), "{what}");
                for (g, w) in got.iter().zip(&want) {
                    let scale = w.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-3);
                    let diff = max_abs_diff(g, w);
                    assert!(
                        diff <= 1e-3 * scale,
                        "{what}: gradient differs by {diff} (scale {scale})"
                    );
                }
                // Frozen weights are still multiplied through the library after training
                // methods attached LoRA factors, biases or adapters (not for methods that train
                // the weights themselves).
                if !bbt::testing::tunes_all_weights(method) {
                    assert!(engine.weights().layers[0].w_down.uses_blas(), "{what}");
                }
            }
        }
    }
}

#[test]
fn a_weight_being_trained_multiplies_and_differentiates_through_the_library() {
    use bbt::blas::Precision;
    use bbt::model::linear::Linear;
    use candle_core::Var;
    let device = Device::Cpu;
    let values = |n: usize, seed: usize| -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 37 + seed * 11) % 101) as f32 / 101.0 - 0.5)
            .collect()
    };
    for blas in libraries() {
        let w = Var::from_vec(values(7 * 5, 1), (7, 5), &device).unwrap();
        let x = Var::from_vec(values(3 * 5, 2), (3, 5), &device).unwrap();
        let mut layer = Linear::new(w.as_tensor().clone());
        layer.prepare_cpu(Some(blas), Precision::F32).unwrap();
        assert!(layer.trains_through_blas(), "{}", blas.label());
        // A weighted sum of the outputs, so every output element has its own gradient.
        let coef = Tensor::from_vec(values(3 * 7, 3), (3, 7), &device).unwrap();
        let got = layer.forward(x.as_tensor()).unwrap();
        let want = x.as_tensor().matmul(&w.as_tensor().t().unwrap()).unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(
            max_abs_diff(&flat(&got), &flat(&want)) < 1e-5,
            "{}",
            blas.label()
        );
        let g_got = (got * &coef)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g_want = (want * &coef)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for v in [&x, &w] {
            let a = flat(g_got.get(v.as_tensor()).unwrap());
            let b = flat(g_want.get(v.as_tensor()).unwrap());
            assert!(max_abs_diff(&a, &b) < 1e-5, "{}: gradient", blas.label());
        }
    }
}
