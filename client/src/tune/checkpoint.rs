//! The whole state of a run after each generation, written atomically to `checkpoint.json`, so
//! `--resume` continues exactly where a killed run left off.

use std::path::Path;

use bbt::protocol::CreateSessionRequest;
use serde::{Deserialize, Serialize};

use super::config::TuneConfig;
use super::local::LocalSearch;
use super::selection::{BestPrompt, Picks};
use crate::cmaes::Ipop;

/// File name of the checkpoint in the output folder.
pub const CHECKPOINT_FILE: &str = "checkpoint.json";

/// One point of the learning curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// Training calls so far.
    pub api_calls: u64,
    /// Best training loss of this generation.
    pub train_loss: f64,
    /// Dev accuracy of the prompt kept at this point, when dev was evaluated.
    pub dev_accuracy: Option<f64>,
}

/// The test accuracy of the prompt chosen after some training calls (`test_at`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestPoint {
    /// Training calls so far.
    pub api_calls: u64,
    pub test_accuracy: f64,
    pub test_f1: Option<f64>,
}

/// Everything needed to continue a run.
#[derive(Debug, Serialize, Deserialize)]
pub struct Checkpoint {
    pub config: TuneConfig,
    /// The session as created (examples included for local tasks), recreated when lost.
    pub session_request: CreateSessionRequest,
    pub session_id: Option<String>,
    /// One CMA-ES per tuned prompt: one for BBT, one per layer for BBTv2.
    pub searches: Vec<Ipop>,
    /// BBTv2: each layer's chosen `z` (its search's best so far; empty before its first
    /// generation), which the session holds fixed while other layers are tuned.
    #[serde(default)]
    pub layer_z: Vec<Vec<f32>>,
    /// The search whose generation comes next.
    #[serde(default)]
    pub next_search: usize,
    pub train_calls: u64,
    /// Dev, test and zero-shot calls.
    pub other_calls: u64,
    pub curve: Vec<CurvePoint>,
    /// Each selection rule's pick so far; the configured rule's is the run's result.
    #[serde(default)]
    pub picks: Picks,
    /// The test accuracy at each of the config's `test_at` milestones passed so far.
    #[serde(default)]
    pub test_curve: Vec<TestPoint>,
    pub best_train_loss: f64,
    /// The local search after CMA-ES, once begun.
    #[serde(default)]
    pub local: Option<LocalSearch>,
    pub zero_shot_test_accuracy: Option<f64>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Wall time spent by earlier processes of this run.
    pub wall_seconds: f64,
}

impl Checkpoint {
    /// The configured selection rule's pick so far.
    pub fn best(&self) -> Option<&BestPrompt> {
        self.picks.get(&self.config.select)
    }

    /// Writes to a temporary file and renames it over the old checkpoint: a kill mid-write
    /// leaves the previous one intact.
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        let tmp = dir.join(format!("{CHECKPOINT_FILE}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec(self)?)?;
        std::fs::rename(&tmp, dir.join(CHECKPOINT_FILE))?;
        Ok(())
    }

    /// Reads `dir/checkpoint.json`.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(CHECKPOINT_FILE);
        let bytes = std::fs::read(&path).map_err(|e| {
            anyhow::anyhow!("cannot resume: no checkpoint at {}: {e}", path.display())
        })?;
        serde_json::from_slice(&bytes)
            .map_err(|e| anyhow::anyhow!("{} is not a bbt checkpoint: {e}", path.display()))
    }
}
