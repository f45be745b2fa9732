//! What tests (of this crate and of the crates above it) share, built only for tests and with
//! the `test-util` feature: the paper's datasets or a clear skip, and small random-weight
//! models.

use std::path::{Path, PathBuf};

#[cfg(feature = "engine")]
pub mod random_model;

/// The paper's datasets for a test or bench run from the repository root `workspace`:
/// `$BBT_DATA_DIR`, else `shared/datasets` beside the repository. When that folder is missing it
/// returns `None` and prints one line saying that `who` was skipped and why, so a fresh clone
/// without the data still passes its other tests; with `BBT_REQUIRE_DATA=1` (CI sets it) it
/// panics instead, so a run that must cover the data cannot pass by skipping.
pub fn paper_datasets(workspace: &Path, who: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("BBT_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("../shared/datasets"));
    if dir.is_dir() {
        return Some(dir);
    }
    let why = format!(
        "{who} needs the paper's datasets, and {} is not a folder (set BBT_DATA_DIR; README \
         says where the data comes from)",
        dir.display()
    );
    if std::env::var("BBT_REQUIRE_DATA").is_ok_and(|v| v == "1") {
        panic!("{why}; BBT_REQUIRE_DATA=1 forbids skipping");
    }
    // Straight to stderr, past the test harness's capture, so the skip shows in every run.
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "skipped: {why}");
    None
}

/// Whether every weight of the model trains under `method` (so gradients and optimizer state
/// cover it).
#[cfg(feature = "engine")]
pub fn tunes_all_weights(method: crate::peft::Method) -> bool {
    use crate::peft::Method;
    matches!(
        method,
        Method::ModelTuning | Method::ChildTuningF | Method::ChildTuningD
    )
}

/// `method`'s defaults scaled down (prompt 3, prefix 2, MLP width 8, LoRA rank 2, adapter
/// width 4) so every method runs in milliseconds on a tiny model.
#[cfg(feature = "engine")]
pub fn small_method_config(method: crate::peft::Method) -> crate::peft::MethodConfig {
    use crate::peft::TunerConfig;
    let mut c = crate::peft::MethodConfig::defaults(method);
    match &mut c.tuner {
        TunerConfig::PromptTuning(p) => p.length = 3,
        TunerConfig::PrefixTuning(p) => {
            p.length = 2;
            p.hidden = 8;
        }
        TunerConfig::PTuningV2(p) => p.length = 2,
        TunerConfig::Lora(l) => l.rank = 2,
        TunerConfig::Adapter(a) | TunerConfig::ParallelAdapter(a) => a.bottleneck = 4,
        TunerConfig::MamAdapter(m) => {
            m.prefix_length = 2;
            m.bottleneck = 4;
        }
        _ => {}
    }
    c
}
