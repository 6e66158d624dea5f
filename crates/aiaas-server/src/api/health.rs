//! Open routes: liveness and readiness. They reveal no model content or keys.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use crate::AppState;

/// The process lives.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "`{status: ok}`", body = serde_json::Value)))]
pub async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "`{status: ready}`", body = serde_json::Value),
    (status = 503, description = "`{status: unavailable, reason}`", body = serde_json::Value)))]
/// Ready to serve: the database answers and every preloaded model is in memory. 503
/// otherwise, so a balancer sends no traffic yet.
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let unavailable = |reason: &str| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "reason": reason})),
        )
    };
    if let Err(e) = state.store().ping().await {
        tracing::error!("not ready: {e}");
        return unavailable("database");
    }
    if !state.engine.is_ready() {
        return unavailable("preloading models");
    }
    (StatusCode::OK, Json(json!({"status": "ready"})))
}
