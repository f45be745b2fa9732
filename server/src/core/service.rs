//! The operations behind the routes: validate against the limits, account usage, queue model
//! work on the worker, and build the protocol responses.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bbt::protocol::{
    CreateSessionRequest, EvaluateResponse, FeaturesRequest, FeaturesResponse, ForwardRequest,
    ForwardResponse, ModelCard, ModelsResponse, PromptResponse, ScoreRequest, ScoreResponse,
    SessionInfo, SessionList, SplitName,
};
use bbt::scoring::{self, EncodedSplit};
use bbt::tasks::{Example, TaskSpec, Template, Verbalizer};
use bbt::{Engine, Prompt};
use candle_core::Tensor;

use super::batching::EvaluateJob;
use super::candidates::{decode_candidates, CandidatesIn};
use super::metrics::{Metrics, ModelLabels};
use super::session_builder::{self, build_session, encode_split, verbalizer_ids};
use super::sessions::{DeepCandidates, Session, SessionIdentity, SessionProjection, SessionStore};
use super::task_request;
use super::usage::{Account, MemoryStore, Reservation, UsageBook, UsageStore};
use super::worker::{BatchPolicy, Worker};
use super::{CoreError, Limits};

/// Shared state of a running server.
pub struct Service {
    engine: Arc<Engine>,
    worker: Worker,
    pub sessions: SessionStore,
    pub usage: UsageBook,
    pub metrics: Metrics,
    pub limits: Limits,
    data_dir: PathBuf,
    /// The model's name in `/v1/models`: what the operator passed to `--model`.
    model_id: String,
}

impl Service {
    /// Wraps a loaded engine, with usage kept in this process; starts the model worker.
    pub fn new(
        engine: Engine,
        limits: Limits,
        quotas: HashMap<String, u64>,
        data_dir: PathBuf,
    ) -> Self {
        Self::with_usage_store(
            engine,
            limits,
            quotas,
            data_dir,
            Arc::new(MemoryStore::new()),
        )
    }

    /// [`Service::new`] with usage kept in `store` (e.g. shared by replicas).
    pub fn with_usage_store(
        engine: Engine,
        limits: Limits,
        quotas: HashMap<String, u64>,
        data_dir: PathBuf,
        store: Arc<dyn UsageStore>,
    ) -> Self {
        let engine = Arc::new(engine);
        let engine_name = engine.info().name.clone();
        let metrics = Metrics::new(ModelLabels {
            model: &engine.info().name,
            device: &bbt::device::device_name(engine.device()),
            dtype: engine.model_dtype().as_str(),
            kernels: engine.cpu_kernels().unwrap_or("none"),
        });
        Self {
            worker: Worker::start(
                engine.clone(),
                limits.max_queue,
                BatchPolicy {
                    max_batch_tokens: limits.max_batch_tokens,
                    max_wait: limits.max_batch_wait,
                },
                metrics.worker.clone(),
            ),
            engine,
            sessions: SessionStore::new(limits.clone(), metrics.sessions_dropped.clone()),
            usage: UsageBook::new(store, quotas),
            metrics,
            limits,
            data_dir,
            model_id: engine_name,
        }
    }

    /// The same service, listing its model as `id` (the `--model` it was started with)
    /// instead of the model file's name.
    pub fn with_model_id(mut self, id: &str) -> Self {
        self.model_id = id.to_string();
        self
    }

    /// `GET /v1/models`.
    pub fn models(&self) -> ModelsResponse {
        let info = self.engine.info();
        let c = &info.config;
        ModelsResponse {
            object: "list".into(),
            data: vec![ModelCard {
                object: "model".into(),
                id: self.model_id.clone(),
                file: info.name.clone(),
                architecture: format!("{:?}", c.architecture).to_lowercase(),
                hidden_size: c.hidden_size,
                num_layers: c.num_layers,
                vocab_size: c.vocab_size,
                max_positions: self.engine.max_positions(),
                embedding_mean: info.embedding_mean,
                embedding_std: info.embedding_std,
                device: bbt::device::device_name(self.engine.device()),
                dtype: self.engine.model_dtype().as_str().into(),
                cpu_kernels: self.engine.cpu_kernels().map(str::to_string),
                adds_bos: !self.engine.bos_segment().is_empty(),
            }],
        }
    }

    /// Refreshes the gauges that describe the server's state.
    pub fn refresh_gauges(&self) {
        self.metrics.queue_depth.set(self.worker.depth() as i64);
        self.metrics.sessions.set(self.sessions.len() as i64);
        self.metrics.session_bytes.set(self.sessions.bytes() as i64);
    }

