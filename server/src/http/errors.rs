//! Every failure as a status code and a JSON body `{"error": kind, "detail": text}`.

use axum::extract::rejection::JsonRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bbt::protocol::{ErrorBody, ErrorKind};

use crate::core::CoreError;

/// Seconds a client is asked to wait (`Retry-After`) when the model queue is full.
pub const BUSY_RETRY_AFTER_SECS: u64 = 1;

/// An error on its way to the client.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
    /// `Retry-After` seconds, for errors that a later retry may not meet.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error of `kind`, answered with the kind's status.
    pub fn new(kind: ErrorKind, detail: impl Into<String>) -> Self {
        Self::with_status(status_of(kind), kind, detail)
    }

    /// An error whose status was decided elsewhere (a framework's rejection).
    pub fn with_status(status: StatusCode, kind: ErrorKind, detail: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody {
                error: kind,
                detail: detail.into(),
            },
            retry_after: None,
        }
    }
}

/// The status that the protocol assigns to `kind`.
fn status_of(kind: ErrorKind) -> StatusCode {
    StatusCode::from_u16(kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        let (kind, detail) = e.parts();
        let mut error = Self::new(kind, detail);
        if kind == ErrorKind::Busy {
            error.retry_after = Some(BUSY_RETRY_AFTER_SECS);
        }
        error
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let status = r.status();
        Self::with_status(
            status,
            ErrorKind::from_status(status.as_u16()),
            r.body_text(),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_asks_for_a_retry_and_a_spent_quota_does_not() {
        let busy = ApiError::from(CoreError::Busy("full".into())).into_response();
        assert_eq!(busy.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(busy.headers()[header::RETRY_AFTER], "1");
        let quota = ApiError::from(CoreError::Quota("spent".into())).into_response();
        assert_eq!(quota.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(quota.headers().get(header::RETRY_AFTER).is_none());
    }
}
