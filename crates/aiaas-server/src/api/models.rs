//! `GET /v1/models` and `GET /v1/models/{id}`: OpenAI's model objects plus the facts that help
//! choose one (task, context length, parameters, quantization).

use aiaas_engine::ModelManifest;
use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};

use super::ApiError;
use crate::AppState;

fn model_json(m: &ModelManifest) -> Value {
    json!({
        "id": m.id,
        "object": "model",
        "created": m.created,
        "owned_by": "aiaas",
        "task": m.task,
        "architecture": m.architecture,
        "format": m.format,
        "context_length": m.context_length,
        "parameters": m.parameters,
        "quantization": m.quantization,
    })
}

pub async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    state.engine.rescan()?;
    let data: Vec<Value> = state.engine.models().iter().map(model_json).collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

pub async fn retrieve(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(model_json(&state.engine.manifest(&id)?)))
}
