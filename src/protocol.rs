//! The HTTP protocol between `bbt` clients and `bbt-server`: one set of request and response
//! types, serialised as JSON, used by both sides. Request types reject unknown fields (a
//! misspelt option is refused with its name, never silently defaulted); response types accept
//! them, so a client reads the answers of a newer server.

use serde::{Deserialize, Serialize};

use crate::tasks::{LabelWords, Metric};

/// `GET /v1/models`, in OpenAI's list shape.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModelsResponse {
    /// Always `"list"`.
    #[serde(default)]
    pub object: String,
    pub data: Vec<ModelCard>,
}

/// What a client needs to know about the served model.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModelCard {
    /// Always `"model"`.
    #[serde(default)]
    pub object: String,
    /// The model's name, as the operator passed it to `--model` (`smollm2-135m`).
    pub id: String,
    /// The file the weights were read from.
    #[serde(default)]
    pub file: String,
    pub architecture: String,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub vocab_size: usize,
    pub max_positions: usize,
    /// Mean of the word-embedding matrix's entries (to scale a random projection).
    pub embedding_mean: f64,
    /// Standard deviation of the word-embedding matrix's entries.
    pub embedding_std: f64,
    /// Where the model runs: `cpu`, `cuda:0`, ... (empty from servers that predate it).
    #[serde(default)]
    pub device: String,
    /// The dtype the model runs in: `f32`, `bf16` or `f16` (losses and logits are f32
    /// whatever it is; on a CPU, `bf16` is bf16 matmul inputs with f32 accumulation, and f32
    /// activations, norms and softmax).
    #[serde(default)]
    pub dtype: String,
    /// The CPU matmul kernels: `onemkl-2026.2`, `onednn-3.2.0` (prepacked weights),
    /// `openblas-0.3.34` or `candle-gemm`; absent on a GPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_kernels: Option<String>,
    /// Whether the model puts a BOS token before every input; a prefix-placement prompt then
    /// follows it (HF peft's prompt tuning puts its virtual tokens before it).
    #[serde(default)]
    pub adds_bos: bool,
}

/// Where the continuous prompt goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// `[bos][prompt][text][template]`: the prompt's keys/values are shared by all examples.
    #[default]
    Prefix,
    /// `[bos][text][prompt][template]`: the texts' keys/values are cached per session.
    Suffix,
}

/// Distribution of the random projection's entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    #[default]
    Normal,
    Uniform,
}

/// The random projection `A` (`L * hidden` x `d`), generated on the server from its seed so the
/// client uploads only `z`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ProjectionSpec {
    /// Intrinsic dimension `d`.
    pub intrinsic_dim: usize,
    pub seed: u64,
    #[serde(default)]
    pub distribution: Distribution,
    /// Standard deviation of the entries. Default, as in the BBT reference code:
    /// `alpha * std(word embeddings) / (sqrt(d) * sigma)` with `alpha = sigma = 1`.
    pub scale: Option<f64>,
    /// Deep sessions without a `scale`: multiplies every layer's default std (`alpha / sigma`
    /// in the BBT papers' formula). 1 if absent.
    #[serde(default)]
    pub gain: Option<f64>,
}

/// The prompt offset `p0`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case", tag = "kind", deny_unknown_fields)]
pub enum PromptInit {
    /// `p0 = 0`.
    #[default]
    Zeros,
    /// `p0` = the embeddings of these token ids (exactly `L` of them).
    Tokens { ids: Vec<u32> },
    /// `p0` = these `L` rows of `hidden` numbers: a prompt tuned before, e.g. on another task
    /// (prompt transfer, as in PPT).
    Vectors { rows: Vec<Vec<f32>> },
    /// `p0` = the embeddings of this text as the server's tokenizer reads it (an instruction, or
    /// demonstrations, as BBT-RGB starts its prompt): its first `L` tokens, repeated from its
    /// start when it has fewer, so every prompt vector is a word embedding of the model's own.
    Text { text: String },
    /// `p0` = the embeddings of the first `L` tokens of in-context demonstrations: training
    /// examples in the session's template, each followed by its label word, in the order drawn
    /// from `seed` (BBT-RGB's other textual start).
    Demonstrations {
        #[serde(default)]
        seed: u64,
    },
}

