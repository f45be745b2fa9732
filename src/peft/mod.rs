//! Gradient-based parameter-efficient tuning on the engine's own forward: the comparison side
//! of the BBT papers (prompt tuning, prefix tuning, P-tuning v2, LoRA, adapters, BitFit, norm
//! tuning, Child-Tuning, model tuning, null prompts).
//!
//! - [`config`]: every method and setting, with its default, in one place.
//! - [`trainable`]: a method's parameters and where they plug into the model.
//! - [`optim`]: AdamW, the learning-rate schedule, gradient clipping.
//! - [`step`]: one optimisation step (and Child-Tuning's gradient masks).

pub mod config;
pub mod optim;
pub mod step;
pub mod trainable;

pub use config::{Method, MethodConfig, MethodSetting};
pub use step::{StepReport, Trainer};
pub use trainable::{Param, Trainable};
