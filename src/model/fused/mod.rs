//! Fused CPU ops for the steps that, composed of basic candle ops, would walk memory several
//! times and keep several intermediate tensors for the backward pass: the MLP's gated
//! activation, attention's masked softmax, RMSNorm and the rotary embedding. One file per op,
//! holding its forward and its backward.
//!
//! Each is a candle custom op on f32 CPU tensors, parallel over rows with rayon. Other devices
//! and dtypes take the equivalent composition of (differentiable) candle ops, so results agree
//! everywhere; each op's tests check both in value and in gradient.

mod gated_activation;
mod masked_softmax;
mod rms_norm;
mod rope;
mod storage;
#[cfg(test)]
mod testing;
mod vector_math;

pub use gated_activation::{gated_activation, GateActivation};
pub use masked_softmax::masked_softmax;
pub(crate) use rms_norm::RmsNorm;
pub(crate) use rope::Rope;