/// The training loss the server reports per candidate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case", tag = "kind", deny_unknown_fields)]
pub enum Loss {
    /// Mean cross-entropy of the gold class over the verbalizer logits.
    #[default]
    CrossEntropy,
    /// Mean multi-class hinge: `max(0, margin - (gold - best other))`.
    Hinge { margin: f64 },
}

/// One labelled example sent by a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ExampleIn {
    pub text: String,
    pub text_b: Option<String>,
    pub label: usize,
}

/// The task of a session: a known task (sampled on the server) or explicit examples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case", tag = "kind", deny_unknown_fields)]
pub enum TaskRequest {
    /// A task the server knows by name (`mr`, `sst2`, ...), with the few-shot protocol.
    Builtin {
        name: String,
        #[serde(default = "default_k")]
        k: usize,
        #[serde(default = "default_seed")]
        seed: u64,
        /// Score only a fixed subset of `test_limit` test examples (the same ones for every seed
        /// and method), to bound the cost of comparisons; the whole test set if absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        test_limit: Option<usize>,
        /// Label words to use instead of the task's own, one entry per class: a word or a list
        /// of words (the class scores their mean logit).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        verbalizer: Option<Vec<LabelWords>>,
    },
    /// The client's own examples.
    Explicit {
        name: Option<String>,
        template: String,
        classes: Vec<String>,
        /// One entry per class: a label word or a list of words (the class scores their mean
        /// logit).
        verbalizer: Vec<LabelWords>,
        #[serde(default = "default_metric")]
        metric: Metric,
        train: Vec<ExampleIn>,
        #[serde(default)]
        dev: Vec<ExampleIn>,
        #[serde(default)]
        test: Vec<ExampleIn>,
    },
}

fn default_k() -> usize {
    16
}

fn default_seed() -> u64 {
    42
}

fn default_metric() -> Metric {
    Metric::Accuracy
}

/// `POST /v1/sessions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateSessionRequest {
    pub task: TaskRequest,
    /// Number of prompt vectors `L`.
    pub prompt_length: usize,
    #[serde(default)]
    pub placement: Placement,
    pub projection: ProjectionSpec,
    #[serde(default)]
    pub p0: PromptInit,
    #[serde(default)]
    pub loss: Loss,
    /// BBTv2's deep prompt (either placement): every layer gets its own projection `A_l`
    /// and prompt `A_l·z_l`, added to the hidden states at the prompt positions as they enter
    /// layer `l`. The session keeps each layer's chosen `z_l` (set with
    /// `PUT /v1/sessions/{id}/layers/{l}`, zero at first), and `evaluate` names the layer its
    /// candidates are for, so a call still uploads one `d`-vector per candidate; an `evaluate`
    /// without a layer scores whole deep prompts (every layer's `z`) in one call.
    #[serde(default)]
    pub deep: bool,
    /// In-context learning: training examples, each rendered with its template and its label
    /// word, placed before every input (and before any prompt vectors). Prefix placement only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub demonstrations: Option<DemonstrationSpec>,
}

/// Which training examples a session puts in context, in which order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DemonstrationSpec {
    /// At most this many; as many as fit the model's context (and the server's limit) if absent.
    #[serde(default)]
    pub max: Option<usize>,
    /// At most this many tokens of demonstrations (e.g. the 512 positions of the paper's
    /// RoBERTa); the model's free positions and the server's limit otherwise.
    #[serde(default)]
    pub max_tokens: Option<usize>,
    /// Seed of their order (a random permutation of the training split).
    #[serde(default)]
    pub seed: u64,
}

/// A split of a session's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SplitName {
    Train,
    Dev,
    Test,
    /// Contextual calibration's content-free inputs (`N/A`, the empty string, `[MASK]`) in the
    /// session's template. Unlabelled: read their logits, not their accuracy.
    ContentFree,
}

