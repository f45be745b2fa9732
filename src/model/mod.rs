//! Model architectures: configuration, weight loading, shared layers and the decoder forward.
//! One file per concern. The engine ([`crate::engine`]) runs the decoder; the gradient methods
//! ([`crate::peft`]) attach to its layers; the configuration and weights are also read by the
//! benchmarks and by the test models of [`crate::testing`].

pub mod config;
pub mod decoder;
pub mod fused;
pub mod layers;
pub mod linear;
pub mod packed_linear;
pub mod weights;
