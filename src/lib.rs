//! bbt core library: the model engine shared by the server, the client and the experiments.
//!
//! - [`assets`]: real models fetched from registry packages into a verified cache.
//! - [`tokenizer`]: tokenizers built from a model file's own metadata.
//! - [`model`]: architectures (Llama family, Gemma 3), weights, the packed decoder forward.
//! - [`engine`]: the public forward with continuous prompts, prefix/suffix sharing, verbalizer
//!   readout.
//! - [`projection`], [`protocol`]: BBT's `A·z + p0`; the HTTP types shared by client and server.
//! - [`scoring`]: a task's examples under candidate prompts -> loss, accuracy, F1.
//! - [`peft`]: the gradient-based methods the experiments compare BBT with, on the same forward.
//! - [`tasks`]: task definitions, data readers, built-in tasks, the few-shot protocol.
//! - [`device`], [`cli`]: `--device` parsing and the `--model/--device` flags of every binary.

pub mod assets;
pub mod cli;
pub mod device;
pub mod engine;
pub mod model;
pub mod peft;
pub mod projection;
pub mod protocol;
pub mod scoring;
pub mod tasks;
pub mod tokenizer;

pub use engine::{Engine, ForwardOutput, ModelInfo, Prompt, Readout, Row, Segment};
pub use model::decoder::KvCache;
