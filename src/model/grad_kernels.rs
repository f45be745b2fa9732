//! Backward passes of the fused CPU kernels, and fused differentiable RMSNorm and rotary ops,
//! for training on f32 CPU tensors.
//!
//! Composed from basic candle ops, each of these steps stores several intermediate tensors for
//! the backward pass and walks memory many times; fused, each stores only its input (or output)
//! and takes one pass forward and one back. Other devices and dtypes keep the composition of
//! basic ops (see [`super::layers`] and [`super::kernels`]); unit tests check that both give
//! the same values and gradients.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Storage, Tensor};
use rayon::prelude::*;

use super::config::RopeStyle;
use super::kernels::GateActivation;

/// The contiguous f32 slice of a CPU storage, or an error naming `op`.
fn f32_slice<'a>(
    op: &str,
    storage: &'a CpuStorage,
    layout: &Layout,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{op}: f32 only");
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{op}: inputs must be contiguous");
    };
    Ok(&data[start..end])
}

/// Copies a tensor's values (contiguous, f32, CPU) out of the op's captured tensor.
fn captured_f32(op: &str, t: &Tensor) -> candle_core::Result<Vec<f32>> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("{op}: CPU tensors only");
    };
    Ok(f32_slice(op, cpu, layout)?.to_vec())
}

impl GateActivation {
    /// The activation's derivative.
    #[inline]
    pub(super) fn derivative(self, x: f32) -> f32 {
        match self {
            Self::Silu => {
                let s = 1.0 / (1.0 + (-x).exp());
                s * (1.0 + x * (1.0 - s))
            }
            Self::GeluTanh => {
                const K: f32 = 0.797_884_6;
                const C: f32 = 0.044_715;
                let t = (K * (x + C * x * x * x)).tanh();
                0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * K * (1.0 + 3.0 * C * x * x)
            }
        }
    }
}

/// Gradient of `act(gate) * up` with respect to `gate_up` `[n, 2f]`, given the output's
/// gradient `[n, f]`.
pub(super) struct GatedActivationGrad(pub GateActivation);

