//! The gradient-based tuning methods by name.

use serde::{Deserialize, Serialize};

/// A gradient-based tuning method (the comparison set of the BBT and BBTv2 papers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Every weight of the model.
    ModelTuning,
    /// L trainable input vectors (Lester et al. 2021), prefix or suffix placement.
    PromptTuning,
    /// Trainable keys/values at every layer produced by a reparameterisation MLP (Li & Liang 2021).
    PrefixTuning,
    /// Trainable keys/values at every layer, directly (Liu et al. 2022, P-tuning v2).
    #[value(name = "p-tuning-v2")]
    #[serde(rename = "p-tuning-v2")]
    PTuningV2,
    /// Low-rank updates of chosen projections (Hu et al. 2021).
    Lora,
    /// Houlsby adapters: a bottleneck after attention and after the feed-forward sublayer.
    Adapter,
    /// A scaled bottleneck parallel to the feed-forward sublayer (He et al. 2022).
    ParallelAdapter,
    /// Prefix keys/values plus a parallel adapter at the feed-forward sublayer (He et al. 2022).
    MamAdapter,
    /// Biases only (Ben Zaken et al. 2022); the Llama and Gemma blocks have none, so zero biases
    /// are added to every projection.
    Bitfit,
    /// Norm weights plus the verbalizer rows of the output head.
    NormTuning,
    /// Model tuning with a fresh Bernoulli(p) mask on the gradients at every step (Xu et al.
    /// 2021, Child-Tuning_F).
    ChildTuningF,
    /// Model tuning of a fixed child network: the fraction p of weights with the largest Fisher
    /// information on the training data (Xu et al. 2021, Child-Tuning_D).
    ChildTuningD,
    /// The input followed directly by the prediction position, no template words, trained with
    /// BitFit (Logan IV et al. 2022).
    NullPrompt,
}

impl Method {
    /// Every method, in the order reports list them.
    pub const ALL: [Method; 13] = [
        Method::ModelTuning,
        Method::PromptTuning,
        Method::PrefixTuning,
        Method::PTuningV2,
        Method::Lora,
        Method::Adapter,
        Method::ParallelAdapter,
        Method::MamAdapter,
        Method::Bitfit,
        Method::NormTuning,
        Method::ChildTuningF,
        Method::ChildTuningD,
        Method::NullPrompt,
    ];

    /// The method's name as the command line and `result.json` spell it.
    pub fn name(self) -> &'static str {
        match self {
            Method::ModelTuning => "model-tuning",
            Method::PromptTuning => "prompt-tuning",
            Method::PrefixTuning => "prefix-tuning",
            Method::PTuningV2 => "p-tuning-v2",
            Method::Lora => "lora",
            Method::Adapter => "adapter",
            Method::ParallelAdapter => "parallel-adapter",
            Method::MamAdapter => "mam-adapter",
            Method::Bitfit => "bitfit",
            Method::NormTuning => "norm-tuning",
            Method::ChildTuningF => "child-tuning-f",
            Method::ChildTuningD => "child-tuning-d",
            Method::NullPrompt => "null-prompt",
        }
    }

    /// The method's name in words, as papers and reports write it.
    pub fn title(self) -> &'static str {
        match self {
            Method::ModelTuning => "Model tuning (every weight)",
            Method::PromptTuning => "Prompt tuning",
            Method::PrefixTuning => "Prefix-tuning",
            Method::PTuningV2 => "P-tuning v2",
            Method::Lora => "LoRA",
            Method::Adapter => "Adapter (Houlsby)",
            Method::ParallelAdapter => "Parallel adapter",
            Method::MamAdapter => "MAM adapter",
            Method::Bitfit => "BitFit (biases only)",
            Method::NormTuning => "Norm tuning",
            Method::ChildTuningF => "Child-Tuning_F",
            Method::ChildTuningD => "Child-Tuning_D",
            Method::NullPrompt => "Null prompt + BitFit",
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
