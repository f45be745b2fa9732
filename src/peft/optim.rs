//! AdamW (Loshchilov & Hutter 2019, as PyTorch implements it), the linear warm-up/decay schedule
//! and global gradient-norm clipping.
//!
//! candle-nn has an AdamW, but its moments are private, so a run could not be checkpointed and
//! resumed exactly; this one exposes its state as named tensors.

use std::collections::HashMap;

use candle_core::Tensor;

use super::config::TrainingConfig;
use super::params::Param;

/// AdamW with its first and second moments per parameter.
pub struct AdamW {
    /// Steps taken (the bias corrections use it).
    pub steps: usize,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
}

impl AdamW {
    /// Zero moments for `params`, settings from `config`.
    pub fn new(params: &[Param], config: &TrainingConfig) -> candle_core::Result<Self> {
        let zeros = params
            .iter()
            .map(|p| p.var.zeros_like())
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            steps: 0,
            m: zeros.clone(),
            v: zeros,
            beta1: config.beta1,
            beta2: config.beta2,
            eps: config.eps,
            weight_decay: config.weight_decay,
        })
    }

    /// One update of every parameter with its gradient (same order as `params`) at rate `lr`.
    pub fn step(&mut self, params: &[Param], grads: &[Tensor], lr: f64) -> candle_core::Result<()> {
        self.steps += 1;
        let t = self.steps as i32;
        let (b1, b2) = (self.beta1, self.beta2);
        let correction1 = 1.0 - b1.powi(t);
        let correction2 = 1.0 - b2.powi(t);
        for ((p, g), (m, v)) in params
            .iter()
            .zip(grads)
            .zip(self.m.iter_mut().zip(self.v.iter_mut()))
        {
            *m = ((&*m * b1)? + (g * (1.0 - b1))?)?;
            *v = ((&*v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let denom = ((&*v / correction2)?.sqrt()? + self.eps)?;
            let update = ((&*m / correction1)? / denom)?;
            let decayed = if self.weight_decay > 0.0 {
                (p.var.as_tensor() * (1.0 - lr * self.weight_decay))?
            } else {
                p.var.as_tensor().clone()
            };
            p.var.set(&(decayed - (update * lr)?)?)?;
        }
        Ok(())
    }

    /// The moments as named tensors (`NAME.exp_avg`, `NAME.exp_avg_sq`), for a checkpoint.
    pub fn state(&self, params: &[Param]) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (p, (m, v)) in params.iter().zip(self.m.iter().zip(&self.v)) {
            out.insert(format!("{}.exp_avg", p.name), m.clone());
            out.insert(format!("{}.exp_avg_sq", p.name), v.clone());
        }
        out
    }

    /// Restores moments saved by [`AdamW::state`] after `steps` steps.
    pub fn restore(
        &mut self,
        params: &[Param],
        state: &HashMap<String, Tensor>,
        steps: usize,
    ) -> anyhow::Result<()> {
        for (i, p) in params.iter().enumerate() {
            let get = |suffix: &str| -> anyhow::Result<Tensor> {
                let key = format!("{}.{suffix}", p.name);
                let t = state
                    .get(&key)
                    .ok_or_else(|| anyhow::anyhow!("checkpoint lacks optimizer state {key}"))?;
                anyhow::ensure!(
                    t.dims() == p.var.dims(),
                    "optimizer state {key} has shape {:?}, the parameter {:?}",
                    t.dims(),
                    p.var.dims()
                );
                Ok(t.to_device(p.var.device())?.to_dtype(p.var.dtype())?)
            };
            self.m[i] = get("exp_avg")?;
            self.v[i] = get("exp_avg_sq")?;
        }
        self.steps = steps;
        Ok(())
    }
}

/// The learning rate at `step` (0-based) of `total`: linear warm-up from 0 over the first
/// `warmup_ratio` of the steps, then linear decay to 0 at the end (HF's linear schedule).
pub fn learning_rate_at(step: usize, total: usize, warmup_ratio: f64, peak: f64) -> f64 {
    let warmup = (warmup_ratio * total as f64).ceil() as usize;
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let remaining = total.saturating_sub(step) as f64;
    let decay_steps = total.saturating_sub(warmup).max(1) as f64;
    peak * (remaining / decay_steps).clamp(0.0, 1.0)
}

/// Rescales `grads` in place so their global L2 norm is at most `max_norm`; returns the norm
/// before clipping.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> candle_core::Result<f64> {
    let mut total = 0f64;
    for g in grads.iter() {
        total += g
            .to_dtype(candle_core::DType::F64)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f64>()?;
    }
    let norm = total.sqrt();
    if norm > max_norm && norm > 0.0 {
        let factor = max_norm / (norm + 1e-6);
        for g in grads.iter_mut() {
            *g = (&*g * factor)?;
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peft::config::TrainingConfig;
    use crate::peft::method::Method;
    use candle_core::{Device, Var};

    #[test]
    fn adamw_matches_the_pytorch_update_by_hand() {
        let var = Var::new(&[1.0f64, -2.0], &Device::Cpu).unwrap();
        let params = vec![Param {
            name: "w".into(),
            var,
        }];
        let mut config = TrainingConfig::defaults(Method::Lora);
        config.weight_decay = 0.1;
        let mut opt = AdamW::new(&params, &config).unwrap();
        let g1 = Tensor::new(&[0.5f64, -1.0], &Device::Cpu).unwrap();
        let g2 = Tensor::new(&[0.25f64, 2.0], &Device::Cpu).unwrap();
        opt.step(&params, std::slice::from_ref(&g1), 0.01).unwrap();
        opt.step(&params, std::slice::from_ref(&g2), 0.01).unwrap();
        // The same two steps written out (torch.optim.AdamW semantics).
        let mut want = [1.0f64, -2.0];
        let (mut m, mut v) = ([0f64; 2], [0f64; 2]);
        for (t, g) in [[0.5, -1.0], [0.25, 2.0]].iter().enumerate() {
            let t = (t + 1) as i32;
            for i in 0..2 {
                want[i] *= 1.0 - 0.01 * 0.1;
                m[i] = 0.9 * m[i] + 0.1 * g[i];
                v[i] = 0.999 * v[i] + 0.001 * g[i] * g[i];
                let mh = m[i] / (1.0 - 0.9f64.powi(t));
                let vh = v[i] / (1.0 - 0.999f64.powi(t));
                want[i] -= 0.01 * mh / (vh.sqrt() + 1e-8);
            }
        }
        let got: Vec<f64> = params[0].var.to_vec1().unwrap();
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        let lr = |s| learning_rate_at(s, 100, 0.1, 1.0);
        assert!((lr(0) - 0.1).abs() < 1e-12);
        assert!((lr(9) - 1.0).abs() < 1e-12);
        assert!(lr(10) <= 1.0 && lr(10) > lr(50));
        assert!(lr(99) > 0.0 && lr(99) < 0.02);
        assert_eq!(learning_rate_at(5, 10, 0.0, 2.0), 1.0);
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        let mut grads = vec![
            Tensor::new(&[3.0f32, 0.0], &Device::Cpu).unwrap(),
            Tensor::new(&[4.0f32], &Device::Cpu).unwrap(),
        ];
        let before = clip_grad_norm(&mut grads, 1.0).unwrap();
        assert!((before - 5.0).abs() < 1e-6);
        let after = clip_grad_norm(&mut grads, 1.0).unwrap();
        assert!((after - 1.0).abs() < 1e-5);
    }
}