/// A session as the server describes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SessionInfo {
    pub id: String,
    pub task: String,
    pub classes: Vec<String>,
    pub verbalizer: Vec<LabelWords>,
    pub metric: Metric,
    pub prompt_length: usize,
    pub placement: Placement,
    pub intrinsic_dim: usize,
    /// Examples per split.
    pub train_size: usize,
    pub dev_size: usize,
    pub test_size: usize,
    /// Candidates evaluated so far (each is one API call).
    pub api_calls: u64,
    /// Whether the session has a deep (per-layer) prompt.
    #[serde(default)]
    pub deep: bool,
    /// Deep sessions: the entry std of each layer's projection (the word embeddings' spread for
    /// layer 0, the spread of the hidden states entering each later layer, over `sqrt(d)`).
    #[serde(default)]
    pub layer_scales: Option<Vec<f64>>,
    /// Training examples placed in context before every input (in-context learning), and the
    /// tokens they take.
    #[serde(default)]
    pub demonstrations: usize,
    #[serde(default)]
    pub context_tokens: usize,
}

/// `GET /v1/sessions`: the caller's own live sessions, most recently used first, so a client
/// that lost track of them can delete what holds memory.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SessionList {
    /// Always `"list"`.
    pub object: String,
    pub data: Vec<SessionSummary>,
}

/// One session of [`SessionList`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SessionSummary {
    pub id: String,
    pub task: String,
    pub prompt_length: usize,
    pub placement: Placement,
    pub deep: bool,
    /// Candidates evaluated so far (each is one API call).
    pub api_calls: u64,
    /// Memory it holds on the server: its projection, demonstrations and caches.
    pub bytes: u64,
    /// Seconds since its last use; the server drops it after its idle limit.
    pub idle_seconds: f64,
}

impl SessionInfo {
    /// Examples in `split`.
    pub fn split_size(&self, split: SplitName) -> usize {
        match split {
            SplitName::Train => self.train_size,
            SplitName::Dev => self.dev_size,
            SplitName::Test => self.test_size,
            SplitName::ContentFree => CONTENT_FREE_TEXTS.len(),
        }
    }
}

/// The content-free inputs of every session's `content_free` split (Zhao et al. 2021), put in
/// both slots of a two-input template.
pub const CONTENT_FREE_TEXTS: [&str; 3] = ["N/A", "", "[MASK]"];

/// Candidates `z`, as JSON numbers or base64 little-endian floats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum Candidates {
    /// One array of `d` numbers per candidate.
    Json(Vec<Vec<f32>>),
    /// `count` candidates of `d` floats, concatenated, little-endian, base64 (standard alphabet).
    Packed {
        dtype: FloatType,
        count: usize,
        data: String,
    },
}

/// Wire float types for packed candidates and prompts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum FloatType {
    F32,
    F16,
}

/// `POST /v1/sessions/{id}/evaluate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct EvaluateRequest {
    pub candidates: Candidates,
    #[serde(default = "default_split")]
    pub split: SplitName,
    /// Also return each example's verbalizer logits.
    #[serde(default)]
    pub return_logits: bool,
    /// Deep sessions only: the layer the candidates are for, every other layer at its chosen
    /// `z`. Without it a deep session's candidate is a whole deep prompt: every layer's `z`,
    /// layer by layer (`num_layers * d` numbers), the session's chosen layers left as they are.
    #[serde(default)]
    pub layer: Option<usize>,
}

/// `PUT /v1/sessions/{id}/layers/{layer}`: a deep session's chosen `z` for one layer (BBTv2
/// fixes each layer at its best while it tunes the others). Not an API call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SetLayerRequest {
    pub z: Vec<f32>,
}

fn default_split() -> SplitName {
    SplitName::Train
}

/// The score of one candidate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CandidateResult {
    pub loss: f64,
    pub accuracy: f64,
    /// F1 of class 1, for tasks whose metric includes it.
    pub f1: Option<f64>,
    /// `[examples][classes]`, when asked for.
    pub logits: Option<Vec<Vec<f32>>>,
}

/// Answer to `evaluate`: one result per candidate, in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EvaluateResponse {
    pub results: Vec<CandidateResult>,
    /// The session's API calls after this request.
    pub api_calls: u64,
}

