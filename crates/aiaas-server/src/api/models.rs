//! `GET /v1/models` and `GET /v1/models/{id}`: OpenAI's model objects plus the facts that help
//! choose one (task, context length, parameters, quantization).

use aiaas_engine::ModelManifest;
use axum::extract::{Path, State};
use axum::{Extension, Json};
use serde_json::{json, Value};

use super::ApiError;
use crate::store::KeyRecord;
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
        "dimensions": m.dimensions,
        "parameters": m.parameters,
        "quantization": m.quantization,
    })
}

pub async fn list(
    State(state): State<AppState>,
    Extension(key): Extension<KeyRecord>,
) -> Result<Json<Value>, ApiError> {
    state.engine.rescan()?;
    let models = state.engine.models();
    let data: Vec<Value> = models
        .iter()
        .filter(|m| key.allows_model(&m.id))
        .map(model_json)
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

pub async fn retrieve(
    State(state): State<AppState>,
    Extension(key): Extension<KeyRecord>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if !key.allows_model(&id) {
        return Err(aiaas_engine::EngineError::ModelNotFound(id).into());
    }
    Ok(Json(model_json(&state.engine.manifest(&id)?)))
}
