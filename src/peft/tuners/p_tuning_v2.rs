//! P-tuning v2 (Liu et al. 2022): trainable keys/values at every layer, directly.

use serde::{Deserialize, Serialize};

use crate::engine::{Row, Segment};
use crate::peft::params::Attachment;
use crate::peft::past::TrainablePast;

/// Settings of P-tuning v2.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PTuningV2Config {
    /// Key/value positions per layer. 10.
    pub length: usize,
}

impl Default for PTuningV2Config {
    fn default() -> Self {
        Self { length: 10 }
    }
}

impl PTuningV2Config {
    /// Checks the settings, with a message naming the bad one.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.length > 0, "prefix length must be at least 1");
        Ok(())
    }

    /// Adds the keys/values.
    pub(crate) fn attach(&self, a: &mut Attachment) -> anyhow::Result<()> {
        attach_direct_past(a, self.length)
    }
}

/// Adds `length` trainable key/value positions at every layer, starting from those of as many
/// sampled vocabulary tokens run through the model, so training starts from activations the
/// model knows.
pub(crate) fn attach_direct_past(a: &mut Attachment, length: usize) -> anyhow::Result<()> {
    let ids = a.sample_tokens(length);
    let cache = a
        .engine
        .prefill(&[Row::new(vec![Segment::Tokens(ids)])], &[])?;
    let mut layers = Vec::with_capacity(cache.layers.len());
    for (li, (k, v)) in cache.layers.iter().enumerate() {
        let k = a.add(&format!("prefix.{li}.key"), k)?;
        let v = a.add(&format!("prefix.{li}.value"), v)?;
        layers.push((k, v));
    }
    a.past = Some(TrainablePast::Direct(layers));
    Ok(())
}
