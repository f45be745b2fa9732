//! The black-box tuner: CMA-ES searches `z` while a bbt-server scores each generation's
//! prompts `A·z + p0` on the train split; the best-dev prompt is kept and finally scored on
//! the test split. A checkpoint after every generation makes a killed run resumable exactly.

pub mod checkpoint;
pub mod config;
pub mod control;
pub mod local;
pub mod outputs;
pub mod peft_adapter;
pub mod progress;
pub mod reuse;
pub mod selection;

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use bbt::protocol::{
    CandidateResult, CreateSessionRequest, ExampleIn, ModelCard, Placement, ProjectionSpec,
    PromptInit, SplitName, TaskRequest,
};
use bbt::tasks::{self, LabelWords, LoadOptions};

use crate::cmaes::{CmaOptions, Ipop};
use crate::http::{CallError, ServerClient};
use checkpoint::{Checkpoint, CurvePoint, TestPoint, CHECKPOINT_FILE};
use config::TuneConfig;
pub use control::Control;
use local::LocalSearch;
use outputs::TuneResult;
use progress::{Event, Progress, ProgressOptions, Stage};
use selection::{CandidateKind, Checked};

/// Where a run starts from.
pub enum Start {
    /// A new run; refuses a folder that already holds one.
    Fresh(Box<TuneConfig>),
    /// Continue the run checkpointed in the output folder.
    Resume,
}

/// Runs (or resumes) a tuning run against `client`'s server, writing everything to `out`.
pub fn run(
    client: &mut ServerClient,
    start: Start,
    out: &Path,
    progress: ProgressOptions,
) -> anyhow::Result<TuneResult> {
    run_with(client, start, out, progress, &Control::default())
}

