//! The OpenAPI 3.1 document served at `/openapi.json`. It is generated from the routes
//! themselves: every handler carries its `#[utoipa::path]` and is registered through
//! `OpenApiRouter`, so no route can exist undocumented. This module adds what the keyed routes
//! share: the bearer key and the errors they answer with.

use std::sync::Arc;

use axum::{Extension, Json};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, OpenApi as Document, Ref, ResponseBuilder, SecurityRequirement,
};
use utoipa::OpenApi;

use super::error::ErrorBody;
use super::inference::ProtocolErrorBody;

/// The name of the bearer-key security scheme in the document.
const KEY_SCHEME: &str = "api_key";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "aiaas",
        description = "AI models as a service: OpenAI-compatible chat, completions, \
                       embeddings, speech and image classification over keys with limits and \
                       usage, the Open Inference Protocol (KServe v2) for every model, plus \
                       administration and operations routes."
    ),
    components(schemas(ErrorBody, ProtocolErrorBody))
)]
pub struct ApiDoc;

/// The document, shared by every request for it.
#[derive(Clone)]
pub struct Served(pub Arc<Document>);

#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "This document", body = serde_json::Value)))]
pub async fn document(Extension(Served(document)): Extension<Served>) -> Json<Arc<Document>> {
    Json(document)
}

/// Adds, to every operation under `/v1`, `/admin` and `/v2/models`, the key it needs and the
/// errors it can answer with (in OpenAI's error shape; under `/v2`, the protocol's).
pub fn add_keys_and_errors(document: &mut Document) {
    document
        .components
        .get_or_insert_with(Default::default)
        .add_security_scheme(
            KEY_SCHEME,
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    for (path, item) in document.paths.paths.iter_mut() {
        let admin = path.starts_with("/admin/");
        let protocol = path.starts_with("/v2/models/");
        if !admin && !protocol && !path.starts_with("/v1/") {
            continue;
        }
        let body = if protocol {
            "ProtocolErrorBody"
        } else {
            "ErrorBody"
        };
        let operations = [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.delete,
        ];
        for operation in operations.into_iter().flatten() {
            operation.security = Some(vec![SecurityRequirement::new(
                KEY_SCHEME,
                Vec::<String>::new(),
            )]);
            for (status, description) in errors(admin) {
                operation
                    .responses
                    .responses
                    .entry(status.to_string())
                    .or_insert_with(|| error_response(description, body).into());
            }
        }
    }
}

/// The statuses a keyed route answers errors with, and when.
fn errors(admin: bool) -> Vec<(u16, &'static str)> {
    let mut errors = vec![
        (400, "The request is invalid; the message names the field"),
        (401, "No key, or not a valid one"),
        (404, "No such model or object (or not for this key)"),
        (413, "The body is over the size limit"),
        (429, "A rate limit or quota of the key; see Retry-After"),
        (503, "Overloaded, or the model is loading; see Retry-After"),
    ];
    if admin {
        errors.push((403, "The key is not an admin key"));
    }
    errors
}

fn error_response(description: &str, body: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name(body)))
                .build(),
        )
        .build()
}
