//! bbt core library: the model engine shared by the server, the client and the experiments.
//!
//! Always built (all a remote-only client needs):
//! - [`protocol`]: the HTTP types shared by client and server.
//! - [`tasks`]: task definitions, data readers, built-in tasks, the few-shot protocol.
//! - [`metrics`]: loss, accuracy, F1 and contextual calibration from class scores.
//! - [`assets`]: real models and data packages fetched from registry packages into a verified
//!   cache.
//! - [`help`]: the check that every binary's flags document themselves.
//! - `testing` (tests and the `test-util` feature only): the paper's datasets or a clear skip,
//!   small random-weight models.
//! - [`cli`]: the flags every binary shares (`--model/--device/--dtype`, `--loss/--margin`).
//!
//! With the `engine` feature (default), the model stack:
//! - [`tokenizer`]: tokenizers built from a model file's own metadata.
//! - [`model`]: architectures (Llama family, Gemma 3), weights, the packed decoder forward.
//! - [`engine`]: the public forward with continuous prompts, prefix/suffix sharing, verbalizer
//!   readout.
//! - [`projection`]: BBT's `A·z + p0`.
//! - [`scoring`]: a task's examples under candidate prompts -> loss, accuracy, F1.
//! - [`peft`]: the gradient-based methods the experiments compare BBT with, on the same forward.
//! - [`blas`]: the CPU's matmul kernels (oneMKL, oneDNN or OpenBLAS loaded at run time,
//!   candle's gemm as fallback).
//! - [`device`]: `--device` parsing.

pub mod assets;
pub mod cli;
pub mod help;
pub mod metrics;
pub mod protocol;
pub mod tasks;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;

#[cfg(feature = "engine")]
pub mod blas;
#[cfg(feature = "engine")]
pub mod device;
#[cfg(feature = "engine")]
pub mod engine;
#[cfg(feature = "engine")]
pub mod model;
#[cfg(feature = "engine")]
pub mod peft;
#[cfg(feature = "engine")]
pub mod projection;
#[cfg(feature = "engine")]
pub mod scoring;
#[cfg(feature = "engine")]
pub mod tokenizer;

#[cfg(feature = "engine")]
pub use engine::{Engine, ForwardOutput, ModelInfo, Prompt, Readout, Row, Segment};
#[cfg(feature = "engine")]
pub use model::decoder::KvCache;
