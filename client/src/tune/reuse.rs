//! A tuned prompt used again: `best_prompt.json` scored on a split of its own task or of
//! another (`bbt eval`, and `Client.evaluate` in Python).

use std::path::Path;

use bbt::protocol::{CandidateResult, SessionInfo, SplitName};

use super::outputs::SavedPrompt;
use super::task_request;
use crate::http::ServerClient;

/// Another task to score a prompt on: its name or spec file, and its few-shot sample.
pub struct OtherTask<'a> {
    /// A task name the server knows, or a local spec file.
    pub task: &'a str,
    /// Few-shot examples per class of its train and dev splits.
    pub k: usize,
    /// Seed of the few-shot sample.
    pub seed: u64,
}

impl SavedPrompt {
    /// Reads a `best_prompt.json` written by `bbt tune`.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let saved: SavedPrompt = serde_json::from_str(&text).map_err(|e| {
            anyhow::anyhow!("{} is not a bbt best_prompt.json: {e}", path.display())
        })?;
        anyhow::ensure!(!saved.z.is_empty(), "{} holds no z", path.display());
        Ok(saved)
    }

    /// Scores the prompt on `split` of its own task, or of `other`, in a session of its own
    /// settings (one API call; a deep prompt is scored whole). Returns the session's info
    /// and the result.
    pub fn score(
        &self,
        client: &mut ServerClient,
        other: Option<OtherTask>,
        split: SplitName,
    ) -> anyhow::Result<(SessionInfo, CandidateResult)> {
        let mut session = self.session.clone();
        if let Some(other) = other {
            session.task = task_request(other.task, other.k, other.seed, None, None)?;
        }
        let info = client.create_session(&session)?;
        let scored = client.evaluate(&info.id, &self.z, split, None);
        let _ = client.delete_session(&info.id);
        let result = scored?
            .results
            .into_iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("the server returned no result"))?;
        Ok((info, result))
    }
}
