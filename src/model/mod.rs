//! Model architectures: configuration, weight loading, shared layers and the decoder forward.
//! One file per concern; the engine ([`crate::engine`]) is the only caller.

pub mod config;
pub mod decoder;
pub mod fused;
pub mod layers;
pub mod linear;
pub mod packed_linear;
pub mod random;
pub mod weights;
