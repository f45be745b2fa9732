//! The OpenAPI document, generated from the protocol types (`bbt::protocol`, which derive
//! `ToSchema`) and the route handlers' annotations, so it cannot drift from what the server does.

use std::sync::Arc;

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// The document's fixed parts; the router adds every route it serves.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "bbt-server",
        description = "Forward-only LM-as-a-Service for black-box prompt tuning (BBT). Every /v1 \
                       route needs `Authorization: Bearer KEY` when the server runs with \
                       --api-keys. Every error is JSON `{\"error\": kind, \"detail\": text}`; \
                       request bodies reject unknown fields with a 422 naming them."
    ),
    components(schemas(bbt::protocol::ErrorBody)),
    modifiers(&BearerKeys)
)]
pub struct ApiDoc;

/// The `bearer` security scheme the `/v1` routes name.
struct BearerKeys;

impl Modify for BearerKeys {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The finished document as JSON, served at `/openapi.json`.
#[derive(Clone)]
pub struct Document(pub Arc<String>);

impl Document {
    /// Serialises `doc` once.
    pub fn new(doc: &utoipa::openapi::OpenApi) -> Self {
        Self(Arc::new(
            doc.to_pretty_json()
                .expect("the OpenAPI document serialises"),
        ))
    }
}
