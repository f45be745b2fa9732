//! Command-line pieces shared by the binaries (`bbt`, `bbt-server`, `bbt-experiments`).

use crate::assets::DEFAULT_MODEL;
use crate::engine::{default_dtype, Engine};

/// `--model` and `--device`, for every command that loads a model.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// Model: a known asset name (fetched on first use), a .gguf file or a HF-style directory.
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub model: String,
    /// Device: cpu, cuda or cuda:N (cuda needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

impl ModelArgs {
    /// Opens the device and loads the model in the device's default dtype.
    pub fn load(&self) -> anyhow::Result<Engine> {
        let device = crate::device::parse_device(&self.device)?;
        let path = crate::assets::resolve_model(&self.model)?;
        Engine::load_path(&path, &device, default_dtype(&device))
    }
}
