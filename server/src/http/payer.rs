//! Who pays for a charged request: the caller's key and the request's `Idempotency-Key`, as an
//! extractor of the routes that spend API calls.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use bbt::protocol::ErrorKind;

use super::auth::Caller;
use super::errors::ApiError;
use crate::core::usage::{Account, MAX_IDEMPOTENCY_KEY};

/// The account a charged request is booked to.
pub struct Payer {
    key: Option<String>,
    idempotency: Option<String>,
}

impl Payer {
    /// The account in the form the service charges.
    pub fn account(&self) -> Account<'_> {
        Account {
            key: self.key.as_deref(),
            idempotency: self.idempotency.as_deref(),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Payer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let key = parts.extensions.get::<Caller>().and_then(|c| c.0.clone());
        Ok(Self {
            key,
            idempotency: idempotency_key(&parts.headers)?,
        })
    }
}

/// The `Idempotency-Key` header of a charged request: a retry with the same key is answered
/// again but charged once. A 400 unless it is 1 to 128 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
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
            ErrorKind::BadRequest,
            format!("Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"),
        )),
    }
}
