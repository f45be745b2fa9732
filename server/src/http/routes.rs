//! Route handlers: parse, call the service, answer JSON. No business logic lives here.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::{Extension, Json};
use bbt::protocol::{
    CreateSessionRequest, ErrorBody, ErrorKind, EvaluateRequest, EvaluateResponse, FeaturesRequest,
    FeaturesResponse, FloatType, ForwardRequest, ForwardResponse, ModelsResponse, PromptRequest,
    PromptResponse, ScoreRequest, ScoreResponse, SessionInfo, SessionList, SetLayerRequest,
    SplitName, Usage,
};

use super::auth::Caller;
use super::errors::ApiError;
use super::openapi::Document;
use super::payer::Payer;
use crate::core::candidates::CandidatesIn;
use crate::core::service::Service;

type Result<T> = std::result::Result<T, ApiError>;

/// `GET /health`.
#[utoipa::path(get, path = "/health", tag = "service",
    responses((status = 200, description = "alive: `{\"status\": \"ok\", \"sessions\": N}`")))]
pub async fn health(State(service): State<Arc<Service>>) -> impl IntoResponse {
    service.refresh_gauges();
    Json(serde_json::json!({"status": "ok", "sessions": service.sessions.len()}))
}

/// `GET /v1/models`.
#[utoipa::path(get, path = "/v1/models", tag = "models", security(("bearer" = [])),
    responses((status = 200, body = ModelsResponse),
        (status = 401, description = "no or an unknown API key", body = ErrorBody)))]
pub async fn models(State(service): State<Arc<Service>>) -> impl IntoResponse {
    Json(service.models())
}

/// `POST /v1/sessions`.
#[utoipa::path(post, path = "/v1/sessions", tag = "sessions", security(("bearer" = [])),
    request_body = CreateSessionRequest,
    responses((status = 201, body = SessionInfo, headers(("Location" = String, description = "/v1/sessions/{id}"))),
        (status = 400, description = "malformed JSON, invalid UTF-8, bad base64, a bad Idempotency-Key", body = ErrorBody),
        (status = 401, description = "no or an unknown API key", body = ErrorBody),
        (status = 404, description = "task_data_missing: one of the paper's tasks whose data this server lacks", body = ErrorBody),
        (status = 413, description = "over a size limit (body, candidates, examples, tokens)", body = ErrorBody),
        (status = 422, description = "well-formed but invalid: an unknown field, a wrong-length or non-finite z, ...", body = ErrorBody),
        (status = 500, description = "the server's own fault", body = ErrorBody),
        (status = 503, description = "the model queue is full (Retry-After), or the usage store is unreachable", body = ErrorBody)))]
pub async fn create_session(
    State(service): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    body: std::result::Result<Json<CreateSessionRequest>, JsonRejection>,
) -> Result<impl IntoResponse> {
    let Json(req) = body?;
    let (info, _) = service
        .create_session(caller.0.as_deref(), req, None)
        .await?;
    Ok((StatusCode::CREATED, location(&info.id), Json(info)))
}

/// The `Location` header of a created session.
fn location(id: &str) -> [(header::HeaderName, String); 1] {
    [(header::LOCATION, format!("/v1/sessions/{id}"))]
}

/// `GET /v1/sessions`: the caller's own sessions, most recently used first.
#[utoipa::path(get, path = "/v1/sessions", tag = "sessions", security(("bearer" = [])),
    responses((status = 200, body = SessionList),
        (status = 401, description = "no or an unknown API key", body = ErrorBody)))]
pub async fn list_sessions(
    State(service): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
) -> impl IntoResponse {
    Json(service.list_sessions(caller.0.as_deref()))
}

/// `PUT /v1/sessions/{id}`: creates the session under the client's id (201), or finds it
/// already there from the same request (200).
#[utoipa::path(put, path = "/v1/sessions/{id}", tag = "sessions", security(("bearer" = [])),
    params(("id" = String, Path, description = "The session id")),
    request_body = CreateSessionRequest,
    responses((status = 201, description = "created", body = SessionInfo, headers(("Location" = String))),
        (status = 200, description = "already there, from the same request", body = SessionInfo),
        (status = 400, description = "malformed JSON, invalid UTF-8, bad base64, a bad Idempotency-Key", body = ErrorBody),
        (status = 401, description = "no or an unknown API key", body = ErrorBody),
        (status = 404, description = "task_data_missing: one of the paper's tasks whose data this server lacks", body = ErrorBody),
        (status = 409, description = "the session id is taken by another request or key", body = ErrorBody),
        (status = 413, description = "over a size limit (body, candidates, examples, tokens)", body = ErrorBody),
        (status = 422, description = "well-formed but invalid: an unknown field, a wrong-length or non-finite z, ...", body = ErrorBody),
        (status = 500, description = "the server's own fault", body = ErrorBody),
        (status = 503, description = "the model queue is full (Retry-After), or the usage store is unreachable", body = ErrorBody)))]
