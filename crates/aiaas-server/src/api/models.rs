//! `GET /v1/models` and `GET /v1/models/{id}`: OpenAI's model objects plus the facts that help
//! choose one (task, context length, parameters, quantization) and where it is in its life
//! (state, memory). The admin routes load and unload a model.

use aiaas_engine::{ModelState, ModelStatus, Task};
use axum::extract::State;
use axum::{Extension, Json};
use serde::Serialize;
use utoipa::ToSchema;

use super::params::AppPath;
use super::ApiError;
use crate::store::KeyRecord;
use crate::AppState;

/// OpenAI's model object, with what helps choose a model and where it is in its life.
#[derive(Serialize, ToSchema)]
pub struct ModelObject {
    id: String,
    object: &'static str,
    /// Unix seconds when it was imported.
    created: u64,
    owned_by: &'static str,
    /// `chat`, `completion` or `embedding`: which routes serve it.
    #[schema(value_type = String)]
    task: Task,
    architecture: String,
    format: String,
    /// The longest input in tokens (for an embedding model, per input).
    context_length: usize,
    /// An embedding model's vector length.
    dimensions: Option<usize>,
    parameters: u64,
    quantization: String,
    /// `available`, `loading` or `loaded`.
    #[schema(value_type = String)]
    state: ModelState,
    /// Bytes it holds in memory now.
    memory_bytes: u64,
    /// Loaded at start and kept loaded.
    preload: bool,
    /// Only from the unload route: whether it was loaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    unloaded: Option<bool>,
}

impl From<ModelStatus> for ModelObject {
    fn from(status: ModelStatus) -> Self {
        let m = status.manifest;
        Self {
            id: m.id,
            object: "model",
            created: m.created,
            owned_by: "aiaas",
            task: m.task,
            architecture: m.architecture,
            format: m.format,
            context_length: m.context_length,
            dimensions: m.dimensions,
            parameters: m.parameters,
            quantization: m.quantization,
            state: status.state,
            memory_bytes: status.memory_bytes,
            preload: status.preload,
            unloaded: None,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ModelList {
    object: &'static str,
    data: Vec<ModelObject>,
}

#[utoipa::path(get, path = "/models", tag = "models",
    responses((status = 200, description = "The models this key may use", body = ModelList)))]
pub async fn list(
    State(state): State<AppState>,
    Extension(key): Extension<KeyRecord>,
) -> Result<Json<ModelList>, ApiError> {
    state.engine.rescan()?;
    let data = state
        .engine
        .models()
        .into_iter()
        .filter(|m| key.allows_model(&m.manifest.id))
        .map(ModelObject::from)
        .collect();
    Ok(Json(ModelList {
        object: "list",
        data,
    }))
}

#[utoipa::path(get, path = "/models/{id}", tag = "models", params(("id" = String, Path)),
    responses((status = 200, description = "One model", body = ModelObject)))]
pub async fn retrieve(
    State(state): State<AppState>,
    Extension(key): Extension<KeyRecord>,
    AppPath(id): AppPath<String>,
) -> Result<Json<ModelObject>, ApiError> {
    if !key.allows_model(&id) {
        return Err(aiaas_engine::EngineError::ModelNotFound(id).into());
    }
    Ok(Json(state.engine.status(&id)?.into()))
}

/// Loads a model; answers once it is in memory.
#[utoipa::path(post, path = "/models/{id}/load", tag = "admin", params(("id" = String, Path)),
    responses((status = 200, description = "The model, loaded", body = ModelObject)))]
pub async fn load(
    State(state): State<AppState>,
    AppPath(id): AppPath<String>,
) -> Result<Json<ModelObject>, ApiError> {
    Ok(Json(state.engine.load(&id).await?.into()))
}

/// Unloads a model; answers once its memory is freed.
#[utoipa::path(post, path = "/models/{id}/unload", tag = "admin", params(("id" = String, Path)),
    responses((status = 200, description = "The model, unloaded", body = ModelObject)))]
pub async fn unload(
    State(state): State<AppState>,
    AppPath(id): AppPath<String>,
) -> Result<Json<ModelObject>, ApiError> {
    let unloaded = state.engine.unload(&id).await?;
    let mut model = ModelObject::from(state.engine.status(&id)?);
    model.unloaded = Some(unloaded);
    Ok(Json(model))
}
