//! Every gradient method and every one of its settings, with its default and where the default
//! comes from, in one place. `bbt-experiments train` exposes each field as a flag.

use serde::{Deserialize, Serialize};

use crate::protocol::{Loss, Placement};

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

/// A setting that only some methods read; every other setting applies to all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodSetting {
    PromptLength,
    Placement,
    PrefixLength,
    PrefixHidden,
    LoraRank,
    LoraAlpha,
    LoraDropout,
    LoraTargets,
    AdapterBottleneck,
    AdapterScale,
    ChildP,
}

impl MethodSetting {
    /// The methods that read it.
    pub fn methods(self) -> &'static [Method] {
        use Method::*;
        match self {
            Self::PromptLength | Self::Placement => &[PromptTuning],
            Self::PrefixLength => &[PrefixTuning, PTuningV2, MamAdapter],
            Self::PrefixHidden => &[PrefixTuning],
            Self::LoraRank | Self::LoraAlpha | Self::LoraDropout | Self::LoraTargets => &[Lora],
            Self::AdapterBottleneck | Self::AdapterScale => &[Adapter, ParallelAdapter, MamAdapter],
            Self::ChildP => &[ChildTuningF, ChildTuningD],
        }
    }

    /// Its command-line flag.
    pub fn flag(self) -> &'static str {
        match self {
            Self::PromptLength => "--prompt-length",
            Self::Placement => "--placement",
            Self::PrefixLength => "--prefix-length",
            Self::PrefixHidden => "--prefix-hidden",
            Self::LoraRank => "--lora-rank",
            Self::LoraAlpha => "--lora-alpha",
            Self::LoraDropout => "--lora-dropout",
            Self::LoraTargets => "--lora-targets",
            Self::AdapterBottleneck => "--adapter-bottleneck",
            Self::AdapterScale => "--adapter-scale",
            Self::ChildP => "--child-p",
        }
    }

    /// An error naming the setting and the methods it is for, unless `method` reads it.
    pub fn check(self, method: Method) -> anyhow::Result<()> {
        let methods = self.methods();
        anyhow::ensure!(
            methods.contains(&method),
            "{} does not apply to {method}: it is a setting of {}",
            self.flag(),
            methods
                .iter()
                .map(|m| m.name())
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(())
    }
}

/// The settings of one training run; saved in every checkpoint and in `result.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodConfig {
    pub method: Method,
    /// Peak learning rate of AdamW (see [`MethodConfig::defaults`] per method).
    pub learning_rate: f64,
    /// AdamW's decoupled weight decay. 0, as HF's Trainer defaults to.
    pub weight_decay: f64,
    /// AdamW's betas and epsilon (PyTorch's defaults: 0.9, 0.999, 1e-8).
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Fraction of the steps over which the learning rate warms up linearly from 0; it then
    /// decays linearly to 0 at the last step. 0.06 (RoBERTa's fine-tuning recipe).
    pub warmup_ratio: f64,
    /// Gradients are rescaled so their global L2 norm is at most this. 1.0 (HF's Trainer).
    pub max_grad_norm: f64,
    /// Optimizer steps. 50: full-batch on 32 examples, 50 epochs (BBT's few-shot baselines
    /// train for a fixed budget and keep the best-dev checkpoint, as here).
    pub steps: usize,
    /// Examples per step; `None` is full-batch (all 2 x 16 training examples of a binary task).
    pub batch_size: Option<usize>,
    /// Evaluate on the dev split every this many steps, keeping the best-dev parameters.
    pub eval_every: usize,
    /// Stop after this many evaluations without a better dev accuracy (0: never stop early).
    pub patience: usize,
    /// Training loss over the verbalizer logits (the loss BBT minimises).
    pub loss: Loss,
    /// Prompt tuning: number of prompt vectors L. 50, as BBT's prompt.
    pub prompt_length: usize,
    /// Prompt tuning: where the prompt goes (as in `bbt tune`).
    pub placement: Placement,
    /// Prefix tuning, P-tuning v2 and MAM: prefix key/value positions per layer.
    pub prefix_length: usize,
    /// Prefix tuning: width of the reparameterisation MLP (Li & Liang use 512 for GPT-2 medium).
    pub prefix_hidden: usize,
    /// LoRA rank r, alpha (the update is scaled by alpha / r) and dropout on its input.
    pub lora_rank: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f32,
    /// LoRA target projections: `q`, `k`, `v`, `o`, `gate`, `up`, `down` (HF names such as
    /// `q_proj` are accepted). q and v, as in the LoRA paper and peft's Llama default.
    pub lora_targets: Vec<String>,
    /// Adapters: bottleneck width.
    pub adapter_bottleneck: usize,
    /// Parallel and MAM adapters: output scale s (He et al. use 4).
    pub adapter_scale: f64,
    /// Child-Tuning: p_F, the keep probability of the gradient mask (F), or p_D, the fraction
    /// of weights in the child network (D).
    pub child_p: f64,
}

