//! What every run's `result.json` holds, whatever the method (BBT, BBTv2, a gradient-free
//! baseline, a gradient method): the fields comparisons read. Each method's own result type
//! carries these under the same names, plus its details.

use serde::{Deserialize, Serialize};

/// The method-independent part of a `result.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// `bbt`, `bbtv2`, `manual`, `lora`, ...
    pub method: String,
    pub task: String,
    pub seed: u64,
    /// What the method was allowed: training API calls, or optimizer steps for gradient methods.
    pub budget: u64,
    /// All API calls (training, dev, test); 0 for methods that run the model locally.
    pub api_calls: u64,
    pub train_api_calls: u64,
    pub best_dev_accuracy: Option<f64>,
    pub test_accuracy: Option<f64>,
    /// F1 of class 1, for tasks whose metric includes it.
    pub test_f1: Option<f64>,
    pub test_examples: Option<usize>,
    pub wall_seconds: f64,
    /// HTTP body bytes sent and received.
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Peak resident memory of the process that ran the method (the client, or the trainer).
    pub peak_rss_mb: Option<f64>,
    /// Numbers the method tunes (`d` for BBT, classifier weights for a feature probe).
    #[serde(default)]
    pub trainable_params: Option<usize>,
    /// How the method was applied.
    #[serde(default)]
    pub notes: Vec<String>,
}
