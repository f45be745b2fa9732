//! The gradient-free baselines of the BBT paper, over the server API: the manual prompt
//! (zero-shot), in-context learning (training examples as demonstrations before the input),
//! contextual calibration of either (Zhao et al. 2021), and a feature probe (a classifier
//! trained on the model's final hidden states). None of them searches a prompt; each costs a
//! few API calls.

pub mod probe;

use std::time::Instant;

use bbt::metrics;
use bbt::protocol::{
    CreateSessionRequest, DemonstrationSpec, Placement, ProjectionSpec, PromptInit, SessionInfo,
    SplitName,
};

use crate::http::ServerClient;
use crate::summary::RunSummary;
use crate::tune::outputs::peak_rss_mb;
use crate::tune::task_request;

/// A gradient-free baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Baseline {
    /// The task's template and label words, nothing tuned.
    Manual,
    /// [`Baseline::Manual`] with contextual calibration.
    ManualCalibrated,
    /// Training examples with their label words before every input.
    InContext,
    /// [`Baseline::InContext`] with contextual calibration.
    InContextCalibrated,
    /// Multinomial logistic regression on the final hidden state at the prediction position.
    FeatureProbe,
}

impl Baseline {
    /// Every baseline.
    pub const ALL: [Baseline; 5] = [
        Self::Manual,
        Self::ManualCalibrated,
        Self::InContext,
        Self::InContextCalibrated,
        Self::FeatureProbe,
    ];

    /// The method's name in results and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Manual => "manual",
            Self::ManualCalibrated => "manual-cc",
            Self::InContext => "icl",
            Self::InContextCalibrated => "icl-cc",
            Self::FeatureProbe => "feature-probe",
        }
    }

    /// The method's name in words, as papers and reports write it.
    pub fn title(self) -> &'static str {
        match self {
            Self::Manual => "Manual prompt, zero-shot",
            Self::ManualCalibrated => "Manual prompt + contextual calibration",
            Self::InContext => "In-context learning",
            Self::InContextCalibrated => "In-context learning + contextual calibration",
            Self::FeatureProbe => "Feature probe (logistic regression on the last hidden state)",
        }
    }

    /// The baseline called `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.name() == name)
    }

    /// The baselines one run measures together with this one (a calibrated method reuses its
    /// plain twin's test logits).
    pub fn family(self) -> Vec<Baseline> {
        match self {
            Self::Manual | Self::ManualCalibrated => vec![Self::Manual, Self::ManualCalibrated],
            Self::InContext | Self::InContextCalibrated => {
                vec![Self::InContext, Self::InContextCalibrated]
            }
            Self::FeatureProbe => vec![Self::FeatureProbe],
        }
    }
}

/// The task and split a baseline runs on.
#[derive(Debug, Clone, PartialEq)]
pub struct BaselineSettings {
    /// A task name the server knows, or a local task spec file.
    pub task: String,
    /// Few-shot examples per class.
    pub k: usize,
    /// Seed of the few-shot sample and of the demonstrations' order.
    pub seed: u64,
    /// Score only a fixed subset of N test examples.
    pub test_limit: Option<usize>,
    /// In-context learning: at most this many demonstrations (as many as fit if absent).
    pub max_demonstrations: Option<usize>,
    /// In-context learning: at most this many tokens of demonstrations (the model's context
    /// and the server's limit if absent).
    pub max_context_tokens: Option<usize>,
}

/// Runs `baseline`'s family (see [`Baseline::family`]); one summary per member, in order.
pub fn run(
    client: &mut ServerClient,
    baseline: Baseline,
    settings: &BaselineSettings,
) -> anyhow::Result<Vec<RunSummary>> {
    match baseline {
        Baseline::Manual | Baseline::ManualCalibrated => prompted(client, settings, false),
        Baseline::InContext | Baseline::InContextCalibrated => prompted(client, settings, true),
        Baseline::FeatureProbe => Ok(vec![feature_probe(client, settings)?]),
    }
}

/// A session with no prompt vectors (and the demonstrations, for in-context learning).
fn session(
    client: &mut ServerClient,
    settings: &BaselineSettings,
    demonstrations: bool,
) -> anyhow::Result<SessionInfo> {
    let request = CreateSessionRequest {
        task: task_request(
            &settings.task,
            settings.k,
            settings.seed,
            settings.test_limit,
            None,
        )?,
        prompt_length: 0,
        placement: Placement::Prefix,
        projection: ProjectionSpec {
            intrinsic_dim: 1,
            seed: settings.seed,
            distribution: Default::default(),
            scale: None,
            gain: None,
        },
        p0: PromptInit::Zeros,
        loss: Default::default(),
        deep: false,
        demonstrations: demonstrations.then_some(DemonstrationSpec {
            max: settings.max_demonstrations,
            max_tokens: settings.max_context_tokens,
            seed: settings.seed,
        }),
    };
    let info = client.create_session(&request)?;
    anyhow::ensure!(info.test_size > 0, "the task has no test examples");
    Ok(info)
}

