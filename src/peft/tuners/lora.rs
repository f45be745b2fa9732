//! LoRA (Hu et al. 2021): low-rank updates of chosen projections.

use serde::{Deserialize, Serialize};

use crate::model::linear::LoraFactors;
use crate::model::weights::Proj;
use crate::peft::params::Attachment;

/// Settings of LoRA.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank r. 8.
    pub rank: usize,
    /// The update is scaled by alpha / r. 16.
    pub alpha: f64,
    /// Dropout on the update's input, in [0, 1). 0.
    pub dropout: f32,
    /// The projections that get an update. q and v, as in the LoRA paper and peft's Llama
    /// default.
    pub targets: Vec<Proj>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            rank: 8,
            alpha: 16.0,
            dropout: 0.0,
            targets: vec![Proj::Q, Proj::V],
        }
    }
}

impl LoraConfig {
    /// Checks the settings, with a message naming the bad one.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.rank > 0, "LoRA rank must be at least 1");
        anyhow::ensure!(
            (0.0..1.0).contains(&self.dropout),
            "LoRA dropout must be in [0, 1)"
        );
        anyhow::ensure!(!self.targets.is_empty(), "LoRA needs a target projection");
        Ok(())
    }

    /// Adds factors A (kaiming-uniform) and B (zeros) to every target projection of every
    /// layer, named as HF peft names them.
    pub(crate) fn attach(&self, a: &mut Attachment) -> anyhow::Result<()> {
        let cfg = a.engine.config().clone();
        let mut targets = self.targets.clone();
        targets.sort();
        targets.dedup();
        for li in 0..a.weights.layers.len() {
            for &proj in &targets {
                let (fan_in, len) = {
                    let (lin, slot) = a.weights.layers[li].proj_mut(proj, &cfg);
                    (lin.in_features(), slot.len)
                };
                let prefix = format!("base_model.model.model.layers.{li}.{}", proj.hf_module());
                let factor_a = a.init.kaiming(&[self.rank, fan_in], fan_in);
                let factor_a = a.add(&format!("{prefix}.lora_A.weight"), &factor_a)?;
                let factor_b = a.init.zeros(&[len, self.rank]);
                let factor_b = a.add(&format!("{prefix}.lora_B.weight"), &factor_b)?;
                let (lin, slot) = a.weights.layers[li].proj_mut(proj, &cfg);
                lin.lora.push(LoraFactors {
                    offset: slot.offset,
                    a: factor_a,
                    b: factor_b,
                    scale: self.alpha / self.rank as f64,
                    dropout: self.dropout,
                });
            }
        }
        Ok(())
    }
}
