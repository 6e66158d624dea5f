//! `/admin`: key management, usage reports and the audit log, for admin keys only. The CLI
//! uses the same operations on the local database.

use axum::extract::{Path, Query, State};
use axum::{Extension, Json};
use serde_json::{json, Value};

use super::{ApiError, AppJson};
use crate::gate::KeySpec;
use crate::store::{KeyRecord, UsageFilter};
use crate::AppState;

/// How many audit entries one request returns at most.
const AUDIT_PAGE: i64 = 1000;

pub async fn list_keys(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let keys = state.store().keys().await?;
    Ok(Json(json!({"object": "list", "data": keys})))
}

pub async fn create_key(
    State(state): State<AppState>,
    Extension(actor): Extension<KeyRecord>,
    AppJson(spec): AppJson<KeySpec>,
) -> Result<Json<Value>, ApiError> {
    if spec.name.trim().is_empty() {
        return Err(ApiError::invalid("name", "a key needs a non-empty name"));
    }
    let limits = [
        ("rpm", spec.rpm),
        ("tpm", spec.tpm),
        ("daily_tokens", spec.daily_tokens),
        ("monthly_tokens", spec.monthly_tokens),
    ];
    for (field, value) in limits {
        if value.is_some_and(|v| v < 1) {
            return Err(ApiError::invalid(
                field,
                format!("{field} must be at least 1"),
            ));
        }
    }
    let (secret, record) = state.keys.create(&spec, Some(&actor.id)).await?;
    Ok(Json(json!({"key": secret, "record": record})))
}

pub async fn revoke_key(
    State(state): State<AppState>,
    Extension(actor): Extension<KeyRecord>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let record = state
        .keys
        .revoke(&id, Some(&actor.id))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no live key `{id}`")))?;
    Ok(Json(json!({ "record": record })))
}

pub async fn rotate_key(
    State(state): State<AppState>,
    Extension(actor): Extension<KeyRecord>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (secret, record) = state
        .keys
        .rotate(&id, Some(&actor.id))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no live key `{id}`")))?;
    Ok(Json(json!({"key": secret, "record": record})))
}

pub async fn usage(
    State(state): State<AppState>,
    Query(filter): Query<UsageFilter>,
) -> Result<Json<Value>, ApiError> {
    let groups = state.store().usage(&filter).await?;
    Ok(Json(json!({"object": "list", "data": groups})))
}

pub async fn audit(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let entries = state.store().audit_log(AUDIT_PAGE).await?;
    Ok(Json(json!({"object": "list", "data": entries})))
}