impl CustomOp2 for GatedActivationGrad {
    fn name(&self) -> &'static str {
        "gated-activation-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let gate_up = f32_slice(self.name(), s1, l1)?;
        let grad = f32_slice(self.name(), s2, l2)?;
        let (n, two_f) = l1.shape().dims2()?;
        let f = two_f / 2;
        let act = self.0;
        let mut out = vec![0f32; n * two_f];
        out.par_chunks_mut(two_f)
            .zip(gate_up.par_chunks(two_f))
            .zip(grad.par_chunks(f))
            .for_each(|((o, row), g)| {
                let (gate, up) = row.split_at(f);
                let (d_gate, d_up) = o.split_at_mut(f);
                for j in 0..f {
                    d_gate[j] = g[j] * up[j] * act.derivative(gate[j]);
                    d_up[j] = g[j] * act.apply(gate[j]);
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Gradient of a row-wise softmax given its output `y` and the output's gradient `g`:
/// `y * (g - sum(g * y))` per row.
pub(super) struct SoftmaxGrad;

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

/// RMSNorm over the last dimension of `x` with weight `w`, differentiable in both.
pub(super) struct RmsNorm {
    pub eps: f32,
}

impl RmsNorm {
    /// `1 / sqrt(mean(x^2) + eps)` of one row.
    #[inline]
    fn inv_rms(&self, row: &[f32]) -> f32 {
        let ms = row.iter().map(|v| v * v).sum::<f32>() / row.len() as f32;
        1.0 / (ms + self.eps).sqrt()
    }
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm-trainable"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(self.name(), s1, l1)?;
        let w = f32_slice(self.name(), s2, l2)?;
        let h = w.len();
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(h)
            .zip(x.par_chunks(h))
            .for_each(|(o, row)| {
                let r = self.inv_rms(row);
                for ((o, &v), &w) in o.iter_mut().zip(row).zip(w) {
                    *o = v * r * w;
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let dx = x.contiguous()?.apply_op3_no_bwd(
            w,
            &grad,
            &RmsNormGradX {
                norm: RmsNorm { eps: self.eps },
            },
        )?;
        let dw = if w.track_op() {
            let h = w.dim(0)?;
            let r = (x.sqr()?.mean_keepdim(candle_core::D::Minus1)? + self.eps as f64)?
                .sqrt()?
                .recip()?;
            let normed = x.broadcast_mul(&r)?;
            Some((grad * normed)?.reshape(((), h))?.sum(0)?)
        } else {
            None
        };
        Ok((Some(dx), dw))
    }
}

/// `dx` of RMSNorm: `r w g - x r^3 mean(w g x)` per row.
struct RmsNormGradX {
    norm: RmsNorm,
}

impl CustomOp3 for RmsNormGradX {
    fn name(&self) -> &'static str {
        "rms-norm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(self.name(), s1, l1)?;
        let w = f32_slice(self.name(), s2, l2)?;
        let g = f32_slice(self.name(), s3, l3)?;
        let h = w.len();
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(h)
            .zip(x.par_chunks(h).zip(g.par_chunks(h)))
            .for_each(|(o, (x, g))| {
                let r = self.norm.inv_rms(x);
                let dot: f32 = x.iter().zip(g).zip(w).map(|((x, g), w)| x * g * w).sum();
                let c = r * r * r * dot / h as f32;
                for (((o, &x), &g), &w) in o.iter_mut().zip(x).zip(g).zip(w) {
                    *o = r * w * g - x * c;
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Rotary embedding of `x` `[b, heads, t, d]` by per-row tables `cos`, `sin` `[b, t, d / 2]`;
/// with `inverse`, the opposite rotation, which is also its backward.
pub(super) struct Rope {
    pub cos: Tensor,
    pub sin: Tensor,
    pub style: RopeStyle,
    pub inverse: bool,
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "rope-trainable"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(self.name(), storage, layout)?;
        let (b, heads, t, d) = layout.shape().dims4()?;
        let half = d / 2;
        let cos = captured_f32(self.name(), &self.cos)?;
        let sin = captured_f32(self.name(), &self.sin)?;
        if cos.len() != b * t * half || sin.len() != cos.len() {
            candle_core::bail!("rope: tables do not fit [{b}, {t}, {half}]");
        }
        let sign = if self.inverse { -1.0 } else { 1.0 };
        let style = self.style;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(d)
            .zip(x.par_chunks(d))
            .enumerate()
            .for_each(|(r, (o, x))| {
                let (bi, ti) = (r / (heads * t), r % t);
                let base = (bi * t + ti) * half;
                for i in 0..half {
                    let (c, s) = (cos[base + i], sign * sin[base + i]);
                    let (a, bb) = match style {
                        RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                        RopeStyle::Half => (i, i + half),
                    };
                    o[a] = x[a] * c - x[bb] * s;
                    o[bb] = x[a] * s + x[bb] * c;
                }
            });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let inverse = Rope {
            cos: self.cos.clone(),
            sin: self.sin.clone(),
            style: self.style,
            inverse: !self.inverse,
        };
        Ok(Some(grad.contiguous()?.apply_op1(inverse)?))
    }
}

#[cfg(test)]
mod tests {
    use super::super::kernels::tests::max_diff;
    use super::super::kernels::{
        gated_activation, gated_activation_composed, masked_softmax, masked_softmax_composed,
    };
    use super::super::layers::{rms_norm, Rotary};
    use super::*;
    use candle_core::{DType, Device, Var};

    fn randn(dims: &[usize], seed: u64) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n: usize = dims.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random::<f32>() * 4.0 - 2.0).collect();
        Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
    }

    /// Runs `fused` and `composed` on the same variables, checks equal outputs and equal
    /// gradients of a random linear function of the output for every variable.
    fn check(
        vars: &[Var],
        fused: impl Fn(&[Tensor]) -> Tensor,
        composed: impl Fn(&[Tensor]) -> Tensor,
    ) {
        let xs: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let (a, b) = (fused(&xs), composed(&xs));
        assert!(
            max_diff(&a, &b) < 1e-5,
            "outputs differ by {}",
            max_diff(&a, &b)
        );
        let c = randn(a.dims(), 99);
        let ga = (&a * &c).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (&b * &c).unwrap().sum_all().unwrap().backward().unwrap();
        for v in vars {
            let (x, y) = (
                ga.get(v.as_tensor()).unwrap(),
                gb.get(v.as_tensor()).unwrap(),
            );
            let scale = y
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                .max(1.0);
            assert!(
                max_diff(x, y) < 1e-4 * scale,
                "gradients differ by {}",
                max_diff(x, y)
            );
        }
    }

    #[test]
    fn fused_gated_activation_backward_matches_composition() {
        for act in [GateActivation::Silu, GateActivation::GeluTanh] {
            let x = Var::from_tensor(&randn(&[7, 12], 1)).unwrap();
            check(
                &[x],
                |t| gated_activation(&t[0], act).unwrap(),
                |t| gated_activation_composed(&t[0], act).unwrap(),
            );
        }
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

    #[test]
    fn fused_rms_norm_backward_matches_composition() {
        let x = Var::from_tensor(&randn(&[5, 3, 8], 3)).unwrap();
        let w = Var::from_tensor(&randn(&[8], 4)).unwrap();
        check(
            &[x, w],
            |t| rms_norm(&t[0], &t[1], 1e-5).unwrap(),
            |t| candle_nn::ops::rms_norm_slow(&t[0], &t[1], 1e-5).unwrap(),
        );
    }

    #[test]
    fn fused_rope_backward_matches_composition() {
        for style in [RopeStyle::Interleaved, RopeStyle::Half] {
            let rotary = Rotary::new(10_000.0, 8, 16, style, &Device::Cpu, DType::F32).unwrap();
            let positions = Tensor::new(&[0u32, 1, 2, 5, 7, 9], &Device::Cpu).unwrap();
            let (cos, sin) = rotary.gather(&positions, 2, 3).unwrap();
            let x = Var::from_tensor(&randn(&[2, 4, 3, 8], 5)).unwrap();
            check(
                &[x],
                |t| rotary.apply(&t[0], &cos, &sin).unwrap(),
                |t| rotary.apply_composed(&t[0], &cos, &sin).unwrap(),
            );
            // Untracked inputs take candle's kernel: the same rotation.
            let plain = randn(&[2, 4, 3, 8], 6);
            let fused = rotary.apply(&plain, &cos, &sin).unwrap();
            let composed = rotary.apply_composed(&plain, &cos, &sin).unwrap();
            assert!(max_diff(&fused, &composed) < 1e-5);
        }
    }
}