    /// Reserves `calls` API calls of `account`'s quota, counting a refusal.
    async fn reserve(&self, account: Account<'_>, calls: u64) -> Result<Reservation, CoreError> {
        let reserved = self.usage.reserve_calls(account, calls).await;
        if let Err(CoreError::Quota(_)) = &reserved {
            self.metrics.quota_refusals.inc();
        }
        reserved
    }

    /// Charges a reservation of `calls` API calls and the request's `tokens`.
    async fn charge(
        &self,
        reservation: Reservation,
        calls: u64,
        tokens: u64,
    ) -> Result<(), CoreError> {
        if reservation.commit(tokens).await? {
            self.metrics.api_calls.inc_by(calls);
        }
        Ok(())
    }

    /// `POST /v1/sessions` (`id` = `None`: the server names the session) and
    /// `PUT /v1/sessions/{id}` (the client does, so a load balancer can route by it, and the
    /// same request recreates the session on whichever replica it reaches). Returns the session
    /// and whether it was created: a `PUT` of a session that exists with the same request
    /// changes nothing; with another request, or another key's, it is a 409.
    pub async fn create_session(
        &self,
        key: Option<&str>,
        req: CreateSessionRequest,
        id: Option<&str>,
    ) -> Result<(SessionInfo, bool), CoreError> {
        let request_digest = digest(&req);
        let id = match id {
            None => format!("ses_{:032x}", rand::random::<u128>()),
            Some(id) => {
                check_session_id(id)?;
                if let Some(existing) = self.sessions.peek(id) {
                    return same_session(&existing, key, request_digest).map(|info| (info, false));
                }
                id.to_string()
            }
        };
        let identity = SessionIdentity {
            id,
            owner: key.map(str::to_string),
            request_digest,
        };
        let l = &self.limits;
        if req.prompt_length > l.max_prompt_length {
            return Err(CoreError::TooLarge(format!(
                "prompt_length {} exceeds this server's limit of {}",
                req.prompt_length, l.max_prompt_length
            )));
        }
        let d = req.projection.intrinsic_dim;
        if d == 0 || d > l.max_intrinsic_dim {
            return Err(CoreError::Invalid(format!(
                "projection.intrinsic_dim must be between 1 and {}, got {d}",
                l.max_intrinsic_dim
            )));
        }
        self.sessions
            .check_room(session_builder::estimated_bytes(&self.engine, l, &req))?;
        let engine = self.engine.clone();
        let limits = self.limits.clone();
        let data_dir = self.data_dir.clone();
        // Loading a task reads files (and may fetch a package); building draws the projection.
        let session = tokio::task::spawn_blocking(move || {
            let (spec, splits) = task_request::task_examples(&req.task, &limits, &data_dir)?;
            build_session(&engine, &limits, identity, spec, splits, req)
        })
        .await
        .map_err(CoreError::internal)??;
        let inserted = self.sessions.insert(session);
        self.refresh_gauges();
        match inserted {
            Ok(session) => Ok((session.info(), true)),
            // A concurrent request for the same id built it first.
            Err(existing) => same_session(&existing, key, request_digest).map(|info| (info, false)),
        }
    }

    /// `GET /v1/sessions/{id}`.
    pub fn session_info(&self, key: Option<&str>, id: &str) -> Result<SessionInfo, CoreError> {
        Ok(self.sessions.get(id, key)?.info())
    }

    /// `GET /v1/sessions`: the caller's own sessions.
    pub fn list_sessions(&self, key: Option<&str>) -> SessionList {
        SessionList {
            object: "list".into(),
            data: self.sessions.list(key),
        }
    }

    /// `DELETE /v1/sessions/{id}`.
    pub fn delete_session(&self, key: Option<&str>, id: &str) -> Result<(), CoreError> {
        self.sessions.remove(id, key)?;
        self.refresh_gauges();
        Ok(())
    }