/// Traffic and time of a stretch of calls.
struct Meter {
    started: Instant,
    up: u64,
    down: u64,
}

impl Meter {
    fn start(client: &ServerClient) -> Self {
        Self {
            started: Instant::now(),
            up: client.bytes_up,
            down: client.bytes_down,
        }
    }

    /// A summary of what happened since `start`, before any score is known.
    fn summary(
        &self,
        client: &ServerClient,
        method: Baseline,
        settings: &BaselineSettings,
        info: &SessionInfo,
        api_calls: u64,
    ) -> RunSummary {
        RunSummary {
            method: method.name().into(),
            task: info.task.clone(),
            seed: settings.seed,
            budget: 0,
            api_calls,
            train_api_calls: 0,
            best_dev_accuracy: None,
            test_accuracy: None,
            test_f1: None,
            test_examples: Some(info.test_size),
            wall_seconds: self.started.elapsed().as_secs_f64(),
            bytes_up: client.bytes_up - self.up,
            bytes_down: client.bytes_down - self.down,
            peak_rss_mb: peak_rss_mb(),
            trainable_params: Some(0),
            notes: Vec::new(),
        }
    }
}

/// The manual prompt or in-context learning, plain and calibrated, from one test pass.
fn prompted(
    client: &mut ServerClient,
    settings: &BaselineSettings,
    demonstrations: bool,
) -> anyhow::Result<Vec<RunSummary>> {
    let (plain, calibrated) = if demonstrations {
        (Baseline::InContext, Baseline::InContextCalibrated)
    } else {
        (Baseline::Manual, Baseline::ManualCalibrated)
    };
    let meter = Meter::start(client);
    let info = session(client, settings, demonstrations)?;
    let outcome = (|| -> anyhow::Result<Vec<RunSummary>> {
        let test = client.evaluate_with_logits(&info.id, &[0.0], SplitName::Test)?;
        let test = test
            .results
            .into_iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("the server returned no result"))?;
        let mut first = meter.summary(client, plain, settings, &info, 1);
        first.test_accuracy = Some(test.accuracy);
        first.test_f1 = test.f1;
        let context = format!(
            "{} demonstrations ({} tokens) before every input",
            info.demonstrations, info.context_tokens
        );
        if demonstrations {
            first.notes.push(context.clone());
        }
        let free = client.evaluate_with_logits(&info.id, &[0.0], SplitName::ContentFree)?;
        let free_logits = free
            .results
            .into_iter()
            .next()
            .and_then(|r| r.logits)
            .ok_or_else(|| anyhow::anyhow!("the server returned no content-free logits"))?;
        let logits = test
            .logits
            .ok_or_else(|| anyhow::anyhow!("the server returned no test logits"))?;
        let scores = metrics::calibrate(&logits, &free_logits)?;
        let scored = client.score(&info.id, SplitName::Test, scores)?;
        let mut second = meter.summary(client, calibrated, settings, &info, 2);
        second.test_accuracy = Some(scored.accuracy);
        second.test_f1 = scored.f1;
        second.notes.push(format!(
            "label bias from {} content-free inputs (N/A, empty, [MASK]) divided out",
            free_logits.len()
        ));
        if demonstrations {
            second.notes.push(context);
        }
        Ok(vec![first, second])
    })();
    let _ = client.delete_session(&info.id);
    outcome
}

/// Features of train, dev and test; a classifier fitted on train with its regularisation chosen
/// on dev; its test predictions scored by the server.
fn feature_probe(
    client: &mut ServerClient,
    settings: &BaselineSettings,
) -> anyhow::Result<RunSummary> {
    let meter = Meter::start(client);
    let info = session(client, settings, false)?;
    let outcome = (|| -> anyhow::Result<RunSummary> {
        let classes = info.classes.len();
        let labelled = |client: &mut ServerClient, split| -> anyhow::Result<probe::Labelled> {
            let answer = client.features(&info.id, split, None)?;
            let labels = answer
                .labels
                .ok_or_else(|| anyhow::anyhow!("the server returned no {split:?} labels"))?;
            probe::Labelled::new(answer.features, labels)
        };
        let train = labelled(client, SplitName::Train)?;
        let dev = labelled(client, SplitName::Dev)?;
        let test = client.features(&info.id, SplitName::Test, None)?.features;
        let fitted = probe::fit(&train, &dev, classes)?;
        let scores = fitted.classifier.scores(&test)?;
        let scored = client.score(&info.id, SplitName::Test, scores)?;
        let mut summary = meter.summary(client, Baseline::FeatureProbe, settings, &info, 3);
        summary.test_accuracy = Some(scored.accuracy);
        summary.test_f1 = scored.f1;
        summary.best_dev_accuracy = fitted.dev_accuracy;
        summary.trainable_params = Some(fitted.classifier.parameters());
        summary.notes.push(format!(
            "logistic regression on the {}-dim final hidden state, L2 {} (chosen on dev)",
            train.dim(),
            fitted.l2
        ));
        Ok(summary)
    })();
    let _ = client.delete_session(&info.id);
    outcome
}
