//! Every setting of a tuning run in one place, with its default and why. Presets:
//! [`TuneConfig::paper`] (BBT, Sun et al. 2022, as its reference code runs it; `bbt tune`'s
//! default), [`TuneConfig::bbtv2`], [`TuneConfig::quick`] (what `bbt quickstart` runs) and
//! [`TuneConfig::rgb`] (the quick preset with BBT-RGB's techniques); the last two chosen by the
//! measurements in `docs/TUNING.md`.

use bbt::protocol::{Distribution, Loss, Placement};
use bbt::tasks::LabelWords;
use serde::{Deserialize, Serialize};

use super::selection::Selection;

/// The settings of one tuning run; saved in every checkpoint and in `result.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TuneConfig {
    /// A task name the server knows (`mr`, `sst2`, ...) or a local task spec file (TOML/JSON),
    /// whose examples are then sent to the server.
    pub task: String,
    /// Few-shot examples per class in train and in dev.
    pub k: usize,
    /// Seed of the few-shot sample, the projection and CMA-ES.
    pub seed: u64,
    /// Training API calls (candidates evaluated on the train split). Paper: 8,000.
    pub budget: u64,
    /// Prompt vectors L. Paper: 50.
    pub prompt_length: usize,
    /// Where the prompt goes. Paper: before the text (prefix).
    pub placement: Placement,
    /// Intrinsic dimension d of z. Paper: 500.
    pub intrinsic_dim: usize,
    /// CMA-ES population (one HTTP request per generation). Paper: 20.
    pub popsize: usize,
    /// CMA-ES initial step size. Paper: 1.
    pub sigma: f64,
    /// Scale of the projection: entries have std `alpha * std(embeddings) / (sqrt(d) * sigma)`
    /// (the BBT reference code). Paper: 1.
    pub alpha: f64,
    /// Distribution of the projection's entries. Paper: normal.
    pub distribution: Distribution,
    /// Training loss. Paper: cross-entropy.
    pub loss: Loss,
    /// Evaluate on the dev split every this many training calls (CMA-ES's mean and the
    /// generation's best sample). Paper: 100.
    pub dev_every: u64,
    /// Which checked prompt becomes the result ([`Selection`]). Paper: the highest dev
    /// accuracy.
    #[serde(default = "default_select")]
    pub select: Selection,
    /// Also score the prompt chosen so far on the test split after these numbers of training
    /// calls (each then checked on dev first), so one run shows what smaller budgets would
    /// have given. Paper: none (the test split is scored once, at the end).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub test_at: Vec<u64>,
    /// Separable CMA-ES (diagonal covariance).
    pub diagonal: bool,
    /// Box bound `|z_i| <= bound` for CMA-ES, none if absent. Paper: none.
    pub bound: Option<f64>,
    /// Measure the manual prompt's zero-shot test accuracy (L = 0) before tuning.
    pub zero_shot: bool,
    /// BBTv2 (Sun et al., EMNLP 2022): a prompt at every layer, one projection and one CMA-ES
    /// per layer, tuned by divide and conquer (each round runs one generation per layer, the
    /// other layers fixed at their best). In the suffix placement the texts stay cached across
    /// calls, as for BBT. BBT: off.
    #[serde(default)]
    pub deep: bool,
    /// Score only a fixed subset of N test examples (the same ones for every seed and method),
    /// to bound the cost of comparisons. Paper: the whole test set.
    #[serde(default)]
    pub test_limit: Option<usize>,
    /// Prompt transfer (as in PPT, Gu et al. 2022): start from the prompt of an earlier BBT run
    /// (its folder or its `best_prompt.safetensors`), e.g. one tuned on another task, as `p0`
    /// instead of zeros. Paper: none.
    #[serde(default)]
    pub p0_from: Option<std::path::PathBuf>,
    /// Start from text (as BBT-RGB does): `p0` = the embeddings of this instruction or these
    /// demonstrations, its first `L` tokens (repeated when it has fewer), embedded by the
    /// server. Paper: none (`p0 = 0`).
    #[serde(default)]
    pub p0_text: Option<String>,
    /// Start from demonstrations (as BBT-RGB does): `p0` = the embeddings of the first `L`
    /// tokens of training examples in the template, each followed by its label word, in an
    /// order drawn from the run's seed; assembled and embedded by the server. Paper: off.
    #[serde(default)]
    pub p0_demonstrations: bool,
    /// Training calls, out of `budget`, given to a local search after CMA-ES: COBYLA started
    /// from the best `z` CMA-ES found, one candidate per call (BBT-RGB's two-stage search, Sun
    /// et al. 2024). Paper (BBT): 0, CMA-ES only.
    #[serde(default)]
    pub local_calls: u64,
    /// COBYLA's initial trust-region radius in `z` (its `rhobeg`). BBT-RGB: 0.2, with CMA-ES
    /// at sigma 1.
    #[serde(default = "default_local_radius")]
    pub local_radius: f64,
    /// Label words to use instead of the task's own, one entry per class: a word or a list of
    /// words, the class scoring the mean of its words' logits (BBT-RGB's multiple label
    /// words). Paper: the task's one word per class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_words: Option<Vec<LabelWords>>,
}