    /// `POST /v1/sessions/{id}/evaluate`: each candidate is one API call.
    pub async fn evaluate(
        &self,
        account: Account<'_>,
        id: &str,
        candidates: CandidatesIn,
        split: SplitName,
        return_logits: bool,
        layer: Option<usize>,
    ) -> Result<EvaluateResponse, CoreError> {
        let session = self.sessions.get(id, account.key)?;
        let d = session.projection.intrinsic_dim();
        let (deep, width) = match (&session.projection, layer) {
            (SessionProjection::Shallow(_), None) => (None, d),
            (SessionProjection::Shallow(_), Some(_)) => {
                return Err(CoreError::Invalid(
                    "`layer` is only for deep sessions (created with \"deep\": true)".into(),
                ))
            }
            (SessionProjection::Deep { projection, .. }, None) => {
                (Some(DeepCandidates::Whole), projection.num_layers() * d)
            }
            (SessionProjection::Deep { projection, chosen }, Some(l)) => {
                check_layer(l, projection.num_layers())?;
                (Some(DeepCandidates::Layer(l, chosen.lock().clone())), d)
            }
        };
        let z =
            decode_candidates(&candidates, width, self.limits.max_candidates).map_err(
                |e| match (&e, &deep) {
                    (CoreError::Invalid(detail), Some(DeepCandidates::Whole)) => {
                        CoreError::Invalid(format!(
                            "{detail}: without a `layer`, a deep session's candidate is a whole \
                         deep prompt of {} layers x {d} numbers, layer by layer; name the \
                         `layer` to send one layer's {d}",
                            width / d.max(1)
                        ))
                    }
                    _ => e,
                },
            )?;
        let count = z.len();
        let split_name = split;
        let split = session.split(split_name)?;
        let tokens = split.positions_under_prompt(session.prompt_positions()) as u64 * count as u64;
        let reservation = self.reserve(account, count as u64).await?;
        let flat: Vec<f32> = z.concat();
        let started = Instant::now();
        let result = self
            .worker
            .evaluate(EvaluateJob {
                session: session.clone(),
                split: split_name,
                z: flat,
                count,
                return_logits,
                deep,
            })
            .await;
        let results = result?;
        self.metrics
            .forward_seconds
            .inc_by(started.elapsed().as_secs_f64());
        self.metrics.tokens.inc_by(tokens);
        self.metrics
            .batch_rows
            .observe((count * split.len()) as f64);
        self.charge(reservation, count as u64, tokens).await?;
        let calls = session.api_calls.fetch_add(count as u64, Ordering::Relaxed) + count as u64;
        Ok(EvaluateResponse {
            results,
            api_calls: calls,
        })
    }

    /// `PUT /v1/sessions/{id}/layers/{layer}`: fixes a deep session's layer at `A_l·z`.
    pub async fn set_layer(
        &self,
        key: Option<&str>,
        id: &str,
        layer: usize,
        z: Vec<f32>,
    ) -> Result<SessionInfo, CoreError> {
        let session = self.sessions.get(id, key)?;
        let SessionProjection::Deep { projection, .. } = &session.projection else {
            return Err(CoreError::Invalid(
                "only deep sessions (created with \"deep\": true) have layers".into(),
            ));
        };
        check_layer(layer, projection.num_layers())?;
        let z = single_candidate(&z, projection.intrinsic_dim())?;
        let worker_session = session.clone();
        // Drawing A_l (L * hidden * d numbers) is compute: off the async runtime.
        tokio::task::spawn_blocking(move || -> Result<(), CoreError> {
            let SessionProjection::Deep { projection, chosen } = &worker_session.projection else {
                return Err(CoreError::internal("the session lost its deep prompt"));
            };
            let offsets = projection
                .layer_offsets(layer, &z)
                .map_err(CoreError::internal)?;
            let mut chosen = chosen.lock();
            let updated = chosen
                .slice_assign(
                    &[
                        layer..layer + 1,
                        0..offsets.dim(1).map_err(CoreError::internal)?,
                        0..offsets.dim(2).map_err(CoreError::internal)?,
                    ],
                    &offsets
                        .to_device(chosen.device())
                        .map_err(CoreError::internal)?,
                )
                .map_err(CoreError::internal)?;
            *chosen = updated;
            Ok(())
        })
        .await
        .map_err(CoreError::internal)??;
        Ok(session.info())
    }

    /// `POST /v1/sessions/{id}/prompt`: `A·z + p0` as rows of numbers (no forward pass).
    pub fn prompt(
        &self,
        key: Option<&str>,
        id: &str,
        z: &[f32],
    ) -> Result<PromptResponse, CoreError> {
        let session = self.sessions.get(id, key)?;
        let SessionProjection::Shallow(projection) = &session.projection else {
            return Err(CoreError::Invalid(
                "a deep session's prompt lives in the session (one offset per layer): score it \
                 with evaluate on the dev or test split"
                    .into(),
            ));
        };
        let z = single_candidate(z, projection.intrinsic_dim())?;
        let prompt = session
            .prompts(&z, None)
            .and_then(|mut prompts| {
                let embeddings = prompts.remove(0).embeddings;
                Ok(embeddings.to_dtype(candle_core::DType::F32)?.to_vec2()?)
            })
            .map_err(CoreError::internal)?;
        Ok(PromptResponse { prompt })
    }