pub async fn put_session(
    State(service): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: std::result::Result<Json<CreateSessionRequest>, JsonRejection>,
) -> Result<impl IntoResponse> {
    let Json(req) = body?;
    let (info, created) = service
        .create_session(caller.0.as_deref(), req, Some(&id))
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, location(&info.id), Json(info)))
}

/// `GET /v1/sessions/{id}`.
#[utoipa::path(get, path = "/v1/sessions/{id}", tag = "sessions", security(("bearer" = [])),
    params(("id" = String, Path, description = "The session id")),
    responses((status = 200, body = SessionInfo),
        (status = 401, description = "no or an unknown API key", body = ErrorBody),
        (status = 404, description = "no such session (or another key's)", body = ErrorBody),
        (status = 410, description = "the session expired or was evicted; create a new one", body = ErrorBody)))]
pub async fn get_session(
    State(service): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse> {
    Ok(Json(service.session_info(caller.0.as_deref(), &id)?))
}

/// `DELETE /v1/sessions/{id}`.
#[utoipa::path(delete, path = "/v1/sessions/{id}", tag = "sessions", security(("bearer" = [])),
    params(("id" = String, Path, description = "The session id")),
    responses((status = 204, description = "deleted"),
        (status = 401, description = "no or an unknown API key", body = ErrorBody),
        (status = 404, description = "no such session (or another key's)", body = ErrorBody),
        (status = 410, description = "the session expired or was evicted; create a new one", body = ErrorBody)))]
pub async fn delete_session(
    State(service): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse> {
    service.delete_session(caller.0.as_deref(), &id)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Query of a binary `evaluate` (`?split=train&dtype=f32&return_logits=false`).
#[derive(Debug, serde::Deserialize)]
pub struct RawEvaluateQuery {
    #[serde(default = "train")]
    split: SplitName,
    dtype: FloatType,
    #[serde(default)]
    return_logits: bool,
    layer: Option<usize>,
}

fn train() -> SplitName {
    SplitName::Train
}

/// `POST /v1/sessions/{id}/evaluate`: a JSON [`EvaluateRequest`], or with
/// `Content-Type: application/octet-stream` the candidates as raw little-endian floats and the
/// rest in the query string.
#[utoipa::path(post, path = "/v1/sessions/{id}/evaluate", tag = "sessions", security(("bearer" = [])),
    params(("id" = String, Path, description = "The session id"), ("Idempotency-Key" = Option<String>, Header, description = "A retry with the same key is answered again but charged once"),
        ("split" = Option<SplitName>, Query, description = "raw bodies: the split (default train)"),
        ("dtype" = Option<FloatType>, Query, description = "raw bodies: f32 or f16"),
        ("return_logits" = Option<bool>, Query, description = "raw bodies: also return the logits"),
        ("layer" = Option<usize>, Query, description = "raw bodies of deep sessions: the layer the candidates are for; without it each candidate is a whole deep prompt (num_layers x d numbers)")),
    request_body(description = "JSON, or the candidates as little-endian floats of `dtype` (application/octet-stream) with the rest in the query",
        content((EvaluateRequest = "application/json"), ("application/octet-stream"))),
    responses((status = 200, body = EvaluateResponse),
        (status = 400, description = "malformed JSON, invalid UTF-8, bad base64, a bad Idempotency-Key", body = ErrorBody),
        (status = 401, description = "no or an unknown API key", body = ErrorBody),
        (status = 404, description = "no such session (or another key's)", body = ErrorBody),
        (status = 410, description = "the session expired or was evicted; create a new one", body = ErrorBody),
        (status = 413, description = "over a size limit (body, candidates, examples, tokens)", body = ErrorBody),
        (status = 422, description = "well-formed but invalid: an unknown field, a wrong-length or non-finite z, ...", body = ErrorBody),
        (status = 429, description = "the key's quota of API calls is spent", body = ErrorBody),
        (status = 500, description = "the server's own fault", body = ErrorBody),
        (status = 503, description = "the model queue is full (Retry-After), or the usage store is unreachable", body = ErrorBody)))]
