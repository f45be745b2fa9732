//! Fused CPU kernels for the two elementwise steps that otherwise cost several passes over
//! memory: the gated activation of the MLP and the masked softmax of attention.
//!
//! Each is a candle custom op on f32 CPU tensors (parallel over rows with rayon), with a fused
//! backward ([`super::grad_kernels`]) used when its input carries a gradient; other devices and
//! dtypes take the equivalent composition of (differentiable) candle ops, so results agree
//! everywhere.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor, D};
use rayon::prelude::*;
use wide::f32x8;

use super::grad_kernels::{GatedActivationGrad, SoftmaxGrad};
use super::vector_math;

/// The activation of a gated MLP.
#[derive(Debug, Clone, Copy)]
pub enum GateActivation {
    /// SiLU (Llama).
    Silu,
    /// GELU, tanh approximation (Gemma).
    GeluTanh,
}

impl GateActivation {
    #[inline]
    pub(super) fn apply(self, x: f32) -> f32 {
        match self {
            Self::Silu => x / (1.0 + (-x).exp()),
            Self::GeluTanh => {
                const SQRT_2_OVER_PI: f32 = 0.797_884_6;
                0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x)).tanh())
            }
        }
    }

    /// [`Self::apply`] on eight lanes (the fused forward kernel's vectorised form).
    #[inline]
    fn apply_lanes(self, x: f32x8) -> f32x8 {
        match self {
            Self::Silu => x * vector_math::sigmoid(x),
            Self::GeluTanh => {
                let inner = (x + x * x * x * 0.044_715) * 0.797_884_6;
                x * 0.5 * (vector_math::tanh(inner) + 1.0)
            }
        }
    }
}

/// `act(gate) * up` for `gate_up` `[n, 2f]` holding gate in the first half: returns `[n, f]`.
pub fn gated_activation(gate_up: &Tensor, act: GateActivation) -> candle_core::Result<Tensor> {
    let fused = gate_up.device().is_cpu() && gate_up.dtype() == DType::F32 && gate_up.rank() == 2;
    if fused {
        return gate_up.contiguous()?.apply_op1(GatedActivation(act));
    }
    gated_activation_composed(gate_up, act)
}

/// [`gated_activation`] composed of basic (differentiable) candle ops, for any device and dtype.
pub(crate) fn gated_activation_composed(
    gate_up: &Tensor,
    act: GateActivation,
) -> candle_core::Result<Tensor> {
    let f = gate_up.dim(D::Minus1)? / 2;
    let gate = gate_up.narrow(D::Minus1, 0, f)?;
    let up = gate_up.narrow(D::Minus1, f, f)?;
    let gate = match act {
        GateActivation::Silu => candle_nn::ops::silu(&gate)?,
        GateActivation::GeluTanh => gate.gelu()?,
    };
    gate * up
}

struct GatedActivation(GateActivation);

impl CustomOp1 for GatedActivation {
    fn name(&self) -> &'static str {
        "gated-activation"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("gated-activation: f32 only");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("gated-activation: input must be contiguous");
        };
        let (n, two_f) = layout.shape().dims2()?;
        let f = two_f / 2;
        let src = &data[start..end];
        let act = self.0;
        let mut out = vec![0f32; n * f];
        out.par_chunks_mut(f)
            .zip(src.par_chunks(two_f))
            .for_each(|(o, row)| {
                let (gate, up) = row.split_at(f);
                vector_math::zip_map(o, gate, up, |g, u| act.apply_lanes(g) * u);
            });
        Ok((CpuStorage::F32(out), Shape::from((n, f))))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(
            &grad.contiguous()?,
            &GatedActivationGrad(self.0),
        )?))
    }
}

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
pub(crate) fn masked_softmax_composed(
    scores: &Tensor,
    mask: &Tensor,
) -> candle_core::Result<Tensor> {
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use candle_core::Device;

    /// Largest absolute difference between two f32 tensors (shared by the kernel tests).
    pub(in crate::model) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    #[test]
    fn fused_gated_activation_matches_candle_ops() {
        let x = Tensor::randn(0f32, 2.0, (7, 10), &Device::Cpu).unwrap();
        for act in [GateActivation::Silu, GateActivation::GeluTanh] {
            let fused = gated_activation(&x, act).unwrap();
            // The non-CPU path, forced through a rank-3 view.
            let reference = gated_activation(&x.unsqueeze(0).unwrap(), act)
                .unwrap()
                .squeeze(0)
                .unwrap();
            assert!(max_diff(&fused, &reference) < 1e-5);
        }
    }

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
}