/// [`run`], followed and stoppable through `control`: each event's JSON line goes to its
/// observer, and once its stop flag is set the run ends after its next checkpoint with
/// [`control::Stopped`], resumable from `out`.
pub fn run_with(
    client: &mut ServerClient,
    start: Start,
    out: &Path,
    progress: ProgressOptions,
    control: &Control,
) -> anyhow::Result<TuneResult> {
    let started = Instant::now();
    // The client may have served other runs: only what this run sends and receives counts.
    let client_start = (client.bytes_up, client.bytes_down);
    // A folder this run creates is removed again if the run fails before its first API call,
    // so a failed start leaves nothing behind.
    let mut created_here = false;
    let mut state = match start {
        Start::Resume => Checkpoint::load(out)?,
        Start::Fresh(config) => {
            config
                .validate()
                .map_err(|e| anyhow::anyhow!("invalid setting: {e}"))?;
            if out.join(CHECKPOINT_FILE).exists() {
                anyhow::bail!(
                    "{} already holds a run; continue it with --resume {0}, or choose another --out",
                    out.display()
                );
            }
            created_here = !out.exists();
            std::fs::create_dir_all(out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            let state = new_checkpoint(client, *config);
            if state.is_err() && created_here {
                let _ = std::fs::remove_dir_all(out);
            }
            state?
        }
    };
    let mut tuner = Tuner {
        progress: Progress::new(out, progress, state.config.budget, state.train_calls)?
            .observed_by(control.observer.clone()),
        control,
        base_bytes: (state.bytes_up, state.bytes_down),
        client_start,
        client,
        out,
        started,
        info: None,
    };
    tuner.progress.event(&Event::Start {
        task: &state.config.task,
        budget: state.config.budget,
        resumed_at: state.train_calls,
    });
    let result = tuner.run(&mut state);
    if result.is_err() && created_here && state.train_calls == 0 {
        let _ = std::fs::remove_dir_all(out);
    }
    result
}

/// A fresh run's state: the session request and CMA-ES at z = 0.
fn new_checkpoint(client: &mut ServerClient, config: TuneConfig) -> anyhow::Result<Checkpoint> {
    // This machine's files first: a bad one fails before any network call.
    let inputs = LocalInputs::read(&config)?;
    let models = client.models()?;
    let card = models.data.first().context("the server lists no model")?;
    let session_request = session_request(&config, inputs, card);
    // BBTv2 splits the budget evenly: rounds of one generation per layer.
    let searches = if config.deep { card.num_layers } else { 1 };
    let per_round = (config.popsize * searches) as u64;
    anyhow::ensure!(
        config.budget >= per_round,
        "budget {} is less than one round of one generation per layer (popsize {} x {} layers)",
        config.budget,
        config.popsize,
        searches
    );
    // The local search's calls come after CMA-ES's (validated to leave it a generation).
    let generations = (config.budget - config.local_calls) / per_round;
    let searches = (0..searches)
        .map(|i| {
            let options = CmaOptions {
                popsize: Some(config.popsize),
                seed: config.seed.wrapping_add(i as u64),
                diagonal: config.diagonal,
                bounds: config.bound.map(|b| [-b, b]),
                max_evals: Some(generations * config.popsize as u64),
                ..Default::default()
            };
            Ipop::new(&vec![0.0; config.intrinsic_dim], config.sigma, options)
                .map_err(|e| anyhow::anyhow!("{e}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Checkpoint {
        layer_z: if config.deep {
            vec![Vec::new(); searches.len()]
        } else {
            Vec::new()
        },
        next_search: 0,
        config,
        session_request,
        session_id: None,
        searches,
        train_calls: 0,
        other_calls: 0,
        curve: Vec::new(),
        picks: Default::default(),
        test_curve: Vec::new(),
        best_train_loss: f64::INFINITY,
        local: None,
        zero_shot_test_accuracy: None,
        bytes_up: 0,
        bytes_down: 0,
        wall_seconds: 0.0,
    })
}

/// The session for `config`: a task name goes to the server as is; a local spec file is loaded
/// here and its examples are sent.
pub fn session_request(
    config: &TuneConfig,
    inputs: LocalInputs,
    card: &ModelCard,
) -> CreateSessionRequest {
    // BBT scales A by the word embeddings' spread; BBTv2's server scales each layer by the
    // spread of its hidden states, times alpha / sigma.
    let (scale, gain) = if config.deep {
        (None, Some(config.alpha / config.sigma))
    } else {
        let root_d = (config.intrinsic_dim as f64).sqrt();
        (
            Some(config.alpha * card.embedding_std / (root_d * config.sigma)),
            None,
        )
    };
    CreateSessionRequest {
        task: inputs.task,
        prompt_length: config.prompt_length,
        placement: config.placement,
        projection: ProjectionSpec {
            intrinsic_dim: config.intrinsic_dim,
            seed: config.seed,
            distribution: config.distribution,
            scale,
            gain,
        },
        p0: inputs.p0,
        loss: config.loss,
        deep: config.deep,
        demonstrations: None,
    }
}

/// What a run reads from this machine's files (a task spec and its data, a prompt to start
/// from), read before any network call so that a bad file fails at once.
pub struct LocalInputs {
    /// The task as the server takes it.
    pub task: TaskRequest,
    /// The prompt's starting point.
    pub p0: PromptInit,
}

impl LocalInputs {
    /// Reads the files `config` names.
    pub fn read(config: &TuneConfig) -> anyhow::Result<Self> {
        let task = task_request(
            &config.task,
            config.k,
            config.seed,
            config.test_limit,
            config.label_words.as_deref(),
        )?;
        let p0 = match (&config.p0_from, &config.p0_text) {
            (Some(path), _) => PromptInit::Vectors {
                rows: outputs::read_prompt(path, config.prompt_length)?,
            },
            (None, Some(text)) => PromptInit::Text { text: text.clone() },
            (None, None) if config.p0_demonstrations => {
                PromptInit::Demonstrations { seed: config.seed }
            }
            (None, None) => PromptInit::Zeros,
        };
        Ok(Self { task, p0 })
    }
}

/// The task as the server takes it (scored on its first `test_limit` test examples, if set),
/// with `label_words` instead of the task's own when given.
pub fn task_request(
    task: &str,
    k: usize,
    seed: u64,
    test_limit: Option<usize>,
    label_words: Option<&[LabelWords]>,
) -> anyhow::Result<TaskRequest> {
    let is_file = task.ends_with(".toml") || task.ends_with(".json");
    if !is_file {
        return Ok(TaskRequest::Builtin {
            name: task.to_string(),
            k,
            seed,
            test_limit,
            verbalizer: label_words.map(<[LabelWords]>::to_vec),
        });
    }
    let options = LoadOptions {
        data_dir: tasks::default_data_dir(),
        k,
        seed,
        resample: false,
    };
    let data = tasks::load_task(task, &options)?;
    let convert = |xs: &[tasks::Example]| -> Vec<ExampleIn> {
        xs.iter()
            .map(|x| ExampleIn {
                text: x.text_a.clone(),
                text_b: x.text_b.clone(),
                label: x.label,
            })
            .collect()
    };
    Ok(TaskRequest::Explicit {
        name: Some(data.spec.name.clone()),
        template: data.spec.template.as_str().to_string(),
        classes: data.spec.classes.clone(),
        verbalizer: label_words.map_or_else(|| data.spec.verbalizer.clone(), <[_]>::to_vec),
        metric: data.spec.metric,
        train: convert(&data.train),
        dev: convert(&data.dev),
        test: convert(&tasks::test_subset(data.test.clone(), test_limit)),
    })
}

/// One running tuner.
struct Tuner<'a> {
    client: &'a mut ServerClient,
    control: &'a Control,
    out: &'a Path,
    progress: Progress,
    started: Instant,
    /// Bytes moved by earlier processes of this run.
    base_bytes: (u64, u64),
    /// The client's byte counters when this process took the run up.
    client_start: (u64, u64),
    /// The session's split sizes, once asked.
    info: Option<bbt::protocol::SessionInfo>,
}

impl Tuner<'_> {
    fn run(&mut self, state: &mut Checkpoint) -> anyhow::Result<TuneResult> {
        if state.config.zero_shot && state.zero_shot_test_accuracy.is_none() {
            let accuracy = self.zero_shot(state)?;
            state.zero_shot_test_accuracy = accuracy;
            if let Some(test_accuracy) = accuracy {
                self.progress.event(&Event::ZeroShot { test_accuracy });
            }
            self.save(state)?;
        }
        while let Some(search) = next_search(state) {
            self.generation(state, search)?;
            self.save(state)?;
        }
        if state.config.local_calls > 0 {
            self.local_search(state)?;
        }
        let best = match state.best() {
            Some(b) => b.z.clone(),
            None => current_prompt(state),
        };
        let test = self.evaluate(state, &best, 1, SplitName::Test)?;
        if let Some(t) = &test {
            self.progress.event(&Event::Test {
                api_calls: state.train_calls,
                test_accuracy: t[0].accuracy,
            });
        }
        // A deep prompt lives in the session (one offset per layer): only its z is kept.
        let prompt = if state.config.deep {
            None
        } else {
            Some(
                self.with_session(state, |client, id| client.prompt(id, &best))?
                    .prompt,
            )
        };
        // HF peft puts a prompt-tuning adapter's vectors before every input token, as the
        // prefix placement does on a model without a BOS token.
        let peft_base = match &prompt {
            Some(_) if state.config.placement == Placement::Prefix => self
                .client
                .models()?
                .data
                .into_iter()
                .next()
                .filter(|card| !card.adds_bos),
            _ => None,
        };
        self.save(state)?;
        self.progress.finish();
        let test_examples = self.info.as_ref().map(|i| i.test_size).filter(|&n| n > 0);
        let result = TuneResult::new(state, test.map(|mut t| t.remove(0)), test_examples);
        let prompt = prompt.as_deref();
        outputs::write_all(self.out, &result, state, &best, prompt)?;
        if let (Some(prompt), Some(card)) = (prompt, peft_base) {
            peft_adapter::write_prompt_tuning(
                &self.out.join("peft"),
                prompt,
                &card.id,
                card.num_layers,
            )?;
        }
        if let Some(id) = state.session_id.take() {
            let _ = self.client.delete_session(&id);
        }
        Ok(result)
    }

    /// One generation of search `search` (BBTv2: of that layer): ask, score on train, tell;
    /// BBTv2 then fixes the layer at its best; dev when due; the curve.
    fn generation(&mut self, state: &mut Checkpoint, search: usize) -> anyhow::Result<()> {
        let deep = state.config.deep;
        let xs = state.searches[search]
            .ask()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let count = xs.nrows();
        let z: Vec<f32> = xs.iter().map(|&v| v as f32).collect();
        let layer = deep.then_some(search);
        let results = self
            .evaluate_layer(state, &z, count, SplitName::Train, layer)?
            .context("the session has no training examples")?;
        let losses: Vec<f64> = results.iter().map(|r| r.loss).collect();
        let es = &mut state.searches[search];
        es.tell(&losses).map_err(|e| anyhow::anyhow!("{e}"))?;
        state.next_search = (search + 1) % state.searches.len();
        if deep {
            if let Some(best) = state.searches[search].best() {
                let chosen: Vec<f32> = best.x.iter().map(|&v| v as f32).collect();
                self.with_session(state, |client, id| client.set_layer(id, search, &chosen))?;
                state.layer_z[search] = chosen;
            }
        }
        let before = state.train_calls;
        state.train_calls += count as u64;
        let best_index = losses
            .iter()
            .enumerate()
            .min_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i)
            .expect("a population");
        // Dev candidates, when due: BBT's search mean and this generation's best; BBTv2 every
        // layer at its chosen z.
        let mut dev_candidates = vec![(CandidateKind::Estimate, current_prompt(state))];
        if !deep {
            let d = state.config.intrinsic_dim;
            let sample = z[best_index * d..(best_index + 1) * d].to_vec();
            dev_candidates.push((CandidateKind::Sample, sample));
        }
        let last = next_search(state).is_none();
        let report = Report {
            stage: Stage::CmaEs,
            before,
            losses: &losses,
            last,
            sigma: Some(state.searches[search].current().sigma()),
        };
        self.report(state, report, dev_candidates)
    }

    /// The local search after CMA-ES: COBYLA from CMA-ES's best `z`, for the calls left in
    /// the budget, one candidate per call; a population's worth of its calls is reported,
    /// checked on dev when due and checkpointed like a generation.
    fn local_search(&mut self, state: &mut Checkpoint) -> anyhow::Result<()> {
        let mut search = match state.local.take() {
            Some(search) => search,
            None => {
                let es = &state.searches[0];
                let start = es
                    .best()
                    .map_or_else(|| es.current().mean().to_vec(), |b| b.x.to_vec());
                let left = state.config.budget.saturating_sub(state.train_calls);
                LocalSearch::new(
                    start,
                    state.config.local_radius,
                    state.config.bound,
                    left as usize,
                )
            }
        };
        let batch = state.config.popsize;
        let shared = std::cell::RefCell::new((&mut *self, &mut *state));
        let outcome = search.run(
            |z| {
                let mut shared = shared.borrow_mut();
                let (tuner, state) = &mut *shared;
                let z: Vec<f32> = z.iter().map(|&v| v as f32).collect();
                let results = tuner
                    .evaluate_layer(state, &z, 1, SplitName::Train, None)?
                    .context("the session has no training examples")?;
                state.train_calls += 1;
                Ok(results[0].loss)
            },
            |search| {
                let n = search.losses.len();
                if n % batch != 0 && !search.done() {
                    return Ok(());
                }
                let mut shared = shared.borrow_mut();
                let (tuner, state) = &mut *shared;
                let losses = &search.losses[(n - 1) / batch * batch..];
                let best = search.best.as_ref().map(|(z, _)| {
                    let z = z.iter().map(|&v| v as f32).collect();
                    (CandidateKind::Estimate, z)
                });
                let report = Report {
                    stage: Stage::Cobyla,
                    before: state.train_calls - losses.len() as u64,
                    losses,
                    last: search.done(),
                    sigma: None,
                };
                tuner.report(state, report, best.into_iter().collect())?;
                state.local = Some(search.clone());
                tuner.save(state)
            },
        );
        state.local = Some(search);
        outcome
    }

    /// After a generation (or a population's worth of local-search calls): the best training
    /// loss, a dev check of `dev_candidates` when one is due (every selection rule's pick
    /// updated), the curve point and the events.
    fn report(
        &mut self,
        state: &mut Checkpoint,
        report: Report,
        dev_candidates: Vec<(CandidateKind, Vec<f32>)>,
    ) -> anyhow::Result<()> {
        let train_loss = report.losses.iter().copied().fold(f64::INFINITY, f64::min);
        state.best_train_loss = state.best_train_loss.min(train_loss);
        let every = state.config.dev_every;
        let (before, now) = (report.before, state.train_calls);
        let milestone = state.config.test_at.iter().any(|&m| before < m && m <= now);
        let dev_due = before / every != now / every || report.last || milestone;
        let mut dev_accuracy = None;
        if dev_due && !dev_candidates.is_empty() {
            let n = dev_candidates.len();
            let all: Vec<f32> = dev_candidates
                .iter()
                .flat_map(|(_, z)| z)
                .copied()
                .collect();
            if let Some(scores) = self.evaluate(state, &all, n, SplitName::Dev)? {
                let checked: Vec<Checked> = dev_candidates
                    .into_iter()
                    .zip(scores)
                    .map(|((kind, z), score)| Checked {
                        kind,
                        z,
                        accuracy: score.accuracy,
                        loss: score.loss,
                    })
                    .collect();
                selection::update(&mut state.picks, &checked, state.train_calls);
                self.progress.event(&Event::Dev {
                    api_calls: state.train_calls,
                    candidates: &checked,
                });
                dev_accuracy = state.best().map(|b| b.dev_accuracy);
            }
        }
        if milestone {
            self.test_milestone(state)?;
        }
        state.curve.push(CurvePoint {
            api_calls: state.train_calls,
            train_loss,
            dev_accuracy,
        });
        self.progress.event(&Event::Generation {
            generation: state.curve.len() as u64,
            stage: report.stage,
            api_calls: state.train_calls,
            train_loss,
            best_train_loss: state.best_train_loss,
            sigma: report.sigma,
            dev_accuracy,
            best_dev_accuracy: state.best().map(|b| b.dev_accuracy),
            elapsed_seconds: state.wall_seconds + self.started.elapsed().as_secs_f64(),
        });
        Ok(())
    }

    /// Scores the prompt chosen so far on the test split (a `test_at` milestone).
    fn test_milestone(&mut self, state: &mut Checkpoint) -> anyhow::Result<()> {
        let Some(z) = state.best().map(|b| b.z.clone()) else {
            return Ok(());
        };
        if let Some(mut scores) = self.evaluate(state, &z, 1, SplitName::Test)? {
            let score = scores.remove(0);
            self.progress.event(&Event::Test {
                api_calls: state.train_calls,
                test_accuracy: score.accuracy,
            });
            state.test_curve.push(TestPoint {
                api_calls: state.train_calls,
                test_accuracy: score.accuracy,
                test_f1: score.f1,
            });
        }
        Ok(())
    }

    /// The manual prompt's test accuracy: a session with no prompt vectors (L = 0).
    fn zero_shot(&mut self, state: &mut Checkpoint) -> anyhow::Result<Option<f64>> {
        let request = CreateSessionRequest {
            prompt_length: 0,
            placement: Placement::Prefix,
            deep: false,
            p0: PromptInit::Zeros,
            projection: ProjectionSpec {
                intrinsic_dim: 1,
                ..state.session_request.projection.clone()
            },
            ..state.session_request.clone()
        };
        let info = self.client.create_session(&request)?;
        if info.test_size == 0 {
            return Ok(None);
        }
        let scores = self
            .client
            .evaluate(&info.id, &[0.0], SplitName::Test, None)?;
        state.other_calls += 1;
        let _ = self.client.delete_session(&info.id);
        Ok(scores.results.first().map(|r| r.accuracy))
    }

    /// Scores `count` whole prompts on a split (BBTv2: each `layers * d` numbers, layer by
    /// layer, in one call that leaves the session's chosen layers as they are); `None` when the
    /// session has no such examples.
    fn evaluate(
        &mut self,
        state: &mut Checkpoint,
        z: &[f32],
        count: usize,
        split: SplitName,
    ) -> anyhow::Result<Option<Vec<CandidateResult>>> {
        self.evaluate_layer(state, z, count, split, None)
    }

    /// Scores `count` candidates of `layer` (BBTv2), or whole prompts (`None`), on a split.
    fn evaluate_layer(
        &mut self,
        state: &mut Checkpoint,
        z: &[f32],
        count: usize,
        split: SplitName,
        layer: Option<usize>,
    ) -> anyhow::Result<Option<Vec<CandidateResult>>> {
        let info = match self.info.clone() {
            Some(info) => info,
            None => self.with_session(state, |client, id| client.session(id))?,
        };
        self.info = Some(info.clone());
        if info.split_size(split) == 0 {
            return Ok(None);
        }
        let answer = self.with_session(state, |client, id| client.evaluate(id, z, split, layer))?;
        if split != SplitName::Train {
            state.other_calls += count as u64;
        }
        Ok(Some(answer.results))
    }

    /// Runs `call` on the run's session, creating it first if needed, and again under the same
    /// id whenever the server answers that it does not have it (it restarted or expired it, or a
    /// load balancer sent the request to a replica that never had it).
    fn with_session<T>(
        &mut self,
        state: &mut Checkpoint,
        mut call: impl FnMut(&mut ServerClient, &str) -> Result<T, CallError>,
    ) -> anyhow::Result<T> {
        let mut create = state.session_id.is_none();
        for _ in 0..SESSION_ATTEMPTS {
            let id = state
                .session_id
                .get_or_insert_with(ServerClient::new_session_id)
                .clone();
            if create {
                self.client.put_session(&id, &state.session_request)?;
                // A new session starts with every layer at zero: restore the chosen ones.
                set_layers(self.client, &id, &state.layer_z)?;
            }
            match call(self.client, &id) {
                Err(e) if e.quota_spent() => {
                    let advice = format!(
                        "the server's quota of API calls for this key is spent; the run so far \
                         is saved in {}: rerun the same command once the quota is raised",
                        self.out.display()
                    );
                    // The request's error stays underneath, for callers that match on it.
                    return Err(anyhow::Error::new(e).context(advice));
                }
                Err(e) if e.session_lost() => {
                    self.progress
                        .note("the server does not have the session; creating it again");
                    create = true;
                }
                other => return Ok(other?),
            }
        }
        anyhow::bail!("the server lost the session {SESSION_ATTEMPTS} times in a row")
    }

    fn save(&mut self, state: &mut Checkpoint) -> anyhow::Result<()> {
        state.bytes_up = self.base_bytes.0 + self.client.bytes_up - self.client_start.0;
        state.bytes_down = self.base_bytes.1 + self.client.bytes_down - self.client_start.1;
        let now = self.started.elapsed().as_secs_f64();
        state.wall_seconds += now;
        self.started = Instant::now();
        state.save(self.out)?;
        self.control.check()
    }
}

