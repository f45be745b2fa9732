//! The MAM adapter (He et al. 2022): P-tuning v2's keys/values at every layer plus a parallel
//! adapter at the feed-forward sublayer.

use serde::{Deserialize, Serialize};

use super::adapter::AdapterConfig;
use super::p_tuning_v2::attach_direct_past;
use crate::peft::params::Attachment;

/// Settings of the MAM adapter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MamAdapterConfig {
    /// Key/value positions per layer. 30, as He et al.
    pub prefix_length: usize,
    /// Bottleneck width of the parallel adapter. 128.
    pub bottleneck: usize,
    /// Output scale of the parallel adapter. 4.
    pub scale: f64,
}

impl Default for MamAdapterConfig {
    fn default() -> Self {
        Self {
            prefix_length: 30,
            bottleneck: 128,
            scale: 4.0,
        }
    }
}

impl MamAdapterConfig {
    fn adapter(&self) -> AdapterConfig {
        AdapterConfig {
            bottleneck: self.bottleneck,
            scale: self.scale,
        }
    }

    /// Checks the settings, with a message naming the bad one.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.prefix_length > 0, "prefix length must be at least 1");
        self.adapter().validate()
    }

    /// Adds the keys/values, then the parallel adapters.
    pub(crate) fn attach(&self, a: &mut Attachment) -> anyhow::Result<()> {
        attach_direct_past(a, self.prefix_length)?;
        self.adapter().attach_parallel(a)
    }
}