    /// `POST /v1/sessions/{id}/features`: one API call.
    pub async fn features(
        &self,
        account: Account<'_>,
        id: &str,
        req: FeaturesRequest,
    ) -> Result<FeaturesResponse, CoreError> {
        let session = self.sessions.get(id, account.key)?;
        let SessionProjection::Shallow(projection) = &session.projection else {
            return Err(CoreError::Invalid(
                "features are read under a shallow prompt; deep sessions have none".into(),
            ));
        };
        let d = projection.intrinsic_dim();
        let z = single_candidate(req.z.as_deref().unwrap_or(&vec![0.0; d]), d)?;
        let split = session.split(req.split)?;
        let labels =
            matches!(req.split, SplitName::Train | SplitName::Dev).then(|| split.labels.clone());
        let tokens = split.positions_under_prompt(session.prompt_positions()) as u64;
        let reservation = self.reserve(account, 1).await?;
        let worker_session = session.clone();
        let split_name = req.split;
        let result = self
            .worker
            .run(move |engine| {
                let prompt = worker_session
                    .prompts(&z, None)
                    .map_err(CoreError::internal)?
                    .remove(0);
                scoring::split_features(
                    engine,
                    &worker_session.splits[&split_name],
                    prompt,
                    worker_session.placement,
                    &worker_session.verbalizer,
                )
                .map_err(CoreError::internal)
            })
            .await;
        let features = result?;
        self.metrics.tokens.inc_by(tokens);
        self.charge(reservation, 1, tokens).await?;
        let calls = session.api_calls.fetch_add(1, Ordering::Relaxed) + 1;
        Ok(FeaturesResponse {
            features,
            labels,
            api_calls: calls,
        })
    }

    /// `POST /v1/sessions/{id}/score`: the metric of the client's class scores (no forward).
    pub fn score(
        &self,
        key: Option<&str>,
        id: &str,
        req: &ScoreRequest,
    ) -> Result<ScoreResponse, CoreError> {
        let session = self.sessions.get(id, key)?;
        if req.split == SplitName::ContentFree {
            return Err(CoreError::Invalid(
                "the content-free inputs have no labels to score against".into(),
            ));
        }
        let split = session.split(req.split)?;
        let classes = session.spec.classes.len();
        if req.scores.len() != split.len() {
            return Err(CoreError::Invalid(format!(
                "{} rows of scores for {} {:?} examples",
                req.scores.len(),
                split.len(),
                req.split
            )));
        }
        if let Some((i, row)) = req
            .scores
            .iter()
            .enumerate()
            .find(|(_, r)| r.len() != classes || r.iter().any(|x| !x.is_finite()))
        {
            return Err(CoreError::Invalid(format!(
                "scores row {i} must be {classes} finite numbers, got {} numbers",
                row.len()
            )));
        }
        let r = bbt::metrics::measure(
            &req.scores,
            &split.labels,
            bbt::protocol::Loss::CrossEntropy,
            session.spec.metric,
        );
        Ok(ScoreResponse {
            accuracy: r.accuracy,
            f1: r.f1,
        })
    }

    /// `POST /v1/forward`: one API call, no session.
    pub async fn forward(
        &self,
        account: Account<'_>,
        req: ForwardRequest,
    ) -> Result<ForwardResponse, CoreError> {
        let (split, verbalizer) = self.forward_inputs(&req)?;
        let hidden = self.engine.config().hidden_size;
        let reservation = self.reserve(account, 1).await?;
        let rows = req.prompt.len();
        let flat: Vec<f32> = req.prompt.concat();
        let placement = req.placement;
        let tokens = split.positions_under_prompt(rows) as u64;
        let n = split.len();
        let result = self
            .worker
            .run(move |engine| {
                let prompt = Tensor::from_vec(flat, (rows, hidden), engine.device())
                    .and_then(|t| t.to_dtype(engine.dtype()))
                    .map_err(CoreError::internal)?;
                let mut logits = scoring::candidate_logits(
                    engine,
                    &split,
                    &[Prompt::new(prompt)],
                    placement,
                    None,
                    &verbalizer,
                )
                .map_err(CoreError::internal)?;
                Ok(logits.remove(0))
            })
            .await;
        let logits = result?;
        self.metrics.tokens.inc_by(tokens);
        self.metrics.batch_rows.observe(n as f64);
        self.charge(reservation, 1, tokens).await?;
        Ok(ForwardResponse { logits })
    }

