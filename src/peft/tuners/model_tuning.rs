//! Model tuning: every weight of the model, and Child-Tuning (Xu et al. 2021), which trains
//! every weight under a gradient mask.

use serde::{Deserialize, Serialize};

use crate::peft::params::Attachment;

/// Settings of Child-Tuning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChildTuningConfig {
    /// p_F, the keep probability of the gradient mask (Child-Tuning_F), or p_D, the fraction of
    /// weights in the child network (Child-Tuning_D), in (0, 1]. 0.3.
    pub p: f64,
}

impl Default for ChildTuningConfig {
    fn default() -> Self {
        Self { p: 0.3 }
    }
}

impl ChildTuningConfig {
    /// Checks the settings, with a message naming the bad one.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.p > 0.0 && self.p <= 1.0,
            "child-tuning p must be in (0, 1]"
        );
        Ok(())
    }
}

/// Makes every weight trainable: embeddings, output head, every block's matrices and norms.
pub(crate) fn attach_all_weights(a: &mut Attachment) -> anyhow::Result<()> {
    a.make_trainable("embed", |w| &mut w.embed)?;
    if a.weights.lm_head.is_some() {
        a.make_trainable("lm_head", |w| w.lm_head.as_mut().expect("checked"))?;
    }
    a.make_trainable("final_norm", |w| &mut w.final_norm)?;
    for li in 0..a.weights.layers.len() {
        for (k, name) in ["wqkv", "wo", "w_gate_up", "w_down"]
            .into_iter()
            .enumerate()
        {
            a.make_trainable(&format!("layers.{li}.{name}"), move |w| {
                &mut w.layers[li].linears_mut()[k].weight
            })?;
        }
        a.make_layer_norms_trainable(li)?;
    }
    Ok(())
}
