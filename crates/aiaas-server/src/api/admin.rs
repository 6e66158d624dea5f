//! `/admin`: key management, usage reports and the audit log, for admin keys only. The CLI
//! uses the same operations on the local database.

use axum::extract::State;
use axum::{Extension, Json};
use serde_json::{json, Value};

use super::params::{AppPath, AppQuery};
use super::{ApiError, AppJson};
use crate::gate::KeySpec;
use crate::store::{KeyRecord, UsageFilter};
use crate::AppState;

/// How many audit entries one request returns at most.
const AUDIT_PAGE: i64 = 1000;

/// Every key (never its secret).
#[utoipa::path(get, path = "/keys", tag = "admin",
    responses((status = 200, description = "`{object: list, data: [key]}`", body = serde_json::Value)))]
pub async fn list_keys(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let keys = state.store().keys().await?;
    Ok(Json(json!({"object": "list", "data": keys})))
}

/// Creates a key; its secret is in this response only.
#[utoipa::path(post, path = "/keys", tag = "admin", request_body = KeySpec,
    responses((status = 200, description = "`{key: secret, record: key}`", body = serde_json::Value)))]
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

/// Revokes a key: it stops working at once.
#[utoipa::path(post, path = "/keys/{id}/revoke", tag = "admin", params(("id" = String, Path)),
    responses((status = 200, description = "`{record: key}`", body = serde_json::Value)))]
pub async fn revoke_key(
    State(state): State<AppState>,
    Extension(actor): Extension<KeyRecord>,
    AppPath(id): AppPath<String>,
) -> Result<Json<Value>, ApiError> {
    let record = state
        .keys
        .revoke(&id, Some(&actor.id))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no live key `{id}`")))?;
    Ok(Json(json!({ "record": record })))
}

/// Gives a key a new secret; the old one stops working at once.
#[utoipa::path(post, path = "/keys/{id}/rotate", tag = "admin", params(("id" = String, Path)),
    responses((status = 200, description = "`{key: secret, record: key}`", body = serde_json::Value)))]
pub async fn rotate_key(
    State(state): State<AppState>,
    Extension(actor): Extension<KeyRecord>,
    AppPath(id): AppPath<String>,
) -> Result<Json<Value>, ApiError> {
    let (secret, record) = state
        .keys
        .rotate(&id, Some(&actor.id))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no live key `{id}`")))?;
    Ok(Json(json!({"key": secret, "record": record})))
}

/// Requests, tokens, errors and latency, filtered and grouped.
#[utoipa::path(get, path = "/usage", tag = "admin", params(UsageFilter),
    responses((status = 200, description = "`{object: list, data: [group]}`", body = serde_json::Value)))]
pub async fn usage(
    State(state): State<AppState>,
    AppQuery(filter): AppQuery<UsageFilter>,
) -> Result<Json<Value>, ApiError> {
    let groups = state.store().usage(&filter).await?;
    Ok(Json(json!({"object": "list", "data": groups})))
}

/// The most recent key changes.
#[utoipa::path(get, path = "/audit", tag = "admin",
    responses((status = 200, description = "`{object: list, data: [entry]}`", body = serde_json::Value)))]
pub async fn audit(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let entries = state.store().audit_log(AUDIT_PAGE).await?;
    Ok(Json(json!({"object": "list", "data": entries})))
}