    /// A `/v1/forward` request's inputs checked against the limits and encoded with its
    /// template, and its verbalizer's token ids.
    fn forward_inputs(
        &self,
        req: &ForwardRequest,
    ) -> Result<(EncodedSplit, Verbalizer), CoreError> {
        let hidden = self.engine.config().hidden_size;
        if req.inputs.is_empty() {
            return Err(CoreError::Invalid("no inputs".into()));
        }
        if req.inputs.len() > self.limits.max_examples {
            return Err(CoreError::TooLarge(format!(
                "{} inputs; this server's limit is {}",
                req.inputs.len(),
                self.limits.max_examples
            )));
        }
        if req.prompt.len() > self.limits.max_prompt_length {
            return Err(CoreError::TooLarge(format!(
                "prompt of {} vectors; this server's limit is {}",
                req.prompt.len(),
                self.limits.max_prompt_length
            )));
        }
        if let Some((i, row)) = req
            .prompt
            .iter()
            .enumerate()
            .find(|(_, r)| r.len() != hidden)
        {
            return Err(CoreError::Invalid(format!(
                "prompt row {i} has {} numbers, the model's hidden size is {hidden}",
                row.len()
            )));
        }
        if req.prompt.iter().flatten().any(|x| !x.is_finite()) {
            return Err(CoreError::Invalid(
                "the prompt contains NaN or infinite values".into(),
            ));
        }
        let spec = TaskSpec {
            name: "forward".into(),
            classes: (0..req.verbalizer.len()).map(|i| i.to_string()).collect(),
            template: Template::new(&req.template).map_err(CoreError::Invalid)?,
            verbalizer: req.verbalizer.clone(),
            metric: bbt::tasks::Metric::Accuracy,
        };
        spec.validate().map_err(CoreError::Invalid)?;
        let verbalizer = verbalizer_ids(&self.engine, &spec)?;
        let examples: Vec<Example> = req
            .inputs
            .iter()
            .map(|x| Example {
                text_a: x.text.clone(),
                text_b: x.text_b.clone(),
                label: 0,
            })
            .collect();
        let split = encode_split(&self.engine, &self.limits, &spec, &examples)?;
        Ok((split, verbalizer))
    }
}

/// One `z` of `d` numbers as a `[1, d]` tensor; a 422 naming the mistake otherwise.
fn single_candidate(z: &[f32], d: usize) -> Result<Tensor, CoreError> {
    let z = decode_candidates(
        &CandidatesIn::Json(bbt::protocol::Candidates::Json(vec![z.to_vec()])),
        d,
        1,
    )?;
    Tensor::from_vec(z.concat(), (1, d), &candle_core::Device::Cpu).map_err(CoreError::internal)
}

/// `existing`'s description if it is what `key` asked to create (same owner, same request);
/// a 409 otherwise.
fn same_session(
    existing: &Session,
    key: Option<&str>,
    request_digest: u64,
) -> Result<SessionInfo, CoreError> {
    if existing.owner.as_deref() == key && existing.request_digest == request_digest {
        Ok(existing.info())
    } else {
        Err(CoreError::Conflict(format!(
            "session id {} is in use for another creation request; pick another id",
            existing.id
        )))
    }
}

/// Longest client-chosen session id.
const MAX_SESSION_ID: usize = 64;

/// A 400 unless `id` is `ses_` followed by 1 to 60 letters, digits, `-` or `_`.
fn check_session_id(id: &str) -> Result<(), CoreError> {
    let rest = id.strip_prefix("ses_").unwrap_or("");
    if rest.is_empty()
        || id.len() > MAX_SESSION_ID
        || !rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(CoreError::BadRequest(format!(
            "a session id is `ses_` and then up to {} letters, digits, `-` or `_`",
            MAX_SESSION_ID - 4
        )));
    }
    Ok(())
}

/// A digest of a creation request (within one server process; never stored).
fn digest(req: &CreateSessionRequest) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_vec(req)
        .expect("a creation request serialises")
        .hash(&mut hasher);
    hasher.finish()
}

/// A 422 unless `layer` is one of the model's `layers`.
fn check_layer(layer: usize, layers: usize) -> Result<(), CoreError> {
    if layer < layers {
        Ok(())
    } else {
        Err(CoreError::Invalid(format!(
            "layer {layer} is out of range: the model has {layers} layers (0 to {})",
            layers - 1
        )))
    }
}
