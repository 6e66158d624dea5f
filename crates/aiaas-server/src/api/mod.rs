//! HTTP surfaces. `/v1` is OpenAI-compatible and keyed; `/admin` needs an admin key;
//! `/healthz`, `/readyz`, `/metrics` and `/openapi.json` are open. Every route is registered
//! with its OpenAPI description (`openapi`).

mod admin;
mod audio;
mod chat;
mod completions;
mod embeddings;
mod error;
mod files;
mod generation;
mod health;
mod images;
mod inference;
mod json;
mod models;
mod openapi;
mod params;
mod types;
mod validate;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request};
use axum::{middleware, Router};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::ApiError;
pub use json::{AppJson, BodyLimit};

use crate::{gate, telemetry, AppState};

/// The application. `log_request_bodies` is the operator's opt-in to request content in the
/// logs (`telemetry::log_request_body`).
pub fn router(state: AppState, max_body_bytes: usize, log_request_bodies: bool) -> Router {
    // Uploads may be larger than other bodies: room for the file and the form around it.
    let upload_limit = usize::try_from(state.files.max_bytes)
        .unwrap_or(usize::MAX)
        .saturating_add(64 * 1024);
    let files = OpenApiRouter::new()
        .routes(routes!(files::upload, files::list))
        .layer(DefaultBodyLimit::max(upload_limit))
        .routes(routes!(files::retrieve, files::delete))
        .routes(routes!(files::content));
    let audio = OpenApiRouter::new()
        .routes(routes!(audio::transcriptions))
        .routes(routes!(audio::translations))
        .layer(DefaultBodyLimit::max(audio::MAX_AUDIO_BYTES + 64 * 1024));
    let images = OpenApiRouter::new()
        .routes(routes!(images::classify))
        .layer(DefaultBodyLimit::max(images::MAX_REQUEST_BYTES))
        .layer(axum::Extension(BodyLimit(images::MAX_REQUEST_BYTES)));
    let v1 = OpenApiRouter::new()
        .routes(routes!(models::list))
        .routes(routes!(models::retrieve))
        .routes(routes!(chat::create))
        .routes(routes!(completions::create))
        .routes(routes!(embeddings::create))
        .merge(files)
        .merge(audio)
        .merge(images);
    let v1 = if log_request_bodies {
        v1.route_layer(middleware::from_fn(telemetry::log_request_body))
    } else {
        v1
    };
    let v1 = v1
        // Every /v1 route, present and future, is keyed: the layer wraps them all.
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            gate::require_key,
        ));
    // The Open Inference Protocol: health and server metadata open, the rest keyed.
    let v2_keyed = OpenApiRouter::new()
        .routes(routes!(inference::model_metadata))
        .routes(routes!(inference::model_ready))
        .routes(routes!(inference::infer))
        .layer(DefaultBodyLimit::max(inference::MAX_REQUEST_BYTES))
        .layer(axum::Extension(BodyLimit(inference::MAX_REQUEST_BYTES)))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            gate::require_key,
        ));
    let v2 = OpenApiRouter::new()
        .routes(routes!(inference::server_metadata))
        .routes(routes!(inference::live))
        .routes(routes!(inference::ready))
        .merge(v2_keyed)
        .layer(middleware::map_response(inference::protocol_errors));
    let admin = OpenApiRouter::new()
        .routes(routes!(admin::list_keys, admin::create_key))
        .routes(routes!(admin::revoke_key))
        .routes(routes!(admin::rotate_key))
        .routes(routes!(admin::usage))
        .routes(routes!(admin::audit))
        .routes(routes!(models::load))
        .routes(routes!(models::unload))
        // The last layer runs first: the key is checked, then that it is an admin's.
        .route_layer(middleware::from_fn(gate::require_admin))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            gate::require_key,
        ));
    let open = OpenApiRouter::new()
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(telemetry::metrics))
        .routes(routes!(openapi::document));
    let track = || middleware::from_fn_with_state(state.clone(), telemetry::track);
    let (routes, mut document) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .nest("/v1", v1.route_layer(track()))
        .nest("/admin", admin.route_layer(track()))
        .nest("/v2", v2.route_layer(track()))
        .merge(open.route_layer(track()))
        .split_for_parts();
    openapi::add_keys_and_errors(&mut document);
    routes
        .fallback(unknown_route)
        .layer(axum::Extension(openapi::Served(Arc::new(document))))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::Extension(BodyLimit(max_body_bytes)))
        // Every response carries `x-request-id`: the caller's, or a new UUID; every log line
        // of a request runs in a span that carries it.
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(telemetry::request_span)
                .on_response(DefaultOnResponse::new().level(tracing::Level::INFO)),
        )
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}

async fn unknown_route(request: Request) -> ApiError {
    ApiError::UnknownRoute(format!("{} {}", request.method(), request.uri().path()))
}