/// `POST /v1/sessions/{id}/prompt`: the full prompt `A·z + p0` for one `z`, so a tuned prompt
/// can be kept and used without the session (with `/v1/forward`). Not an API call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PromptRequest {
    pub z: Vec<f32>,
}

/// Answer to `prompt`: `L` rows of `hidden` numbers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PromptResponse {
    pub prompt: Vec<Vec<f32>>,
}

/// `POST /v1/sessions/{id}/features`: the final hidden state (after the last norm) at the
/// position the label word is read from, per example of a split, under the prompt `A·z + p0`
/// (`z = 0` if absent). One API call. The feature-probe baseline trains a classifier on these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct FeaturesRequest {
    #[serde(default = "default_split")]
    pub split: SplitName,
    #[serde(default)]
    pub z: Option<Vec<f32>>,
}

/// Answer to `features`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FeaturesResponse {
    /// `[examples][hidden]`.
    pub features: Vec<Vec<f32>>,
    /// Gold labels of the train and dev splits (the client's own labelled examples); none for
    /// the test split, whose labels stay on the server (score predictions with `score`).
    pub labels: Option<Vec<usize>>,
    /// The session's API calls after this request.
    pub api_calls: u64,
}

/// `POST /v1/sessions/{id}/score`: the task's metric for the client's own class scores on a
/// split (e.g. a calibrated or a feature-probe prediction), against labels the server keeps.
/// No forward pass, not an API call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ScoreRequest {
    pub split: SplitName,
    /// `[examples][classes]`: the predicted class is each row's largest entry.
    pub scores: Vec<Vec<f32>>,
}

/// Answer to `score`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ScoreResponse {
    pub accuracy: f64,
    /// F1 of class 1, for tasks whose metric includes it.
    pub f1: Option<f64>,
}

/// `POST /v1/forward`: stateless scoring with a full prompt matrix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ForwardRequest {
    /// Template with `<S>` (or `<S1>`, `<S2>`).
    pub template: String,
    /// One entry per class: a label word or a list of words (the class scores their mean logit).
    pub verbalizer: Vec<LabelWords>,
    pub inputs: Vec<ForwardInput>,
    /// `L x hidden` prompt (rows of numbers); may be empty (L = 0).
    #[serde(default)]
    pub prompt: Vec<Vec<f32>>,
    #[serde(default)]
    pub placement: Placement,
}

/// One input of `/v1/forward`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ForwardInput {
    pub text: String,
    pub text_b: Option<String>,
}

/// Answer to `/v1/forward`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ForwardResponse {
    /// `[inputs][label words]`.
    pub logits: Vec<Vec<f32>>,
}

/// `GET /v1/usage`: what one API key has used.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Usage {
    pub api_calls: u64,
    pub tokens: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Remaining API calls under the key's quota, if it has one.
    pub quota_remaining: Option<u64>,
}

/// Every error body: a short machine-readable kind and a human explanation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub error: ErrorKind,
    pub detail: String,
}

/// What went wrong, machine-readable: the `error` field of every error body. Each kind is
/// answered with one HTTP status ([`ErrorKind::status`]); clients decide on retries by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// 400: the request cannot be understood (malformed JSON, bad base64, a bad header).
    BadRequest,
    /// 401: no API key, or an unknown one.
    Unauthorized,
    /// 404: no such route, or no such session (or another key's).
    NotFound,
    /// 404: one of the paper's tasks whose data the server lacks (its operator can fetch it).
    TaskDataMissing,
    /// 405: the route exists but not with this method.
    MethodNotAllowed,
    /// 409: the session id is taken (by another key, or for a different creation request).
    Conflict,
    /// 410: the session's caches were evicted or it expired; create a new one.
    SessionGone,
    /// 413: over a size limit (body, candidates, examples, tokens).
    TooLarge,
    /// 415: the body is not `application/json`.
    UnsupportedMediaType,
    /// 422: well-formed but invalid (an unknown field, a wrong-length or non-finite `z`, ...).
    Invalid,
    /// 429: the key's quota of API calls is spent; retrying will not help.
    QuotaExceeded,
    /// 429 from something in front of the server (a proxy's rate limit): retry after the time
    /// its `Retry-After` gives.
    RateLimited,
    /// 503 with `Retry-After`: the model queue is full; the same request may succeed shortly.
    Busy,
    /// 503: the model worker or the usage store is unavailable.
    Unavailable,
    /// 500: the server's own fault.
    Internal,
    /// A kind this client does not know (from a newer server, or a proxy's error page).
    #[serde(other)]
    Unknown,
}

