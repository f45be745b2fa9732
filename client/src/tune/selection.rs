//! Which of the prompts checked on dev becomes the run's result. With 16 examples per class
//! the dev split has 32 sentences, and choosing the highest of ~20 dev accuracies (BBT's rule)
//! rewards the prompt that happened to suit those 32; the other rules trade that selection for
//! a smoother score (the dev loss), fewer, steadier candidates (the search's estimate only) or
//! no selection at all (`final`). Every rule's pick is tracked during a run, so a researcher
//! can score each one afterwards; the configured rule's pick is the result.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The rule that chooses the final prompt among those checked on dev.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Selection {
    /// The highest dev accuracy among every prompt checked (the search's estimate and each
    /// checked generation's best sample), ties broken by the lower dev loss. BBT's rule.
    DevAccuracy,
    /// The lowest dev loss among every prompt checked.
    DevLoss,
    /// The highest dev accuracy among the search's estimates only (ties: lower dev loss).
    MeanDevAccuracy,
    /// The lowest dev loss among the search's estimates only.
    MeanDevLoss,
    /// The search's last estimate; dev is only reported.
    Final,
}

impl Selection {
    /// Every rule, in the order the CLI lists them.
    pub const ALL: [Selection; 5] = [
        Selection::DevAccuracy,
        Selection::DevLoss,
        Selection::MeanDevAccuracy,
        Selection::MeanDevLoss,
        Selection::Final,
    ];

    /// The rule's name on the command line and in JSON (`dev-accuracy`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Selection::DevAccuracy => "dev-accuracy",
            Selection::DevLoss => "dev-loss",
            Selection::MeanDevAccuracy => "mean-dev-accuracy",
            Selection::MeanDevLoss => "mean-dev-loss",
            Selection::Final => "final",
        }
    }

    /// The rule named `name`.
    pub fn parse(name: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|rule| rule.name() == name)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|r| r.name()).collect();
                format!("`{name}`: expected one of {}", names.join(", "))
            })
    }

    /// Whether `candidate` replaces `current` as this rule's pick.
    fn prefers(self, candidate: &Checked, current: Option<&BestPrompt>) -> bool {
        let estimate = candidate.kind == CandidateKind::Estimate;
        let by_accuracy = |b: &BestPrompt| {
            candidate.accuracy > b.dev_accuracy
                || (candidate.accuracy == b.dev_accuracy && candidate.loss < b.dev_loss)
        };
        let by_loss = |b: &BestPrompt| candidate.loss < b.dev_loss;
        match self {
            Selection::Final => estimate,
            Selection::DevAccuracy => current.is_none_or(by_accuracy),
            Selection::DevLoss => current.is_none_or(by_loss),
            Selection::MeanDevAccuracy => estimate && current.is_none_or(by_accuracy),
            Selection::MeanDevLoss => estimate && current.is_none_or(by_loss),
        }
    }
}

/// What a checked prompt is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CandidateKind {
    /// The search's own estimate: CMA-ES's mean, the local search's best point, BBTv2's
    /// chosen layers.
    Estimate,
    /// The best-training-loss sample of the generation just run.
    Sample,
}

/// A prompt scored on dev (logged without its `z`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Checked {
    pub kind: CandidateKind,
    #[serde(skip_serializing)]
    pub z: Vec<f32>,
    pub accuracy: f64,
    pub loss: f64,
}

/// A prompt checked on dev and kept by a selection rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BestPrompt {
    /// `d` numbers; BBTv2: `layers * d`, layer by layer.
    pub z: Vec<f32>,
    pub dev_accuracy: f64,
    pub dev_loss: f64,
    /// Training calls when it was found.
    pub api_calls: u64,
}

/// Each rule's pick so far.
pub type Picks = BTreeMap<Selection, BestPrompt>;

/// Updates every rule's pick with the prompts of one dev check, made after `api_calls`
/// training calls.
pub fn update(picks: &mut Picks, checked: &[Checked], api_calls: u64) {
    for rule in Selection::ALL {
        for candidate in checked {
            if rule.prefers(candidate, picks.get(&rule)) {
                picks.insert(
                    rule,
                    BestPrompt {
                        z: candidate.z.clone(),
                        dev_accuracy: candidate.accuracy,
                        dev_loss: candidate.loss,
                        api_calls,
                    },
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked(kind: CandidateKind, tag: f32, accuracy: f64, loss: f64) -> Checked {
        Checked {
            kind,
            z: vec![tag],
            accuracy,
            loss,
        }
    }

    fn pick(picks: &Picks, rule: Selection) -> (f32, u64) {
        let p = &picks[&rule];
        (p.z[0], p.api_calls)
    }

    #[test]
    fn each_rule_keeps_its_own_pick() {
        use CandidateKind::{Estimate, Sample};
        let mut picks = Picks::new();
        // Check 1 (call 60): the sample is more accurate, the mean has the lower loss.
        update(
            &mut picks,
            &[
                checked(Estimate, 1.0, 0.70, 0.60),
                checked(Sample, 2.0, 0.75, 0.65),
            ],
            60,
        );
        // Check 2 (call 120): a sample ties the best accuracy with a lower loss; the mean is
        // worse on both.
        update(
            &mut picks,
            &[
                checked(Estimate, 3.0, 0.65, 0.62),
                checked(Sample, 4.0, 0.75, 0.61),
            ],
            120,
        );
        // Check 3 (call 180): the mean has the lowest loss of all, at a low accuracy.
        update(
            &mut picks,
            &[
                checked(Estimate, 5.0, 0.60, 0.55),
                checked(Sample, 6.0, 0.50, 0.70),
            ],
            180,
        );
        assert_eq!(pick(&picks, Selection::DevAccuracy), (4.0, 120));
        assert_eq!(pick(&picks, Selection::DevLoss), (5.0, 180));
        assert_eq!(pick(&picks, Selection::MeanDevAccuracy), (1.0, 60));
        assert_eq!(pick(&picks, Selection::MeanDevLoss), (5.0, 180));
        assert_eq!(pick(&picks, Selection::Final), (5.0, 180));
    }

    #[test]
    fn names_round_trip_and_match_json() {
        for rule in Selection::ALL {
            assert_eq!(Selection::parse(rule.name()), Ok(rule));
            assert_eq!(
                serde_json::to_value(rule).unwrap(),
                serde_json::json!(rule.name())
            );
        }
        let err = Selection::parse("best").unwrap_err();
        assert!(err.contains("dev-loss") && err.contains("final"), "{err}");
    }
}