impl MethodConfig {
    /// The defaults of `method`. Learning rates follow the method papers' few-shot or small-data
    /// settings, scaled for a model trained with full-batch AdamW on 32 examples; those of LoRA,
    /// prompt tuning, BitFit and model tuning were checked against a third and three times
    /// their value on MR's dev split (`results/lr-sweep-mr-seed42/`, discussed in README).
    pub fn defaults(method: Method) -> Self {
        let learning_rate = match method {
            // LM-BFF / BBT's model-tuning baseline uses 1e-5 for 1,000 steps; 3e-5 for 50.
            Method::ModelTuning | Method::ChildTuningF | Method::ChildTuningD => 3e-5,
            // Prompt vectors live at the embedding scale (std ~0.1 for SmolLM2).
            Method::PromptTuning => 3e-3,
            // Through the reparameterisation MLP every key/value moves with each of its hidden
            // units: a small rate (Li & Liang use 5e-5 to 8e-5 on GPT-2).
            Method::PrefixTuning => 1e-4,
            Method::PTuningV2 => 5e-3,
            Method::Lora | Method::Adapter | Method::ParallelAdapter | Method::MamAdapter => 1e-3,
            Method::Bitfit | Method::NullPrompt | Method::NormTuning => 1e-3,
        };
        Self {
            method,
            learning_rate,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            warmup_ratio: 0.06,
            max_grad_norm: 1.0,
            steps: 50,
            batch_size: None,
            eval_every: 10,
            patience: 0,
            loss: Loss::CrossEntropy,
            prompt_length: 50,
            placement: Placement::Prefix,
            prefix_length: if method == Method::MamAdapter { 30 } else { 10 },
            prefix_hidden: 512,
            lora_rank: 8,
            lora_alpha: 16.0,
            lora_dropout: 0.0,
            lora_targets: vec!["q".into(), "v".into()],
            adapter_bottleneck: if method == Method::MamAdapter {
                128
            } else {
                64
            },
            adapter_scale: if method == Method::Adapter { 1.0 } else { 4.0 },
            child_p: 0.3,
        }
    }

    /// Checks the settings, with a message naming the bad one.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.learning_rate > 0.0 && self.learning_rate.is_finite(),
            "learning rate must be positive"
        );
        anyhow::ensure!(self.steps > 0, "steps must be at least 1");
        anyhow::ensure!(self.eval_every > 0, "eval-every must be at least 1");
        anyhow::ensure!(
            (0.0..1.0).contains(&self.warmup_ratio),
            "warmup ratio must be in [0, 1)"
        );
        anyhow::ensure!(
            self.batch_size != Some(0),
            "batch size must be at least 1 (omit it for full-batch)"
        );
        anyhow::ensure!(
            (0.0..1.0).contains(&(self.lora_dropout as f64)),
            "LoRA dropout must be in [0, 1)"
        );
        anyhow::ensure!(
            self.child_p > 0.0 && self.child_p <= 1.0,
            "child-tuning p must be in (0, 1]"
        );
        let needs_positive = [
            ("prompt length", self.prompt_length, Method::PromptTuning),
            ("prefix length", self.prefix_length, Method::PrefixTuning),
            ("prefix length", self.prefix_length, Method::PTuningV2),
            ("prefix length", self.prefix_length, Method::MamAdapter),
            ("LoRA rank", self.lora_rank, Method::Lora),
            (
                "adapter bottleneck",
                self.adapter_bottleneck,
                Method::Adapter,
            ),
            (
                "adapter bottleneck",
                self.adapter_bottleneck,
                Method::ParallelAdapter,
            ),
            (
                "adapter bottleneck",
                self.adapter_bottleneck,
                Method::MamAdapter,
            ),
        ];
        for (what, value, method) in needs_positive {
            anyhow::ensure!(
                self.method != method || value > 0,
                "{what} must be at least 1 for {method}"
            );
        }
        if self.method == Method::Lora {
            anyhow::ensure!(!self.lora_targets.is_empty(), "LoRA needs a target module");
            for t in &self.lora_targets {
                anyhow::ensure!(
                    crate::model::weights::Proj::parse(t).is_some(),
                    "unknown LoRA target {t:?}: use q, k, v, o, gate, up or down"
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_method_specific_setting_is_refused_for_other_methods() {
        assert!(MethodSetting::PrefixLength
            .check(Method::MamAdapter)
            .is_ok());
        assert!(MethodSetting::AdapterScale.check(Method::Adapter).is_ok());
        let err = MethodSetting::ChildP
            .check(Method::Lora)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "--child-p does not apply to lora: it is a setting of child-tuning-f, child-tuning-d"
        );
    }
}