impl ErrorKind {
    /// The HTTP status the server answers this kind with.
    pub fn status(self) -> u16 {
        match self {
            Self::BadRequest => 400,
            Self::Unauthorized => 401,
            Self::NotFound | Self::TaskDataMissing => 404,
            Self::MethodNotAllowed => 405,
            Self::Conflict => 409,
            Self::SessionGone => 410,
            Self::TooLarge => 413,
            Self::UnsupportedMediaType => 415,
            Self::Invalid => 422,
            Self::QuotaExceeded | Self::RateLimited => 429,
            Self::Busy | Self::Unavailable => 503,
            Self::Internal | Self::Unknown => 500,
        }
    }

    /// The kind of an error known only by its status (a framework's rejection, a proxy's page).
    pub fn from_status(status: u16) -> Self {
        match status {
            401 => Self::Unauthorized,
            404 => Self::NotFound,
            405 => Self::MethodNotAllowed,
            409 => Self::Conflict,
            410 => Self::SessionGone,
            413 => Self::TooLarge,
            415 => Self::UnsupportedMediaType,
            422 => Self::Invalid,
            429 => Self::RateLimited,
            503 => Self::Unavailable,
            500..=599 => Self::Internal,
            _ => Self::BadRequest,
        }
    }

    /// The kind as it appears in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::NotFound => "not_found",
            Self::TaskDataMissing => "task_data_missing",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Conflict => "conflict",
            Self::SessionGone => "session_gone",
            Self::TooLarge => "too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::Invalid => "invalid",
            Self::QuotaExceeded => "quota_exceeded",
            Self::RateLimited => "rate_limited",
            Self::Busy => "busy",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
            Self::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KINDS: [ErrorKind; 16] = [
        ErrorKind::BadRequest,
        ErrorKind::Unauthorized,
        ErrorKind::NotFound,
        ErrorKind::TaskDataMissing,
        ErrorKind::MethodNotAllowed,
        ErrorKind::Conflict,
        ErrorKind::SessionGone,
        ErrorKind::TooLarge,
        ErrorKind::UnsupportedMediaType,
        ErrorKind::Invalid,
        ErrorKind::QuotaExceeded,
        ErrorKind::RateLimited,
        ErrorKind::Busy,
        ErrorKind::Unavailable,
        ErrorKind::Internal,
        ErrorKind::Unknown,
    ];

    #[test]
    fn error_kinds_read_back_as_written_and_unknown_ones_are_kept_apart() {
        for kind in KINDS {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{kind}\""));
            assert_eq!(serde_json::from_str::<ErrorKind>(&json).unwrap(), kind);
        }
        let body: ErrorBody =
            serde_json::from_str(r#"{"error": "teapot", "detail": "short and stout"}"#).unwrap();
        assert_eq!(body.error, ErrorKind::Unknown);
    }

    #[test]
    fn a_status_alone_names_the_kind_the_server_would_send() {
        for kind in KINDS {
            let back = ErrorKind::from_status(kind.status());
            assert_eq!(back.status(), kind.status(), "{kind}");
        }
        for kind in [ErrorKind::SessionGone, ErrorKind::Invalid] {
            assert_eq!(ErrorKind::from_status(kind.status()), kind);
        }
        // A bare 429 is a proxy's rate limit, which a client may retry; a spent quota says so.
        assert_eq!(ErrorKind::from_status(429), ErrorKind::RateLimited);
        assert_eq!(ErrorKind::from_status(418), ErrorKind::BadRequest);
        assert_eq!(ErrorKind::from_status(502), ErrorKind::Internal);
    }
}
