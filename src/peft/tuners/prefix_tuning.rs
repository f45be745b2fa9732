//! Prefix tuning (Li & Liang 2021): trainable keys/values at every layer, produced by a
//! reparameterisation MLP.

use serde::{Deserialize, Serialize};

use crate::peft::params::Attachment;
use crate::peft::past::TrainablePast;

/// Settings of prefix tuning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefixTuningConfig {
    /// Key/value positions per layer. 10.
    pub length: usize,
    /// Width of the reparameterisation MLP. 512, as Li & Liang use for GPT-2 medium.
    pub hidden: usize,
}

impl Default for PrefixTuningConfig {
    fn default() -> Self {
        Self {
            length: 10,
            hidden: 512,
        }
    }
}

impl PrefixTuningConfig {
    /// Checks the settings, with a message naming the bad one.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.length > 0, "prefix length must be at least 1");
        anyhow::ensure!(self.hidden > 0, "prefix hidden width must be at least 1");
        Ok(())
    }

    /// Adds the embeddings and the MLP, named and laid out as HF peft's prefix encoder.
    pub(crate) fn attach(&self, a: &mut Attachment) -> anyhow::Result<()> {
        let cfg = a.engine.config().clone();
        let (h, kv_dim) = (cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim);
        let (l, m) = (self.length, self.hidden);
        let out = cfg.num_layers * 2 * kv_dim;
        let embedding = a.init.normal(&[l, h], 1.0);
        let w1 = a.init.kaiming(&[m, h], h);
        let b1 = a.init.kaiming(&[m], h);
        let w2 = a.init.kaiming(&[out, m], m);
        let b2 = a.init.kaiming(&[out], m);
        a.past = Some(TrainablePast::Mlp {
            embedding: a.add("prefix_encoder.embedding.weight", &embedding)?,
            w1: a.add("prefix_encoder.transform.0.weight", &w1)?,
            b1: a.add("prefix_encoder.transform.0.bias", &b1)?,
            w2: a.add("prefix_encoder.transform.2.weight", &w2)?,
            b2: a.add("prefix_encoder.transform.2.bias", &b2)?,
            kv_shape: (cfg.num_layers, cfg.num_kv_heads, cfg.head_dim),
        });
        Ok(())
    }
}
