//! Prompt tuning (Lester et al. 2021): L trainable input vectors.

use serde::{Deserialize, Serialize};

use crate::peft::params::{Attachment, TrainablePrompt};
use crate::protocol::Placement;

/// Settings of prompt tuning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptTuningConfig {
    /// Number of prompt vectors L. 50, as BBT's prompt.
    pub length: usize,
    /// Where the prompt goes, as in `bbt tune`. Prefix.
    pub placement: Placement,
}

impl Default for PromptTuningConfig {
    fn default() -> Self {
        Self {
            length: 50,
            placement: Placement::Prefix,
        }
    }
}

impl PromptTuningConfig {
    /// Checks the settings, with a message naming the bad one.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.length > 0, "prompt length must be at least 1");
        Ok(())
    }

    /// Adds the prompt, initialised (as Lester et al.) from the embeddings of sampled
    /// vocabulary tokens.
    pub(crate) fn attach(&self, a: &mut Attachment) -> anyhow::Result<()> {
        let ids = a.sample_tokens(self.length);
        let prompt = a.engine.embed_tokens(&ids)?;
        let embeddings = a.add("prompt_embeddings", &prompt)?;
        a.prompt = Some(TrainablePrompt {
            embeddings,
            placement: self.placement,
        });
        Ok(())
    }
}
