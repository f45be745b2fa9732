//! Gradient-based parameter-efficient tuning on the engine's own forward: the comparison side
//! of the BBT papers (prompt tuning, prefix tuning, P-tuning v2, LoRA, adapters, BitFit, norm
//! tuning, Child-Tuning, model tuning, null prompts).
//!
//! - [`method`]: the methods by name.
//! - [`tuners`]: one module per method: its settings and where its parameters plug in.
//! - [`config`]: a run's settings: the method's own and the shared training settings.
//! - [`params`], [`past`]: what tuners build with (named parameters, a trainable past).
//! - [`trainable`]: a method's parameters attached to the model, and its forward.
//! - [`optim`]: AdamW, the learning-rate schedule, gradient clipping.
//! - [`step`]: one optimisation step (and Child-Tuning's gradient masks).

pub mod config;
pub mod method;
pub mod optim;
pub mod params;
pub mod past;
pub mod step;
pub mod trainable;
pub mod tuners;

pub use config::{MethodConfig, TrainingConfig};
pub use method::Method;
pub use params::Param;
pub use step::{StepReport, Trainer};
pub use trainable::Trainable;
pub use tuners::TunerConfig;
