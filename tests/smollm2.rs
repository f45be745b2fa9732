//! The engine on the real default model (SmolLM2-135M-Instruct Q4_1, fetched on first use).

mod common;

use std::sync::OnceLock;

use bbt::Engine;
use candle_core::Device;

/// The model in f32, whatever this CPU's default dtype: the reference implementations and the
/// exactness checks below are f32 (the bf16 path has its own comparisons).
fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| common::load_cpu("smollm2-135m", candle_core::DType::F32))
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

/// The real model through each BLAS library this machine can load against candle's gemm, on
/// the reference sentences (full-vocabulary logits): f32 within summation-order noise; bf16
/// (library bf16 kernels against candle on the same bf16-rounded operands) within a fraction of
/// bf16's own error, the same next token except at a near tie.
#[test]
fn every_blas_library_gives_candles_logits_on_the_reference_sentences() {
    let rows: Vec<bbt::Row> = common::SENTENCES
        .iter()
        .map(|s| common::text_row(engine(), s))
        .collect();
    for dtype in [candle_core::DType::F32, candle_core::DType::BF16] {
        let mut e = common::load_cpu("smollm2-135m", dtype);
        e.use_cpu_kernels(None).unwrap();
        let want = common::full_logits(&e, &rows, &[]);
        for kind in [
            bbt::blas::BlasKind::Mkl,
            bbt::blas::BlasKind::OpenBlas,
            bbt::blas::BlasKind::OneDnn,
        ] {
            let Some(blas) = bbt::blas::library(kind) else {
                assert!(
                    std::env::var("BBT_REQUIRE_BLAS").as_deref() != Ok("1"),
                    "BBT_REQUIRE_BLAS=1 but {kind:?} cannot be loaded"
                );
                continue;
            };
            e.use_cpu_kernels(Some(blas)).unwrap();
            let got = common::full_logits(&e, &rows, &[]);
            let mut worst = 0f32;
            for (g, w) in got.iter().zip(&want) {
                worst = worst.max(common::max_abs_diff(g, w));
                let (top, theirs) = (common::argmax(w), common::argmax(g));
                assert!(
                    top == theirs || w[top] - w[theirs] < 0.1,
                    "{kind:?} {dtype:?}: a token {} below candle's top",
                    w[top] - w[theirs]
                );
            }
            eprintln!(
                "{} vs candle's gemm, {dtype:?}: max |logit difference| {worst:.5}",
                blas.label()
            );
            // Logits are ~20 in magnitude; 30 layers of f32 sums in another order move them by
            // about 1e-4. In bf16 every matmul input is rounded to bf16, which turns that noise
            // into whole bf16 steps wherever a value sits near a rounding boundary: measured
            // 0.21 (oneMKL, AVX512-BF16), against 0.74 between the bf16 and f32 models.
            let tolerance = match dtype {
                candle_core::DType::F32 => 0.02,
                _ => 0.5,
            };
            assert!(
                worst < tolerance,
                "{kind:?} {dtype:?}: max |logit difference| {worst}"
            );
        }
    }
}

/// The model in bf16 (the GPUs' default dtype) on the CPU against f32, on the reference
/// sentences in one padded batch: the same next token nearly everywhere, logits within bf16's
/// precision.
#[test]
fn bf16_agrees_with_f32_on_the_reference_sentences() {
    let narrow = common::load_cpu("smollm2-135m", candle_core::DType::BF16);
    let rows: Vec<bbt::Row> = common::SENTENCES
        .iter()
        .map(|s| common::text_row(engine(), s))
        .collect();
    let want = common::full_logits(engine(), &rows, &[]);
    let got = common::full_logits(&narrow, &rows, &[]);
    let mut worst = 0f32;
    let mut same_top1 = 0;
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        worst = worst.max(common::max_abs_diff(g, w));
        let (top, theirs) = (common::argmax(w), common::argmax(g));
        if top == theirs {
            same_top1 += 1;
        } else {
            // Only a near tie may flip: f32 ranks bf16's choice close behind its own.
            let gap = w[top] - w[theirs];
            assert!(
                gap < 0.5,
                "{:?}: bf16 picks a token {gap} below f32's top",
                common::SENTENCES[i]
            );
        }
    }
    eprintln!(
        "bf16 vs f32: top-1 equal on {same_top1}/{}, max |logit difference| {worst:.3}",
        rows.len()
    );
    // Measured 21/22 and 0.74 on logits of magnitude ~20 (8-bit mantissas through 30 layers);
    // a wrong dtype read or a lost cast moves them by whole units everywhere.
    assert!(
        same_top1 + 2 >= rows.len(),
        "top-1 equal on {same_top1}/{}",
        rows.len()
    );
    assert!(worst < 1.5, "max |logit difference| {worst}");
}
