//! Command-line pieces shared by the binaries (`bbt`, `bbt-server`, `bbt-experiments`).

#[cfg(feature = "engine")]
use candle_core::{DType, Device};

use crate::assets::DEFAULT_MODEL;
#[cfg(feature = "engine")]
use crate::engine::{default_dtype, Engine};
use crate::protocol::Loss;

/// The compute dtype a model is loaded in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DTypeArg {
    /// bf16 on GPUs and on CPUs with native bf16 matmuls (AMX or AVX512-BF16) once oneMKL
    /// (Intel) or oneDNN (others) is loaded; f32 elsewhere.
    Auto,
    F32,
    Bf16,
    F16,
}

/// `--model`, `--device` and `--dtype`, for every command that loads a model.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// Model: a known asset name (fetched on first use), a .gguf file or a HF-style directory.
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub model: String,
    /// Device: cpu, cuda or cuda:N (cuda needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Dtype of the model. On a GPU, of its weights and activations; on a CPU, bf16 rounds only
    /// the matmuls' inputs (f32 accumulation, f32 norms, softmax and activations). Logits,
    /// losses and the projected prompts stay f32 whatever it is.
    #[arg(long, value_enum, default_value_t = DTypeArg::Auto)]
    pub dtype: DTypeArg,
}

impl ModelArgs {
    /// The flags that make a child process (`bbt serve`, `train`) load the same model the same
    /// way.
    pub fn to_flags(&self) -> Vec<String> {
        let dtype = clap::ValueEnum::to_possible_value(&self.dtype)
            .expect("every dtype has a name")
            .get_name()
            .to_string();
        vec![
            "--model".into(),
            self.model.clone(),
            "--device".into(),
            self.device.clone(),
            "--dtype".into(),
            dtype,
        ]
    }
}

#[cfg(feature = "engine")]
impl ModelArgs {
    /// Opens the device named by `--device`.
    pub fn open_device(&self) -> anyhow::Result<Device> {
        crate::device::parse_device(&self.device)
    }

    /// The compute dtype `--dtype` names on `device`.
    pub fn dtype_on(&self, device: &Device) -> DType {
        match self.dtype {
            DTypeArg::Auto => default_dtype(device),
            DTypeArg::F32 => DType::F32,
            DTypeArg::Bf16 => DType::BF16,
            DTypeArg::F16 => DType::F16,
        }
    }

    /// Opens the device and loads the model in the chosen dtype.
    pub fn load(&self) -> anyhow::Result<Engine> {
        let device = self.open_device()?;
        let path = crate::assets::resolve_model(&self.model)?;
        Engine::load_path(&path, &device, self.dtype_on(&device))
    }
}

/// A training loss by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LossName {
    /// Cross-entropy over the classes' scores.
    Ce,
    /// Multi-class hinge with `--margin`.
    Hinge,
}

/// `--loss` and `--margin`: the training loss over the verbalizer logits, for every command
/// that trains or tunes.
#[derive(Debug, Clone, clap::Args)]
pub struct LossArgs {
    /// Training loss over the verbalizer logits [default: ce].
    #[arg(long, value_enum)]
    pub loss: Option<LossName>,
    /// Margin of the hinge loss.
    #[arg(long, default_value_t = 1.0)]
    pub margin: f64,
}

impl Default for LossArgs {
    fn default() -> Self {
        Self {
            loss: None,
            margin: 1.0,
        }
    }
}

impl LossArgs {
    /// The loss `--loss` chooses, if it was given.
    pub fn chosen(&self) -> Option<Loss> {
        self.loss.map(|name| match name {
            LossName::Ce => Loss::CrossEntropy,
            LossName::Hinge => Loss::Hinge {
                margin: self.margin,
            },
        })
    }
}