/// What one step of a search (a CMA-ES generation, or a population's worth of local-search
/// calls) hands to [`Tuner::report`].
struct Report<'a> {
    stage: Stage,
    /// Training calls before the step.
    before: u64,
    /// The step's training losses.
    losses: &'a [f64],
    /// The search's last step (dev is always checked then).
    last: bool,
    sigma: Option<f64>,
}

/// Times a call is tried on a session that the server keeps answering it does not have (each
/// time after creating it again): behind a load balancer without session affinity each try may
/// reach another replica, which then builds the session too.
const SESSION_ATTEMPTS: usize = 8;

/// The search that runs next, skipping those that have stopped; `None` when all have.
fn next_search(state: &Checkpoint) -> Option<usize> {
    let n = state.searches.len();
    (0..n)
        .map(|i| (state.next_search + i) % n)
        .find(|&i| state.searches[i].stop_reason().is_none())
}

/// The current estimate: BBT's CMA-ES mean; BBTv2's chosen z of every layer (zero where a
/// layer has none yet), layer by layer.
fn current_prompt(state: &Checkpoint) -> Vec<f32> {
    if state.config.deep {
        let d = state.config.intrinsic_dim;
        return state
            .layer_z
            .iter()
            .flat_map(|z| {
                if z.is_empty() {
                    vec![0.0; d]
                } else {
                    z.clone()
                }
            })
            .collect();
    }
    state.searches[0]
        .current()
        .mean()
        .iter()
        .map(|&v| v as f32)
        .collect()
}

/// Fixes every layer of a deep session that has a `z` (empty ones stay as they are).
pub fn set_layers(
    client: &mut ServerClient,
    id: &str,
    layers: &[Vec<f32>],
) -> Result<(), CallError> {
    for (layer, z) in layers.iter().enumerate() {
        if !z.is_empty() {
            client.set_layer(id, layer, z)?;
        }
    }
    Ok(())
}
