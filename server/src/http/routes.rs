//! Route handlers: parse, call the service, answer JSON. No business logic lives here.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::{Extension, Json};
use bbt::protocol::{
    CreateSessionRequest, EvaluateRequest, FeaturesRequest, FloatType, ForwardRequest,
    PromptRequest, ScoreRequest, SetLayerRequest, SplitName,
};

use super::auth::Caller;
use super::errors::ApiError;
use crate::core::candidates::CandidatesIn;
use crate::core::service::Service;
use crate::core::usage::{Account, MAX_IDEMPOTENCY_KEY};

type Result<T> = std::result::Result<T, ApiError>;

/// The `Idempotency-Key` header of a charged request: a retry with the same key is answered
/// again but charged once. A 400 unless it is 1 to 128 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(v)
            if !v.is_empty()
                && v.len() <= MAX_IDEMPOTENCY_KEY
                && v.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Ok(Some(v.to_string()))
        }
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"),
        )),
    }
}

/// `GET /health`.
pub async fn health(State(service): State<Arc<Service>>) -> impl IntoResponse {
    service.refresh_gauges();
    Json(serde_json::json!({"status": "ok", "sessions": service.sessions.len()}))
}

/// `GET /v1/models`.
pub async fn models(State(service): State<Arc<Service>>) -> impl IntoResponse {
    Json(service.models())
}

/// `POST /v1/sessions`.
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
pub async fn list_sessions(
    State(service): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
) -> impl IntoResponse {
    Json(service.list_sessions(caller.0.as_deref()))
}

/// `PUT /v1/sessions/{id}`: creates the session under the client's id (201), or finds it
/// already there from the same request (200).
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
pub async fn get_session(
    State(service): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse> {
    Ok(Json(service.session_info(caller.0.as_deref(), &id)?))
}

/// `DELETE /v1/sessions/{id}`.
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
pub async fn evaluate(
    State(service): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    request: Request,
) -> Result<impl IntoResponse> {
    let idempotency = idempotency_key(request.headers())?;
    let raw = request
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/octet-stream"));
    let (candidates, split, return_logits, layer) = if raw {
        let Query(q) = Query::<RawEvaluateQuery>::try_from_uri(request.uri())
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))?;
        let bytes = Bytes::from_request(request, &())
            .await
            .map_err(|e| ApiError::new(e.status(), "too_large", e.body_text()))?;
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
                Account {
                    key: caller.0.as_deref(),
                    idempotency: idempotency.as_deref(),
                },
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
pub async fn set_layer(
    State(service): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    Path((id, layer)): Path<(String, String)>,
    body: std::result::Result<Json<SetLayerRequest>, JsonRejection>,
) -> Result<impl IntoResponse> {
    let layer: usize = layer.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
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
pub async fn features(
    State(service): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: std::result::Result<Json<FeaturesRequest>, JsonRejection>,
) -> Result<impl IntoResponse> {
    let Json(req) = body?;
    let idempotency = idempotency_key(&headers)?;
    let account = Account {
        key: caller.0.as_deref(),
        idempotency: idempotency.as_deref(),
    };
    Ok(Json(service.features(account, &id, req).await?))
}

/// `POST /v1/sessions/{id}/score`.
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
pub async fn forward(
    State(service): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: std::result::Result<Json<ForwardRequest>, JsonRejection>,
) -> Result<impl IntoResponse> {
    let Json(req) = body?;
    let idempotency = idempotency_key(&headers)?;
    let account = Account {
        key: caller.0.as_deref(),
        idempotency: idempotency.as_deref(),
    };
    Ok(Json(service.forward(account, req).await?))
}

/// `GET /v1/usage`: the caller's own usage.
pub async fn usage(
    State(service): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
) -> Result<impl IntoResponse> {
    let key = caller.0.as_deref().unwrap_or(crate::core::usage::ANONYMOUS);
    Ok(Json(service.usage.usage(key).await?))
}

/// `GET /metrics` (Prometheus text).
pub async fn metrics(State(service): State<Arc<Service>>) -> impl IntoResponse {
    service.refresh_gauges();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        service.metrics.render(),
    )
}

/// `GET /openapi.json`.
pub async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
}

/// Any other path.
pub async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route; see /openapi.json",
    )
}