fn default_local_radius() -> f64 {
    0.2
}

fn default_select() -> Selection {
    Selection::DevAccuracy
}

impl TuneConfig {
    /// BBT's settings: L = 50 prefix, d = 500, population 20, sigma 1, normal A with alpha 1,
    /// cross-entropy, 8,000 calls, dev every 100 calls.
    pub fn paper(task: &str) -> Self {
        Self {
            task: task.to_string(),
            k: 16,
            seed: 42,
            budget: 8000,
            prompt_length: 50,
            placement: Placement::Prefix,
            intrinsic_dim: 500,
            popsize: 20,
            sigma: 1.0,
            alpha: 1.0,
            distribution: Distribution::Normal,
            loss: Loss::CrossEntropy,
            dev_every: 100,
            select: default_select(),
            test_at: Vec::new(),
            diagonal: false,
            bound: None,
            zero_shot: false,
            deep: false,
            test_limit: None,
            p0_from: None,
            p0_text: None,
            p0_demonstrations: false,
            local_calls: 0,
            local_radius: default_local_radius(),
            label_words: None,
        }
    }

    /// BBTv2's settings (its reference code's README): BBT's with a deep prompt, CMA-ES sigma
    /// 0.2 and alpha 0.2, so each layer's projection has the std of that layer's hidden states
    /// over sqrt(d); population 20, 8,000 calls.
    pub fn bbtv2(task: &str) -> Self {
        Self {
            sigma: 0.2,
            alpha: 0.2,
            deep: true,
            ..Self::paper(task)
        }
    }

    /// `bbt quickstart`'s settings: a few prompt vectors right before the template's tail, so
    /// each call reuses the cached texts and costs a few positions per example; see
    /// `docs/TUNING.md` for what was tried and measured.
    pub fn quick(task: &str) -> Self {
        Self {
            budget: 600,
            prompt_length: 5,
            placement: Placement::Suffix,
            intrinsic_dim: 100,
            popsize: 20,
            dev_every: 60,
            zero_shot: true,
            ..Self::paper(task)
        }
    }

    /// `--preset rgb`: the quick preset with BBT-RGB's techniques, as measured in
    /// `docs/TUNING.md`: COBYLA for the last third of the calls, from CMA-ES's best point,
    /// several label words per class where the task has built-in lists, and the search's final
    /// point as the result instead of the best of 32 dev examples.
    pub fn rgb(task: &str) -> Self {
        Self {
            local_calls: 200,
            label_words: bbt::tasks::several_label_words(task),
            select: Selection::Final,
            ..Self::quick(task)
        }
    }

    /// Checks the numbers; a message naming the setting for each mistake.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("k", self.k as f64),
            ("budget", self.budget as f64),
            ("intrinsic_dim", self.intrinsic_dim as f64),
            ("dev_every", self.dev_every as f64),
            ("sigma", self.sigma),
            ("alpha", self.alpha),
            ("local_radius", self.local_radius),
        ];
        if let Some((name, value)) = positive.iter().find(|(_, v)| !(*v > 0.0 && v.is_finite())) {
            return Err(format!("{name} must be positive, got {value}"));
        }
        if self.popsize < 2 {
            return Err(format!("popsize must be at least 2, got {}", self.popsize));
        }
        if self.budget < self.popsize as u64 + self.local_calls {
            return Err(format!(
                "budget {} leaves less than one CMA-ES generation (popsize {}) before the {} \
                 local-search calls",
                self.budget, self.popsize, self.local_calls
            ));
        }
        if self.deep && self.local_calls > 0 {
            return Err(
                "the local search (COBYLA) refines BBT's prompt; it does not run with BBTv2's \
                 deep prompt"
                    .into(),
            );
        }
        let p0_sources = [
            self.p0_from.is_some(),
            self.p0_text.is_some(),
            self.p0_demonstrations,
        ];
        if self.deep && p0_sources.contains(&true) {
            return Err(
                "p0_from, p0_text and p0_demonstrations set BBT's input prompt, not BBTv2's".into(),
            );
        }
        if p0_sources.iter().filter(|&&set| set).count() > 1 {
            return Err("p0_from, p0_text and p0_demonstrations each set p0: choose one".into());
        }
        if self.p0_text.as_deref().is_some_and(|t| t.trim().is_empty()) {
            return Err("p0_text is empty".into());
        }
        if let Some(m) = self.test_at.iter().find(|&&m| m == 0 || m >= self.budget) {
            return Err(format!(
                "test_at {m} is not between 1 and the budget {} (the end of the run is always \
                 scored on test)",
                self.budget - 1
            ));
        }
        if self.prompt_length == 0 {
            return Err("prompt_length must be at least 1".into());
        }
        if let Some(b) = self.bound {
            if !(b > 0.0 && b.is_finite()) {
                return Err(format!("bound must be positive, got {b}"));
            }
        }
        if let Loss::Hinge { margin } = self.loss {
            if !(margin >= 0.0 && margin.is_finite()) {
                return Err(format!("hinge margin must be >= 0, got {margin}"));
            }
        }
        Ok(())
    }
}
