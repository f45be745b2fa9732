//! One module per method, as HF peft's `tuners/<method>/`: each holds the method's settings
//! (with their defaults and where they come from) and how its parameters attach to the model.
//! [`TunerConfig`] is the method with its settings.

pub mod adapter;
pub mod bitfit;
pub mod lora;
pub mod mam_adapter;
pub mod model_tuning;
pub mod norm_tuning;
pub mod p_tuning_v2;
pub mod prefix_tuning;
pub mod prompt_tuning;

use serde::{Deserialize, Serialize};

pub use adapter::AdapterConfig;
pub use lora::LoraConfig;
pub use mam_adapter::MamAdapterConfig;
pub use model_tuning::ChildTuningConfig;
pub use p_tuning_v2::PTuningV2Config;
pub use prefix_tuning::PrefixTuningConfig;
pub use prompt_tuning::PromptTuningConfig;

use super::method::Method;
use super::params::Attachment;

/// A method with its own settings; serialised as `{"method": NAME, "settings": {...}}`, without
/// `settings` for the methods that have none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", content = "settings", rename_all = "kebab-case")]
pub enum TunerConfig {
    /// Every weight of the model; no settings of its own.
    ModelTuning,
    /// Trainable input vectors.
    PromptTuning(PromptTuningConfig),
    /// Keys/values at every layer through a reparameterisation MLP.
    PrefixTuning(PrefixTuningConfig),
    /// Keys/values at every layer, directly.
    #[serde(rename = "p-tuning-v2")]
    PTuningV2(PTuningV2Config),
    /// Low-rank updates of chosen projections.
    Lora(LoraConfig),
    /// Houlsby's sequential adapters.
    Adapter(AdapterConfig),
    /// A parallel adapter beside the feed-forward sublayer.
    ParallelAdapter(AdapterConfig),
    /// P-tuning v2's keys/values plus a parallel adapter.
    MamAdapter(MamAdapterConfig),
    /// Biases only; no settings of its own.
    Bitfit,
    /// Norm weights and the label words' output rows; no settings of its own.
    NormTuning,
    /// Model tuning under a fresh Bernoulli gradient mask every step.
    ChildTuningF(ChildTuningConfig),
    /// Model tuning of a fixed child network chosen by Fisher information.
    ChildTuningD(ChildTuningConfig),
    /// BitFit without template words; no settings of its own.
    NullPrompt,
}

impl TunerConfig {
    /// `method` with its default settings.
    pub fn defaults(method: Method) -> Self {
        match method {
            Method::ModelTuning => Self::ModelTuning,
            Method::PromptTuning => Self::PromptTuning(Default::default()),
            Method::PrefixTuning => Self::PrefixTuning(Default::default()),
            Method::PTuningV2 => Self::PTuningV2(Default::default()),
            Method::Lora => Self::Lora(Default::default()),
            Method::Adapter => Self::Adapter(AdapterConfig::sequential()),
            Method::ParallelAdapter => Self::ParallelAdapter(AdapterConfig::parallel()),
            Method::MamAdapter => Self::MamAdapter(Default::default()),
            Method::Bitfit => Self::Bitfit,
            Method::NormTuning => Self::NormTuning,
            Method::ChildTuningF => Self::ChildTuningF(Default::default()),
            Method::ChildTuningD => Self::ChildTuningD(Default::default()),
            Method::NullPrompt => Self::NullPrompt,
        }
    }

    /// The method.
    pub fn method(&self) -> Method {
        match self {
            Self::ModelTuning => Method::ModelTuning,
            Self::PromptTuning(_) => Method::PromptTuning,
            Self::PrefixTuning(_) => Method::PrefixTuning,
            Self::PTuningV2(_) => Method::PTuningV2,
            Self::Lora(_) => Method::Lora,
            Self::Adapter(_) => Method::Adapter,
            Self::ParallelAdapter(_) => Method::ParallelAdapter,
            Self::MamAdapter(_) => Method::MamAdapter,
            Self::Bitfit => Method::Bitfit,
            Self::NormTuning => Method::NormTuning,
            Self::ChildTuningF(_) => Method::ChildTuningF,
            Self::ChildTuningD(_) => Method::ChildTuningD,
            Self::NullPrompt => Method::NullPrompt,
        }
    }

