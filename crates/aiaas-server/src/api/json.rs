//! A JSON body extractor whose failures are OpenAI-shaped 400s naming the problem (axum's own
//! would answer 415/422 with plain text). The content type is not required: `curl -d` users
//! often omit it, and the body is unambiguous.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::ApiError;

pub struct AppJson<T>(pub T);

/// The body limit the router sets (`DefaultBodyLimit`), carried to the extractor for messages.
#[derive(Clone, Copy)]
pub struct BodyLimit(pub usize);

impl<S, T> FromRequest<S> for AppJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let limit = request.extensions().get::<BodyLimit>().map_or(0, |l| l.0);
        let bytes = Bytes::from_request(request, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge(limit)
            } else {
                ApiError::InvalidRequest {
                    message: format!("could not read the request body: {e}"),
                    param: None,
                }
            }
        })?;
        if bytes.is_empty() {
            return Err(ApiError::InvalidRequest {
                message: "the request body is empty; send a JSON object".into(),
                param: None,
            });
        }
        if std::str::from_utf8(&bytes).is_err() {
            return Err(ApiError::InvalidRequest {
                message: "the request body is not valid UTF-8".into(),
                param: None,
            });
        }
        serde_json::from_slice(&bytes)
            .map(AppJson)
            .map_err(|e| ApiError::InvalidRequest {
                message: format!("invalid JSON body: {e}"),
                param: None,
            })
    }
}
