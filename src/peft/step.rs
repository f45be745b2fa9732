//! One optimisation step of any method: forward with gradients, the loss over the verbalizer
//! logits, backward, Child-Tuning's gradient masks, clipping, AdamW.

use std::collections::HashMap;

use candle_core::{DType, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::method::Method;
use super::optim::{clip_grad_norm, AdamW};
use super::trainable::Trainable;
use super::tuners::TunerConfig;
use crate::engine::Engine;
use crate::scoring::{loss_tensor, EncodedSplit};

/// Mixed into the seed of Child-Tuning_F's mask draws.
const CHILD_MASK_STREAM: u64 = 0x00c4_11d0_0000_0001;

/// Which gradients a step keeps (Child-Tuning; everything for the other methods).
enum GradientMask {
    All,
    /// Child-Tuning_F: a fresh Bernoulli(p) mask each step, kept entries scaled by 1/p.
    Bernoulli(f64),
    /// Child-Tuning_D: a fixed 0/1 mask per parameter (the child network).
    Fixed(Vec<Tensor>),
}

/// What a step measured.
#[derive(Debug, Clone, Copy)]
pub struct StepReport {
    /// Training loss of the batch before the update.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
}

/// A method's parameters with their optimizer.
pub struct Trainer {
    pub trainable: Trainable,
    pub optimizer: AdamW,
    mask: GradientMask,
    /// Draws Child-Tuning_F's masks; saved with a checkpoint.
    pub rng: ChaCha8Rng,
}

impl Trainer {
    /// A trainer with fresh optimizer state. Child-Tuning_D still needs
    /// [`Trainer::select_child_network`] before its first step.
    pub fn new(trainable: Trainable, seed: u64) -> candle_core::Result<Self> {
        let optimizer = AdamW::new(trainable.params(), &trainable.config().training)?;
        let mask = match &trainable.config().tuner {
            TunerConfig::ChildTuningF(c) => GradientMask::Bernoulli(c.p),
            _ => GradientMask::All,
        };
        Ok(Self {
            trainable,
            optimizer,
            mask,
            // A stream of its own, apart from the initialisation's.
            rng: ChaCha8Rng::seed_from_u64(seed ^ CHILD_MASK_STREAM),
        })
    }

    /// Mean loss of the examples `idx` and its gradient for every parameter (zeros where the
    /// loss does not depend on one), in the order of [`Trainable::params`]. With a micro-batch
    /// setting the examples run in chunks of that many and the chunks' gradients are summed,
    /// weighted by their share of `idx`: the same gradient up to rounding, with the memory of
    /// one chunk's graph.
    pub fn gradients(
        &self,
        engine: &mut Engine,
        split: &EncodedSplit,
        idx: &[usize],
    ) -> anyhow::Result<(f64, Vec<Tensor>)> {
        let chunk = self
            .trainable
            .config()
            .training
            .micro_batch
            .unwrap_or(idx.len())
            .max(1);
        if chunk >= idx.len() {
            return self.chunk_gradients(engine, split, idx);
        }
        let total = idx.len() as f64;
        let mut loss = 0.0;
        let mut sum: Option<Vec<Tensor>> = None;
        for part in idx.chunks(chunk) {
            let share = part.len() as f64 / total;
            let (value, grads) = self.chunk_gradients(engine, split, part)?;
            loss += share * value;
            let grads = grads
                .iter()
                .map(|g| g.affine(share, 0.0))
                .collect::<candle_core::Result<Vec<_>>>()?;
            sum = Some(match sum {
                None => grads,
                Some(acc) => acc
                    .iter()
                    .zip(&grads)
                    .map(|(a, g)| a + g)
                    .collect::<candle_core::Result<Vec<_>>>()?,
            });
        }
        Ok((loss, sum.expect("idx has at least one chunk")))
    }

    /// [`Trainer::gradients`] of the examples `idx` in one pass.
    fn chunk_gradients(
        &self,
        engine: &mut Engine,
        split: &EncodedSplit,
        idx: &[usize],
    ) -> anyhow::Result<(f64, Vec<Tensor>)> {
        let logits = self.trainable.logits(engine, split, idx, true)?;
        let labels: Vec<usize> = idx.iter().map(|&i| split.labels[i]).collect();
        let loss = loss_tensor(&logits, &labels, self.trainable.config().training.loss)?;
        let value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let mut store = loss.backward()?;
        let grads = self
            .trainable
            .params()
            .iter()
            .map(|p| match store.remove(p.var.as_tensor()) {
                // Detached: a parameter's gradient may be built from tracked activations (say
                // x^T @ grad), and kept in the optimizer's moments it would keep this step's
                // whole graph alive, one more graph every step.
                Some(g) => Ok(g.detach()),
                None => p.var.zeros_like(),
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok((value, grads))
    }

    /// One AdamW step on the examples `idx` at learning rate `lr`.
    pub fn step(
        &mut self,
        engine: &mut Engine,
        split: &EncodedSplit,
        idx: &[usize],
        lr: f64,
    ) -> anyhow::Result<StepReport> {
        let (loss, mut grads) = self.gradients(engine, split, idx)?;
        match &self.mask {
            GradientMask::All => {}
            GradientMask::Bernoulli(p) => {
                let p = *p;
                for g in grads.iter_mut() {
                    let n = g.elem_count();
                    let keep: Vec<f32> = (0..n)
                        .map(|_| {
                            if self.rng.random::<f64>() < p {
                                (1.0 / p) as f32
                            } else {
                                0.0
                            }
                        })
                        .collect();
                    let mask = Tensor::from_vec(keep, g.shape(), &candle_core::Device::Cpu)?
                        .to_device(g.device())?
                        .to_dtype(g.dtype())?;
                    *g = (&*g * mask)?;
                }
            }
            GradientMask::Fixed(masks) => {
                for (g, m) in grads.iter_mut().zip(masks) {
                    *g = (&*g * m)?;
                }
            }
        }
        let grad_norm = clip_grad_norm(&mut grads, self.trainable.config().training.max_grad_norm)?;
        self.optimizer.step(self.trainable.params(), &grads, lr)?;
        Ok(StepReport { loss, grad_norm })
    }

    /// Child-Tuning_D: accumulates the Fisher information (squared gradients) of every weight
    /// over the training examples in batches of `batch`, and fixes the child network to the
    /// fraction p of weights with the largest values. Other methods ignore it.
    pub fn select_child_network(
        &mut self,
        engine: &mut Engine,
        split: &EncodedSplit,
        batch: usize,
    ) -> anyhow::Result<()> {
        let TunerConfig::ChildTuningD(child) = &self.trainable.config().tuner else {
            return Ok(());
        };
        let p = child.p;
        let all: Vec<usize> = (0..split.len()).collect();
        let mut fisher: Option<Vec<Tensor>> = None;
        for chunk in all.chunks(batch.max(1)) {
            let (_, grads) = self.gradients(engine, split, chunk)?;
            let squares = grads
                .iter()
                .map(|g| g.sqr())
                .collect::<candle_core::Result<Vec<_>>>()?;
            fisher = Some(match fisher {
                None => squares,
                Some(acc) => acc
                    .iter()
                    .zip(&squares)
                    .map(|(a, s)| a + s)
                    .collect::<candle_core::Result<Vec<_>>>()?,
            });
        }
        let fisher = fisher.ok_or_else(|| anyhow::anyhow!("no training examples"))?;
        let threshold = top_fraction_threshold(&fisher, p)?;
        let masks = fisher
            .iter()
            .map(|f| f.ge(threshold)?.to_dtype(f.dtype()))
            .collect::<candle_core::Result<Vec<_>>>()?;
        self.mask = GradientMask::Fixed(masks);
        Ok(())
    }

    /// Child-Tuning_D's mask as named tensors, for a checkpoint (empty for other methods).
    pub fn mask_state(&self) -> HashMap<String, Tensor> {
        match &self.mask {
            GradientMask::Fixed(masks) => self
                .trainable
                .params()
                .iter()
                .zip(masks)
                .map(|(p, m)| (format!("{}.child_mask", p.name), m.clone()))
                .collect(),
            _ => HashMap::new(),
        }
    }

    /// Restores a mask saved by [`Trainer::mask_state`].
    pub fn restore_mask(&mut self, state: &HashMap<String, Tensor>) -> anyhow::Result<()> {
        if self.trainable.config().method() != Method::ChildTuningD {
            return Ok(());
        }
        let masks = self
            .trainable
            .params()
            .iter()
            .map(|p| {
                let key = format!("{}.child_mask", p.name);
                state
                    .get(&key)
                    .ok_or_else(|| anyhow::anyhow!("checkpoint lacks {key}"))?
                    .to_dtype(p.var.dtype())
                    .map_err(Into::into)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        self.mask = GradientMask::Fixed(masks);
        Ok(())
    }
}

/// The value at or above which the `fraction` largest entries of `values` lie.
fn top_fraction_threshold(values: &[Tensor], fraction: f64) -> anyhow::Result<f64> {
    let mut all: Vec<f32> = Vec::new();
    for v in values {
        all.extend(v.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?);
    }
    anyhow::ensure!(!all.is_empty(), "no parameters");
    let keep = ((fraction * all.len() as f64).ceil() as usize).clamp(1, all.len());
    let nth = all.len() - keep;
    let (_, value, _) = all.select_nth_unstable_by(nth, f32::total_cmp);
    Ok(*value as f64)
}