    /// Checks the method's settings, with a message naming the bad one.
    pub fn validate(&self) -> anyhow::Result<()> {
        match self {
            Self::ModelTuning | Self::Bitfit | Self::NormTuning | Self::NullPrompt => Ok(()),
            Self::PromptTuning(c) => c.validate(),
            Self::PrefixTuning(c) => c.validate(),
            Self::PTuningV2(c) => c.validate(),
            Self::Lora(c) => c.validate(),
            Self::Adapter(c) | Self::ParallelAdapter(c) => c.validate(),
            Self::MamAdapter(c) => c.validate(),
            Self::ChildTuningF(c) | Self::ChildTuningD(c) => c.validate(),
        }
    }

    /// Registers the method's parameters and attaches them to the model; `label_word_ids` are
    /// the verbalizer's token ids (norm tuning trains their rows of the output head).
    pub(crate) fn attach(&self, a: &mut Attachment, label_word_ids: &[u32]) -> anyhow::Result<()> {
        match self {
            Self::ModelTuning | Self::ChildTuningF(_) | Self::ChildTuningD(_) => {
                model_tuning::attach_all_weights(a)
            }
            Self::PromptTuning(c) => c.attach(a),
            Self::PrefixTuning(c) => c.attach(a),
            Self::PTuningV2(c) => c.attach(a),
            Self::Lora(c) => c.attach(a),
            Self::Adapter(c) => c.attach_sequential(a),
            Self::ParallelAdapter(c) => c.attach_parallel(a),
            Self::MamAdapter(c) => c.attach(a),
            Self::Bitfit | Self::NullPrompt => bitfit::attach_biases(a),
            Self::NormTuning => norm_tuning::attach_norms_and_head(a, label_word_ids),
        }
    }

    /// The key/value positions per layer of the methods that train a past (prefix tuning,
    /// P-tuning v2, MAM).
    pub fn prefix_length_mut(&mut self) -> Option<&mut usize> {
        match self {
            Self::PrefixTuning(c) => Some(&mut c.length),
            Self::PTuningV2(c) => Some(&mut c.length),
            Self::MamAdapter(c) => Some(&mut c.prefix_length),
            _ => None,
        }
    }

    /// The bottleneck width of the adapter methods.
    pub fn adapter_bottleneck_mut(&mut self) -> Option<&mut usize> {
        match self {
            Self::Adapter(c) | Self::ParallelAdapter(c) => Some(&mut c.bottleneck),
            Self::MamAdapter(c) => Some(&mut c.bottleneck),
            _ => None,
        }
    }

    /// The output scale of the adapter methods.
    pub fn adapter_scale_mut(&mut self) -> Option<&mut f64> {
        match self {
            Self::Adapter(c) | Self::ParallelAdapter(c) => Some(&mut c.scale),
            Self::MamAdapter(c) => Some(&mut c.scale),
            _ => None,
        }
    }

    /// Prompt tuning's settings.
    pub fn prompt_tuning_mut(&mut self) -> Option<&mut PromptTuningConfig> {
        match self {
            Self::PromptTuning(c) => Some(c),
            _ => None,
        }
    }

    /// Prefix tuning's settings.
    pub fn prefix_tuning_mut(&mut self) -> Option<&mut PrefixTuningConfig> {
        match self {
            Self::PrefixTuning(c) => Some(c),
            _ => None,
        }
    }

    /// LoRA's settings.
    pub fn lora_mut(&mut self) -> Option<&mut LoraConfig> {
        match self {
            Self::Lora(c) => Some(c),
            _ => None,
        }
    }

    /// Child-Tuning's settings (both variants).
    pub fn child_tuning_mut(&mut self) -> Option<&mut ChildTuningConfig> {
        match self {
            Self::ChildTuningF(c) | Self::ChildTuningD(c) => Some(c),
            _ => None,
        }
    }

    /// The methods whose settings include what `slot` reaches, in report order.
    pub fn methods_with<T>(slot: impl Fn(&mut TunerConfig) -> Option<&mut T>) -> Vec<Method> {
        Method::ALL
            .into_iter()
            .filter(|&m| slot(&mut TunerConfig::defaults(m)).is_some())
            .collect()
    }
}
