//! Path, query and multipart extractors whose failures are OpenAI-shaped 400s (axum's own
//! answer in plain text, which clients and the API document do not expect).

use axum::extract::multipart::{MultipartError, MultipartRejection};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Multipart, Request};

use super::ApiError;

#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct AppPath<T>(pub T);

#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct AppQuery<T>(pub T);

pub struct AppMultipart(pub Multipart);

impl<S: Send + Sync> FromRequest<S> for AppMultipart {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        Ok(Self(Multipart::from_request(request, state).await?))
    }
}

/// A multipart body that could not be read: 413 past `limit` bytes, else a 400 naming `param`.
pub fn multipart_error(error: MultipartError, limit: usize, param: &'static str) -> ApiError {
    if error.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge(limit)
    } else {
        ApiError::invalid(
            param,
            format!("invalid multipart body: {}", error.body_text()),
        )
    }
}

impl From<MultipartRejection> for ApiError {
    fn from(rejection: MultipartRejection) -> Self {
        Self::InvalidRequest {
            message: format!(
                "expected a multipart/form-data body: {}",
                rejection.body_text()
            ),
            param: None,
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::InvalidRequest {
            message: format!("invalid path: {}", rejection.body_text()),
            param: None,
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::InvalidRequest {
            message: format!("invalid query: {}", rejection.body_text()),
            param: None,
        }
    }
}
