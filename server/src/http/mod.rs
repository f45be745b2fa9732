//! The HTTP layer (axum): routes, authentication, errors, metrics and usage accounting.
//! It only translates between HTTP and [`crate::core`].

pub mod auth;
pub mod errors;
pub mod openapi;
mod payer;
pub mod routes;

use std::sync::Arc;
use std::time::Instant;

use axum::body::HttpBody;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};
use bbt::protocol::ErrorKind;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::core::service::Service;
use auth::ApiKeys;
use errors::ApiError;

/// State the middleware needs.
#[derive(Clone)]
struct Gate {
    service: Arc<Service>,
    keys: Arc<ApiKeys>,
}

/// The whole application: `/health`, `/metrics`, `/openapi.json`, and the `/v1` API behind auth.
pub fn router(service: Arc<Service>, keys: ApiKeys) -> Router {
    let gate = Gate {
        service: service.clone(),
        keys: Arc::new(keys),
    };
    let v1 = OpenApiRouter::new()
        .routes(routes!(routes::models))
        .routes(routes!(routes::create_session, routes::list_sessions))
        .routes(routes!(
            routes::get_session,
            routes::put_session,
            routes::delete_session
        ))
        .routes(routes!(routes::evaluate))
        .routes(routes!(routes::prompt))
        .routes(routes!(routes::features))
        .routes(routes!(routes::score))
        .routes(routes!(routes::set_layer))
        .routes(routes!(routes::forward))
        .routes(routes!(routes::usage))
        .route_layer(middleware::from_fn_with_state(gate.clone(), authenticate));
    let (app, doc) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(routes::health))
        .routes(routes!(routes::metrics))
        .routes(routes!(routes::openapi))
        .merge(v1)
        .split_for_parts();
    app.layer(Extension(openapi::Document::new(&doc)))
        .fallback(routes::not_found)
        .layer(middleware::from_fn(json_errors))
        .layer(middleware::from_fn_with_state(gate, observe))
        .layer(DefaultBodyLimit::max(service.limits.max_body_bytes))
        .with_state(service)
}

/// Every error answer as JSON `{"error", "detail"}`: the rejections axum makes itself (a path
/// that is not valid UTF-8, a method a route does not take, ...) come as plain text or empty,
/// and are rewritten here, so clients parse one error shape.
async fn json_errors(req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    // Framework rejections are a line of text; anything longer is cut, not buffered whole.
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let detail = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    let kind = ErrorKind::from_status(status.as_u16());
    let mut rewritten = ApiError::with_status(status, kind, detail).into_response();
    for name in [header::ALLOW, header::RETRY_AFTER] {
        if let Some(v) = parts.headers.get(&name) {
            rewritten.headers_mut().insert(name, v.clone());
        }
    }
    rewritten
}

/// 401 unless the request carries a known key; the key travels on as a [`auth::Caller`].
async fn authenticate(State(gate): State<Gate>, mut req: Request, next: Next) -> Response {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok());
    match gate.keys.authenticate(header) {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(why) => ApiError::new(ErrorKind::Unauthorized, why).into_response(),
    }
}

/// Request metrics by route and status, and bytes in/out per key.
async fn observe(State(gate): State<Gate>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().as_str().to_string();
    let bytes_in = content_length(req.headers());
    let key = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| gate.keys.authenticate(Some(h)).ok())
        .and_then(|c| c.0);
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    let m = &gate.service.metrics;
    m.requests
        .with_label_values(&[&route, &method, &status])
        .inc();
    m.latency
        .with_label_values(&[&route, &method, &status])
        .observe(started.elapsed().as_secs_f64());
    if route.starts_with("/v1") {
        let bytes_out = response
            .body()
            .size_hint()
            .exact()
            .unwrap_or_else(|| content_length(response.headers()));
        let account = key.as_deref().unwrap_or(crate::core::usage::ANONYMOUS);
        gate.service
            .usage
            .record(account, bytes_in, bytes_out)
            .await;
    }
    response
}

fn content_length(headers: &axum::http::HeaderMap) -> u64 {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