pub async fn evaluate(
    State(service): State<Arc<Service>>,
    payer: Payer,
    Path(id): Path<String>,
    request: Request,
) -> Result<impl IntoResponse> {
    let raw = request
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/octet-stream"));
    let (candidates, split, return_logits, layer) = if raw {
        let Query(q) = Query::<RawEvaluateQuery>::try_from_uri(request.uri())
            .map_err(|e| ApiError::new(ErrorKind::BadRequest, e.body_text()))?;
        let bytes = Bytes::from_request(request, &())
            .await
            .map_err(|e| ApiError::with_status(e.status(), ErrorKind::TooLarge, e.body_text()))?;
        let input = CandidatesIn::Raw {
            dtype: q.dtype,
            bytes: bytes.to_vec(),
        };
        (input, q.split, q.return_logits, q.layer)
    } else {
        let Json(req) = Json::<EvaluateRequest>::from_request(request, &())
            .await
            .map_err(ApiError::from)?;
        (
            CandidatesIn::Json(req.candidates),
            req.split,
            req.return_logits,
            req.layer,
        )
    };
    Ok(Json(
        service
            .evaluate(
                payer.account(),
                &id,
                candidates,
                split,
                return_logits,
                layer,
            )
            .await?,
    ))
}

/// `PUT /v1/sessions/{id}/layers/{layer}`.
#[utoipa::path(put, path = "/v1/sessions/{id}/layers/{layer}", tag = "sessions", security(("bearer" = [])),
    params(("id" = String, Path, description = "The session id"), ("layer" = usize, Path, description = "The layer")),
    request_body = SetLayerRequest,
    responses((status = 200, body = SessionInfo),
        (status = 400, description = "malformed JSON, invalid UTF-8, bad base64, a bad Idempotency-Key", body = ErrorBody),
        (status = 401, description = "no or an unknown API key", body = ErrorBody),
        (status = 404, description = "no such session (or another key's)", body = ErrorBody),
        (status = 410, description = "the session expired or was evicted; create a new one", body = ErrorBody),
        (status = 422, description = "well-formed but invalid: an unknown field, a wrong-length or non-finite z, ...", body = ErrorBody)))]
pub async fn set_layer(
    State(service): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    Path((id, layer)): Path<(String, String)>,
    body: std::result::Result<Json<SetLayerRequest>, JsonRejection>,
) -> Result<impl IntoResponse> {
    let layer: usize = layer.parse().map_err(|_| {
        ApiError::new(
            ErrorKind::BadRequest,
            format!("`{layer}` is not a layer number"),
        )
    })?;
    let Json(req) = body?;
    Ok(Json(
        service
            .set_layer(caller.0.as_deref(), &id, layer, req.z)
            .await?,
    ))
}

/// `POST /v1/sessions/{id}/prompt`.
#[utoipa::path(post, path = "/v1/sessions/{id}/prompt", tag = "sessions", security(("bearer" = [])),
    params(("id" = String, Path, description = "The session id")),
    request_body = PromptRequest,
    responses((status = 200, body = PromptResponse),
        (status = 400, description = "malformed JSON, invalid UTF-8, bad base64, a bad Idempotency-Key", body = ErrorBody),
        (status = 401, description = "no or an unknown API key", body = ErrorBody),
        (status = 404, description = "no such session (or another key's)", body = ErrorBody),
        (status = 410, description = "the session expired or was evicted; create a new one", body = ErrorBody),
        (status = 422, description = "well-formed but invalid: an unknown field, a wrong-length or non-finite z, ...", body = ErrorBody)))]
pub async fn prompt(
    State(service): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: std::result::Result<Json<PromptRequest>, JsonRejection>,
) -> Result<impl IntoResponse> {
    let Json(req) = body?;
    Ok(Json(service.prompt(caller.0.as_deref(), &id, &req.z)?))
}

/// `POST /v1/sessions/{id}/features`.
#[utoipa::path(post, path = "/v1/sessions/{id}/features", tag = "sessions", security(("bearer" = [])),
    params(("id" = String, Path, description = "The session id"), ("Idempotency-Key" = Option<String>, Header, description = "A retry with the same key is answered again but charged once")),
    request_body = FeaturesRequest,
    responses((status = 200, body = FeaturesResponse),
        (status = 400, description = "malformed JSON, invalid UTF-8, bad base64, a bad Idempotency-Key", body = ErrorBody),
        (status = 401, description = "no or an unknown API key", body = ErrorBody),
        (status = 404, description = "no such session (or another key's)", body = ErrorBody),
        (status = 410, description = "the session expired or was evicted; create a new one", body = ErrorBody),
        (status = 422, description = "well-formed but invalid: an unknown field, a wrong-length or non-finite z, ...", body = ErrorBody),
        (status = 429, description = "the key's quota of API calls is spent", body = ErrorBody),
        (status = 500, description = "the server's own fault", body = ErrorBody),
        (status = 503, description = "the model queue is full (Retry-After), or the usage store is unreachable", body = ErrorBody)))]
