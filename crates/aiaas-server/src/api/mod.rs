//! HTTP surfaces. `/v1` is OpenAI-compatible and keyed; `/admin` needs an admin key;
//! `/healthz` and `/metrics` are open.

mod admin;
mod chat;
mod completions;
mod embeddings;
mod error;
mod generation;
mod health;
mod json;
mod models;
mod types;
mod validate;

use axum::extract::{DefaultBodyLimit, Request};
use axum::routing::{get, post};
use axum::{middleware, Router};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

pub use error::ApiError;
pub use json::{AppJson, BodyLimit};

use crate::{gate, AppState};

pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    let v1 = Router::new()
        .route("/models", get(models::list))
        .route("/models/{id}", get(models::retrieve))
        .route("/chat/completions", post(chat::create))
        .route("/completions", post(completions::create))
        .route("/embeddings", post(embeddings::create))
        // Every /v1 route, present and future, is keyed: the layer wraps them all.
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            gate::require_key,
        ));
    let admin = Router::new()
        .route("/keys", get(admin::list_keys).post(admin::create_key))
        .route("/keys/{id}/revoke", post(admin::revoke_key))
        .route("/keys/{id}/rotate", post(admin::rotate_key))
        .route("/usage", get(admin::usage))
        .route("/audit", get(admin::audit))
        // The last layer runs first: the key is checked, then that it is an admin's.
        .route_layer(middleware::from_fn(gate::require_admin))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            gate::require_key,
        ));
    Router::new()
        .nest("/v1", v1)
        .nest("/admin", admin)
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .fallback(unknown_route)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::Extension(BodyLimit(max_body_bytes)))
        // Every response carries `x-request-id`: the caller's, or a new UUID.
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}

async fn unknown_route(request: Request) -> ApiError {
    ApiError::UnknownRoute(format!("{} {}", request.method(), request.uri().path()))
}
