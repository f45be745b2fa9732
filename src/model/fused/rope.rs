//! The rotary position embedding as one op whose backward is the opposite rotation.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::storage::{captured_f32, f32_slice};
use crate::model::config::RopeStyle;

/// Rotary embedding of `x` `[b, heads, t, d]` by per-row tables `cos`, `sin` `[b, t, d / 2]`;
/// with `inverse`, the opposite rotation, which is also its backward.
pub(crate) struct Rope {
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
    use super::*;
    use crate::model::fused::testing::{check, max_diff, randn};
    use crate::model::layers::Rotary;
    use candle_core::{DType, Device, Var};

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
