//! The bf16 compute path (the GPUs' default) on the CPU, through scoring: logits and features
//! come out as f32 in every placement and agree with the f32 model within bf16's precision.
//! On CUDA the same code runs in bf16, so reading a bf16 tensor as f32 anywhere would fail here
//! first.

use bbt::model::config::Architecture;
use bbt::protocol::Placement;
use bbt::scoring::{candidate_logits, split_features, EncodedSplit};
use bbt::testing::random_model::{tiny_engine_in, TINY_VOCAB};
use bbt::{Engine, Prompt};
use candle_core::{DType, Device, Tensor};

/// Eight examples of varied lengths, two classes.
fn split() -> EncodedSplit {
    let id = |i: usize| (2 + (i * 7) % (TINY_VOCAB - 2)) as u32;
    let heads = (0..8)
        .map(|e| (0..3 + e % 4).map(|t| id(e * 5 + t)).collect())
        .collect();
    EncodedSplit {
        heads,
        tails: vec![vec![id(40), id(41)]; 8],
        labels: (0..8).map(|e| e % 2).collect(),
    }
}

/// Three candidate prompts of 4 vectors, built in f32 and cast to the engine's dtype.
fn prompts(engine: &Engine) -> Vec<Prompt> {
    let hidden = engine.config().hidden_size;
    (0..3)
        .map(|c| {
            let values = (0..4 * hidden)
                .map(|i| ((i * 37 + c * 11) % 101) as f32 / 101.0 - 0.5)
                .collect();
            let e = Tensor::from_vec(values, (4, hidden), &Device::Cpu).unwrap();
            Prompt::new(e.to_dtype(engine.dtype()).unwrap())
        })
        .collect()
}

fn same_prompts(prompts: &[Prompt], dtype: DType) -> Vec<Prompt> {
    prompts
        .iter()
        .map(|p| Prompt::new(p.embeddings.to_dtype(dtype).unwrap()))
        .collect()
}

fn max_abs_diff(a: &[Vec<Vec<f32>>], b: &[Vec<Vec<f32>>]) -> f32 {
    a.iter()
        .flatten()
        .flatten()
        .zip(b.iter().flatten().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn bf16_scores_every_placement_as_f32_close_to_the_f32_model() {
    for arch in [Architecture::Llama, Architecture::Gemma3] {
        let narrow = tiny_engine_in(arch, 21, DType::BF16);
        let wide = tiny_engine_in(arch, 21, DType::F32);
        assert_eq!(narrow.model_dtype(), DType::BF16);
        let split = split();
        let verbalizer = bbt::tasks::Verbalizer::single(&[5, 9]).unwrap();
        let p16 = prompts(&narrow);
        let p32 = same_prompts(&p16, DType::F32);
        let cache16 = split.cache_heads(&narrow).unwrap();
        let cache32 = split.cache_heads(&wide).unwrap();
        let runs = [
            (Placement::Prefix, None, None),
            (Placement::Suffix, Some(&cache16), Some(&cache32)),
            (Placement::Suffix, None, None),
        ];
        for (placement, c16, c32) in runs {
            let got = candidate_logits(&narrow, &split, &p16, placement, c16, &verbalizer)
                .unwrap_or_else(|e| panic!("{arch:?} {placement:?} in bf16: {e:#}"));
            let want = candidate_logits(&wide, &split, &p32, placement, c32, &verbalizer).unwrap();
            assert_eq!((got.len(), got[0].len(), got[0][0].len()), (3, 8, 2));
            let scale = want
                .iter()
                .flatten()
                .flatten()
                .fold(0f32, |m, x| m.max(x.abs()));
            let diff = max_abs_diff(&got, &want);
            // bf16 keeps 8 significant bits: about 0.4% per rounding, a few roundings deep.
            assert!(
                diff <= 0.05 * scale.max(1.0),
                "{arch:?} {placement:?}: max |Δ| {diff} on logits up to {scale}"
            );
            assert!(
                diff > 0.0,
                "{arch:?} {placement:?}: bf16 really computed in bf16"
            );
        }
        // Features (the probe baseline's input) come out as f32 too.
        for placement in [Placement::Prefix, Placement::Suffix] {
            let f16 = split_features(&narrow, &split, p16[0].clone(), placement, &verbalizer)
                .unwrap_or_else(|e| panic!("{arch:?} {placement:?} features in bf16: {e:#}"));
            let f32 =
                split_features(&wide, &split, p32[0].clone(), placement, &verbalizer).unwrap();
            let diff = max_abs_diff(&[f16], std::slice::from_ref(&f32));
            let scale = f32.iter().flatten().fold(0f32, |m, x| m.max(x.abs()));
            assert!(
                diff <= 0.05 * scale.max(1.0),
                "{arch:?} features: {diff} vs {scale}"
            );
        }
    }
}
