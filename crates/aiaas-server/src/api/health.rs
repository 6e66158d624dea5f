//! Open routes: liveness and Prometheus metrics. They reveal no model content or keys.

use std::fmt::Write;

use aiaas_engine::EngineMetrics;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use crate::AppState;

pub async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// Ready to serve: the database answers. 503 otherwise, so a balancer stops sending traffic.
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    match state.store().ping().await {
        Ok(()) => (StatusCode::OK, Json(json!({"status": "ready"}))),
        Err(e) => {
            tracing::error!("not ready: {e}");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "unavailable", "reason": "database"})),
            )
        }
    }
}

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let m = state.engine.metrics();
    let counters = [
        (
            "aiaas_prompt_tokens_total",
            "Prompt tokens admitted to generation.",
            &m.prompt_tokens,
        ),
        (
            "aiaas_generated_tokens_total",
            "Tokens generated.",
            &m.generated_tokens,
        ),
        (
            "aiaas_generations_finished_total",
            "Generations that ran to a stop or a length limit.",
            &m.generations_finished,
        ),
        (
            "aiaas_generations_cancelled_total",
            "Generations stopped because the client went away.",
            &m.generations_cancelled,
        ),
    ];
    let mut body = String::new();
    for (name, help, counter) in counters {
        let _ = writeln!(
            body,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
            EngineMetrics::get(counter)
        );
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}
