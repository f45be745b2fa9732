//! Bottleneck adapters: sequential (Houlsby et al. 2019) and parallel (He et al. 2022).

use serde::{Deserialize, Serialize};

use crate::model::linear::Adapter;
use crate::peft::params::Attachment;

/// Settings of an adapter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdapterConfig {
    /// Bottleneck width. 64.
    pub bottleneck: usize,
    /// Output scale s: 1 for the sequential adapter, 4 for the parallel one (He et al.).
    pub scale: f64,
}

impl AdapterConfig {
    /// Houlsby's sequential adapter: width 64, scale 1.
    pub fn sequential() -> Self {
        Self {
            bottleneck: 64,
            scale: 1.0,
        }
    }

    /// He et al.'s parallel adapter: width 64, scale 4.
    pub fn parallel() -> Self {
        Self {
            bottleneck: 64,
            scale: 4.0,
        }
    }

    /// Checks the settings, with a message naming the bad one.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.bottleneck > 0, "adapter bottleneck must be at least 1");
        anyhow::ensure!(self.scale.is_finite(), "adapter scale must be finite");
        Ok(())
    }

    /// Adds a bottleneck after the attention and after the feed-forward sublayer of every block.
    pub(crate) fn attach_sequential(&self, a: &mut Attachment) -> anyhow::Result<()> {
        self.attach(a, AdapterPlaces::SEQUENTIAL)
    }

    /// Adds a bottleneck beside the feed-forward sublayer of every block.
    pub(crate) fn attach_parallel(&self, a: &mut Attachment) -> anyhow::Result<()> {
        self.attach(a, AdapterPlaces::PARALLEL)
    }

    fn attach(&self, a: &mut Attachment, places: AdapterPlaces) -> anyhow::Result<()> {
        let h = a.weights.embed.dim(1)?;
        let m = self.bottleneck;
        for li in 0..a.weights.layers.len() {
            let make = |a: &mut Attachment, place: &str| -> anyhow::Result<Adapter> {
                let name = |p: &str| format!("layers.{li}.adapter_{place}.{p}");
                let down = a.init.kaiming(&[m, h], h);
                let (zeros_m, zeros_hm, zeros_h) = (
                    a.init.zeros(&[m]),
                    a.init.zeros(&[h, m]),
                    a.init.zeros(&[h]),
                );
                Ok(Adapter {
                    down: a.add(&name("down.weight"), &down)?,
                    down_bias: a.add(&name("down.bias"), &zeros_m)?,
                    up: a.add(&name("up.weight"), &zeros_hm)?,
                    up_bias: a.add(&name("up.bias"), &zeros_h)?,
                    scale: self.scale,
                })
            };
            let after_attention = places
                .after_attention
                .then(|| make(a, "attention"))
                .transpose()?;
            let after_ffn = places.after_ffn.then(|| make(a, "ffn")).transpose()?;
            let beside_ffn = places.beside_ffn.then(|| make(a, "parallel")).transpose()?;
            let slots = &mut a.weights.layers[li].adapters;
            slots.after_attention = after_attention;
            slots.after_ffn = after_ffn;
            slots.beside_ffn = beside_ffn;
        }
        Ok(())
    }
}

/// Where in a block adapters go.
#[derive(Clone, Copy)]
struct AdapterPlaces {
    after_attention: bool,
    after_ffn: bool,
    beside_ffn: bool,
}

impl AdapterPlaces {
    const SEQUENTIAL: Self = Self {
        after_attention: true,
        after_ffn: true,
        beside_ffn: false,
    };
    const PARALLEL: Self = Self {
        after_attention: false,
        after_ffn: false,
        beside_ffn: true,
    };
}
