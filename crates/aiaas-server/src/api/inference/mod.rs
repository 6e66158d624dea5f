//! The Open Inference Protocol (KServe v2, as Triton speaks it) under `/v2`: every model, of
//! every task, as named typed tensors. Health and server metadata are open like `/healthz`;
//! model metadata, readiness and inference need a key, as `/v1` does. Models load on first use,
//! so a model is ready whenever it exists. Errors keep their status codes (and `Retry-After`)
//! but take the protocol's shape, `{"error": "message"}`, which its clients parse.

mod tasks;
mod tensor;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{json, Value};

use super::params::AppPath;
use super::{ApiError, BodyLimit};
use crate::gate::Metered;
use crate::store::KeyRecord;
use crate::telemetry::ModelLabel;
use crate::AppState;

/// The largest inference request: a batch of prepared images as FP32 is 600 KB an image.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024 * 1024;

/// The protocol's extensions this server implements.
const EXTENSIONS: [&str; 2] = ["binary_tensor_data", "classification"];

/// Rewrites an error response from OpenAI's shape (`{"error": {"message", ...}}`) to the
/// protocol's (`{"error": "message"}`); `tritonclient` cannot print the former.
pub async fn protocol_errors(response: Response) -> Response {
    if response.status().is_success() {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, ERROR_BODY_LIMIT).await else {
        return (
            parts.status,
            Json(json!({"error": parts.status.to_string()})),
        )
            .into_response();
    };
    let message = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|body| body["error"]["message"].as_str().map(str::to_owned));
    let Some(message) = message else {
        return Response::from_parts(parts, axum::body::Body::from(bytes));
    };
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    let mut response = Json(json!({"error": message})).into_response();
    *response.status_mut() = parts.status;
    response.headers_mut().extend(parts.headers);
    response
}

/// The body of every `/v2` error.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ProtocolErrorBody {
    error: String,
}

/// Error bodies are short; anything longer is passed on as it is.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// The server's name, version and extensions.
#[utoipa::path(get, path = "/", tag = "inference protocol",
    responses((status = 200, description = "`{name, version, extensions}`", body = Value)))]
pub async fn server_metadata() -> Json<Value> {
    Json(json!({
        "name": "aiaas",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": EXTENSIONS,
    }))
}

/// The server lives.
#[utoipa::path(get, path = "/health/live", tag = "inference protocol",
    responses((status = 200, description = "`{live: true}`", body = Value)))]
pub async fn live() -> Json<Value> {
    Json(json!({"live": true}))
}

/// Ready to serve: every preloaded model is in memory (503 until then).
#[utoipa::path(get, path = "/health/ready", tag = "inference protocol", responses(
    (status = 200, description = "`{ready: true}`", body = Value),
    (status = 503, description = "`{ready: false}`", body = Value)))]
pub async fn ready(State(state): State<AppState>) -> Response {
    let ready = state.engine.is_ready() && state.store().ping().await.is_ok();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({"ready": ready}))).into_response()
}

/// A model's inputs and outputs: names, datatypes and shapes (`-1`: any length).
#[utoipa::path(get, path = "/models/{id}", tag = "inference protocol",
    params(("id" = String, Path, description = "The model id")),
    responses((status = 200, description = "`{name, versions, platform, inputs, outputs}`",
        body = Value)))]
pub async fn model_metadata(
    State(state): State<AppState>,
    Extension(key): Extension<KeyRecord>,
    AppPath(id): AppPath<String>,
) -> Result<Json<Value>, ApiError> {
    let manifest = state.manifest_for(&key, &id)?;
    Ok(Json(tasks::metadata(&manifest)))
}

/// Whether the model can serve (it exists; it loads on first use).
#[utoipa::path(get, path = "/models/{id}/ready", tag = "inference protocol",
    params(("id" = String, Path, description = "The model id")),
    responses((status = 200, description = "`{name, ready: true}`", body = Value)))]
pub async fn model_ready(
    State(state): State<AppState>,
    Extension(key): Extension<KeyRecord>,
    AppPath(id): AppPath<String>,
) -> Result<Json<Value>, ApiError> {
    state.manifest_for(&key, &id)?;
    Ok(Json(json!({"name": id, "ready": true})))
}

/// Runs the model on named tensors, in JSON or with the binary tensor extension.
#[utoipa::path(post, path = "/models/{id}/infer", tag = "inference protocol",
    params(("id" = String, Path, description = "The model id")),
    request_body(content = Value, description = "`{id?, parameters?, inputs: [{name, shape, \
        datatype, data}], outputs?: [{name, parameters?}]}`; with the binary extension, the \
        JSON header's length in `Inference-Header-Content-Length` and the tensors after it"),
    responses((status = 200, description = "`{model_name, model_version, id?, outputs}`, \
        binary outputs after the JSON header", body = Value)))]
pub async fn infer(
    State(state): State<AppState>,
    Extension(key): Extension<KeyRecord>,
    AppPath(id): AppPath<String>,
    request: Request,
) -> Result<Response, ApiError> {
    state.manifest_for(&key, &id)?;
    let limit = request.extensions().get::<BodyLimit>().map_or(0, |l| l.0);
    let headers = request.headers().clone();
    let body = Bytes::from_request(request, &()).await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(limit)
        } else {
            ApiError::invalid("inputs", format!("could not read the request body: {e}"))
        }
    })?;
    let request = tensor::parse(&headers, &body)?;
    drop(body);
    let model = state.engine.any(&id).await?;
    let outputs = tasks::infer(&state, &key, model, &request).await?;
    let mut response = tensor::respond(&id, request.id.as_deref(), outputs);
    response.extensions_mut().insert(Metered);
    response.extensions_mut().insert(ModelLabel(id));
    Ok(response)
}
