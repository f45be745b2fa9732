//! Following and stopping a run from the program that embeds the tuner (the Python package's
//! notebook progress bar and its Ctrl-C).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Receives each event of a run as the JSON line `log.jsonl` gets.
pub type Observer = Arc<dyn Fn(&str) + Send + Sync>;

/// How an embedding program follows and stops a run.
#[derive(Clone, Default)]
pub struct Control {
    /// Called with every event.
    pub observer: Option<Observer>,
    /// Once set, the run ends after its next checkpoint.
    pub stop: Arc<AtomicBool>,
}

impl Control {
    /// Asks the run to end after its next checkpoint.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// [`Stopped`] once a stop was asked for.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.stop.load(Ordering::SeqCst) {
            return Err(Stopped.into());
        }
        Ok(())
    }
}

/// The run was stopped on request after a checkpoint; resume it from its folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the run was stopped after its last checkpoint; resume it from its folder")]
pub struct Stopped;
