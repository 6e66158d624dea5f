//! The gate: who is calling. Every model route passes `require_key`; health and metrics do not.

mod keys;

pub use keys::{CreatedKey, KeyInfo, KeyStore};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::api::ApiError;
use crate::AppState;

/// Rejects requests without a valid bearer key; passes the key's identity on to handlers.
pub async fn require_key(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let Some(presented) = presented else {
        return Err(ApiError::MissingKey);
    };
    let key = state.keys.verify(presented).ok_or(ApiError::InvalidKey)?;
    request.extensions_mut().insert(key);
    Ok(next.run(request).await)
}
