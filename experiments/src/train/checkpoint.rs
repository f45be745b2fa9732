//! A training run's state after every evaluation: `checkpoint.json` (settings, counters, curve,
//! the Child-Tuning_F RNG) naming a tensors file (current and best-dev parameters, AdamW
//! moments, Child-Tuning_D's mask). The tensors go to a new file first and the JSON is renamed
//! over the old one last, so a kill at any point leaves one consistent checkpoint.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::TrainConfig;

/// File name of the checkpoint in the output folder.
pub const CHECKPOINT_FILE: &str = "checkpoint.json";

/// One point of the learning curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepPoint {
    /// Optimizer steps so far.
    pub step: usize,
    /// Training loss of the step's batch.
    pub train_loss: f64,
    /// Dev accuracy after this step, when dev was evaluated.
    pub dev_accuracy: Option<f64>,
}

/// The best-dev parameters so far (their values live in the tensors file as `best.NAME`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BestDev {
    pub step: usize,
    pub dev_accuracy: f64,
    pub dev_loss: f64,
}

/// Everything needed to continue a run, but the tensors.
#[derive(Debug, Serialize, Deserialize)]
pub struct TrainState {
    pub config: TrainConfig,
    pub step: usize,
    pub curve: Vec<StepPoint>,
    pub best: Option<BestDev>,
    /// Evaluations since the best one (early stopping).
    pub evals_since_best: usize,
    pub best_train_loss: f64,
    /// Wall time spent by earlier processes of this run, and their optimizer steps' share.
    pub wall_seconds: f64,
    pub step_seconds: f64,
    pub rng: ChaCha8Rng,
    /// The tensors file of this checkpoint, in the same folder.
    pub tensors_file: String,
}

impl TrainState {
    /// Writes `tensors` to a new file, then this state naming it (atomically), then removes the
    /// previous tensors file.
    pub fn save(&mut self, dir: &Path, tensors: &HashMap<String, Tensor>) -> anyhow::Result<()> {
        let previous = std::mem::take(&mut self.tensors_file);
        self.tensors_file = format!("checkpoint-step{}.safetensors", self.step);
        let tmp = dir.join(format!("{}.tmp", self.tensors_file));
        candle_core::safetensors::save(tensors, &tmp)?;
        std::fs::rename(&tmp, dir.join(&self.tensors_file))?;
        let json_tmp = dir.join(format!("{CHECKPOINT_FILE}.tmp"));
        std::fs::write(&json_tmp, serde_json::to_vec(self)?)?;
        std::fs::rename(&json_tmp, dir.join(CHECKPOINT_FILE))?;
        if !previous.is_empty() && previous != self.tensors_file {
            let _ = std::fs::remove_file(dir.join(previous));
        }
        Ok(())
    }

    /// Reads `dir/checkpoint.json` and its tensors.
    pub fn load(dir: &Path) -> anyhow::Result<(Self, HashMap<String, Tensor>)> {
        let path = dir.join(CHECKPOINT_FILE);
        let bytes = std::fs::read(&path).map_err(|e| {
            anyhow::anyhow!(
                "{} holds no training run: {} cannot be read ({e}); give the --out folder of a \
                 `bbt-experiments train` run",
                dir.display(),
                path.display()
            )
        })?;
        let state: Self = serde_json::from_slice(&bytes).map_err(|e| {
            anyhow::anyhow!("{} is not a bbt training checkpoint: {e}", path.display())
        })?;
        let tensors_path = dir.join(&state.tensors_file);
        let tensors = candle_core::safetensors::load(&tensors_path, &Device::Cpu).map_err(|e| {
            anyhow::anyhow!(
                "checkpoint tensors {} unreadable: {e}",
                tensors_path.display()
            )
        })?;
        Ok((state, tensors))
    }
}