pub async fn features(
    State(service): State<Arc<Service>>,
    payer: Payer,
    Path(id): Path<String>,
    body: std::result::Result<Json<FeaturesRequest>, JsonRejection>,
) -> Result<impl IntoResponse> {
    let Json(req) = body?;
    Ok(Json(service.features(payer.account(), &id, req).await?))
}

/// `POST /v1/sessions/{id}/score`.
#[utoipa::path(post, path = "/v1/sessions/{id}/score", tag = "sessions", security(("bearer" = [])),
    params(("id" = String, Path, description = "The session id")),
    request_body = ScoreRequest,
    responses((status = 200, body = ScoreResponse),
        (status = 400, description = "malformed JSON, invalid UTF-8, bad base64, a bad Idempotency-Key", body = ErrorBody),
        (status = 401, description = "no or an unknown API key", body = ErrorBody),
        (status = 404, description = "no such session (or another key's)", body = ErrorBody),
        (status = 410, description = "the session expired or was evicted; create a new one", body = ErrorBody),
        (status = 422, description = "well-formed but invalid: an unknown field, a wrong-length or non-finite z, ...", body = ErrorBody)))]
pub async fn score(
    State(service): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: std::result::Result<Json<ScoreRequest>, JsonRejection>,
) -> Result<impl IntoResponse> {
    let Json(req) = body?;
    Ok(Json(service.score(caller.0.as_deref(), &id, &req)?))
}

/// `POST /v1/forward`.
#[utoipa::path(post, path = "/v1/forward", tag = "models", security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "A retry with the same key is answered again but charged once")),
    request_body = ForwardRequest,
    responses((status = 200, body = ForwardResponse),
        (status = 400, description = "malformed JSON, invalid UTF-8, bad base64, a bad Idempotency-Key", body = ErrorBody),
        (status = 401, description = "no or an unknown API key", body = ErrorBody),
        (status = 413, description = "over a size limit (body, candidates, examples, tokens)", body = ErrorBody),
        (status = 422, description = "well-formed but invalid: an unknown field, a wrong-length or non-finite z, ...", body = ErrorBody),
        (status = 429, description = "the key's quota of API calls is spent", body = ErrorBody),
        (status = 500, description = "the server's own fault", body = ErrorBody),
        (status = 503, description = "the model queue is full (Retry-After), or the usage store is unreachable", body = ErrorBody)))]
pub async fn forward(
    State(service): State<Arc<Service>>,
    payer: Payer,
    body: std::result::Result<Json<ForwardRequest>, JsonRejection>,
) -> Result<impl IntoResponse> {
    let Json(req) = body?;
    Ok(Json(service.forward(payer.account(), req).await?))
}

/// `GET /v1/usage`: the caller's own usage.
#[utoipa::path(get, path = "/v1/usage", tag = "service", security(("bearer" = [])),
    responses((status = 200, body = Usage),
        (status = 401, description = "no or an unknown API key", body = ErrorBody),
        (status = 503, description = "the model queue is full (Retry-After), or the usage store is unreachable", body = ErrorBody)))]
pub async fn usage(
    State(service): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
) -> Result<impl IntoResponse> {
    let key = caller.0.as_deref().unwrap_or(crate::core::usage::ANONYMOUS);
    Ok(Json(service.usage.usage(key).await?))
}

/// `GET /metrics` (Prometheus text).
#[utoipa::path(get, path = "/metrics", tag = "service",
    responses((status = 200, description = "Prometheus' text exposition", content_type = "text/plain")))]
pub async fn metrics(State(service): State<Arc<Service>>) -> impl IntoResponse {
    service.refresh_gauges();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        service.metrics.render(),
    )
}

/// `GET /openapi.json`.
#[utoipa::path(get, path = "/openapi.json", tag = "service",
    responses((status = 200, description = "this document")))]
pub async fn openapi(Extension(doc): Extension<Document>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        doc.0.as_str().to_string(),
    )
}

/// Any other path.
pub async fn not_found() -> ApiError {
    ApiError::new(ErrorKind::NotFound, "no such route; see /openapi.json")
}
