//! Attention's masked softmax, `softmax(scores + mask)`, fused: the mask is added and the
//! rows normalised in one pass, and the backward needs only the output.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use super::storage::f32_slice;
use super::vector_math;

/// `softmax(scores + mask)` over the last dimension, with `scores` `[b, h, g, t, s]` and the
/// additive `mask` `[b, 1, 1, t, s]` broadcast over heads.
pub fn masked_softmax(scores: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
    let cpu_f32 =
        scores.device().is_cpu() && scores.dtype() == DType::F32 && mask.dtype() == DType::F32;
    if cpu_f32 && scores.rank() == 5 && mask.rank() == 5 {
        return scores
            .contiguous()?
            .apply_op2(&mask.contiguous()?, MaskedSoftmax);
    }
    masked_softmax_composed(scores, mask)
}

/// [`masked_softmax`] composed of basic (differentiable) candle ops, for any device and dtype.
fn masked_softmax_composed(scores: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
    let dtype = scores.dtype();
    let x = scores.broadcast_add(&mask.to_dtype(dtype)?)?;
    // Half-precision scores are normalised in f32.
    let x = match dtype {
        DType::F16 | DType::BF16 => x.to_dtype(DType::F32)?,
        _ => x,
    };
    let probs = if x.track_op() {
        candle_nn::ops::softmax(&x, D::Minus1)?
    } else {
        candle_nn::ops::softmax_last_dim(&x)?
    };
    probs.to_dtype(dtype)
}

struct MaskedSoftmax;

impl CustomOp2 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "masked-softmax"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(scores), CpuStorage::F32(mask)) = (s1, s2) else {
            candle_core::bail!("masked-softmax: f32 only");
        };
        let (Some((a0, a1)), Some((m0, m1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("masked-softmax: inputs must be contiguous");
        };
        let dims = l1.shape().dims();
        let (b, heads, t, s) = (dims[0], dims[1] * dims[2], dims[3], dims[4]);
        if l2.shape().dims() != [b, 1, 1, t, s] {
            candle_core::bail!(
                "masked-softmax: mask {:?} does not fit scores {dims:?}",
                l2.shape()
            );
        }
        let scores = &scores[a0..a1];
        let mask = &mask[m0..m1];
        let mut out = vec![0f32; scores.len()];
        out.par_chunks_mut(s)
            .zip(scores.par_chunks(s))
            .enumerate()
            .for_each(|(r, (o, x))| {
                let (bi, ti) = (r / (heads * t), r % t);
                let m = &mask[(bi * t + ti) * s..][..s];
                let mut max = f32::NEG_INFINITY;
                for ((o, &x), &m) in o.iter_mut().zip(x).zip(m) {
                    *o = x + m;
                    max = max.max(*o);
                }
                let inv = 1.0 / vector_math::exp_shifted_sum(o, max);
                for o in o.iter_mut() {
                    *o *= inv;
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _scores: &Tensor,
        _mask: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let d = res.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxGrad)?;
        Ok((Some(d), None))
    }
}

/// Gradient of a row-wise softmax given its output `y` and the output's gradient `g`:
/// `y * (g - sum(g * y))` per row.
struct SoftmaxGrad;

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let y = f32_slice(self.name(), s1, l1)?;
        let g = f32_slice(self.name(), s2, l2)?;
        let s = *l1.shape().dims().last().unwrap_or(&1);
        let mut out = vec![0f32; y.len()];
        out.par_chunks_mut(s)
            .zip(y.par_chunks(s).zip(g.par_chunks(s)))
            .for_each(|(o, (y, g))| {
                let dot: f32 = y.iter().zip(g).map(|(a, b)| a * b).sum();
                for ((o, &y), &g) in o.iter_mut().zip(y).zip(g) {
                    *o = y * (g - dot);
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fused::testing::{check, max_diff, randn};
    use candle_core::{Device, Var};

    #[test]
    fn fused_masked_softmax_matches_candle_ops() {
        let scores = Tensor::randn(0f32, 3.0, (2, 3, 2, 4, 6), &Device::Cpu).unwrap();
        let mut m = vec![0f32; 2 * 4 * 6];
        for (i, v) in m.iter_mut().enumerate() {
            if i % 5 == 3 {
                *v = f32::NEG_INFINITY;
            }
        }
        let mask = Tensor::from_vec(m, (2, 1, 1, 4, 6), &Device::Cpu).unwrap();
        let fused = masked_softmax(&scores, &mask).unwrap();
        let x = scores.broadcast_add(&mask).unwrap();
        let reference = candle_nn::ops::softmax_last_dim(&x).unwrap();
        assert!(max_diff(&fused, &reference) < 1e-6);
    }

    #[test]
    fn fused_masked_softmax_backward_matches_composition() {
        let scores = Var::from_tensor(&randn(&[2, 3, 2, 4, 6], 2)).unwrap();
        let mut m = vec![0f32; 2 * 4 * 6];
        for (i, v) in m.iter_mut().enumerate() {
            if i % 5 == 3 {
                *v = f32::NEG_INFINITY;
            }
        }
        let mask = Tensor::from_vec(m, (2, 1, 1, 4, 6), &Device::Cpu).unwrap();
        check(
            &[scores],
            |t| masked_softmax(&t[0], &mask).unwrap(),
            |t| masked_softmax_composed(&t[0], &mask).unwrap(),
        );
    }
}
