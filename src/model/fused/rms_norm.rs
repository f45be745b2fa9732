//! RMSNorm, differentiable in its input and its weight, fused for training: the forward keeps
//! only its input and the backward takes one pass.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::storage::f32_slice;

/// RMSNorm over the last dimension of `x` with weight `w`, differentiable in both.
pub(crate) struct RmsNorm {
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

#[cfg(test)]
mod tests {
    use crate::model::fused::testing::{check, randn};
    use crate::model::layers::rms_norm;
    use candle_core::Var;

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
}
