//! The one place where errors become HTTP responses, in OpenAI's error shape:
//! `{"error": {"message", "type", "param", "code"}}`.

use aiaas_engine::EngineError;

use crate::gate::LimitError;
use crate::store::StoreError;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// The body of every error response, as OpenAI shapes it.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    message: String,
    #[serde(rename = "type")]
    #[schema(rename = "type")]
    kind: &'static str,
    /// The request field at fault, if one is.
    param: Option<&'static str>,
    /// A stable code to branch on, like `model_not_found` or `rate_limit_exceeded`.
    code: Option<&'static str>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<&'static str>,
    },
    #[error("You didn't provide an API key. Provide it in the Authorization header as `Bearer YOUR_KEY`.")]
    MissingKey,
    #[error("Incorrect API key provided.")]
    InvalidKey,
    #[error("The request body is larger than the {0}-byte limit.")]
    PayloadTooLarge(usize),
    #[error("Unknown route {0}.")]
    UnknownRoute(String),
    #[error("This route needs an admin key.")]
    AdminOnly,
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Limit(#[from] LimitError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("storage error: {0}")]
    Io(#[from] std::io::Error),
    /// A stored file or its key failed authentication, or the master key is unusable.
    #[error("{0}")]
    Vault(String),
}

impl ApiError {
    pub fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        Self::InvalidRequest {
            message: message.into(),
            param: Some(param),
        }
    }

    /// Status, OpenAI error type, param and code for this error.
    fn parts(
        &self,
    ) -> (
        StatusCode,
        &'static str,
        Option<&'static str>,
        Option<&'static str>,
    ) {
        const INVALID: &str = "invalid_request_error";
        match self {
            Self::InvalidRequest { param, .. } => (StatusCode::BAD_REQUEST, INVALID, *param, None),
            Self::MissingKey | Self::InvalidKey => (
                StatusCode::UNAUTHORIZED,
                INVALID,
                None,
                Some("invalid_api_key"),
            ),
            Self::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, INVALID, None, None),
            Self::UnknownRoute(_) => (StatusCode::NOT_FOUND, INVALID, None, Some("unknown_url")),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, INVALID, None, Some("not_found")),
            Self::AdminOnly => (
                StatusCode::FORBIDDEN,
                INVALID,
                None,
                Some("permission_denied"),
            ),
            Self::Limit(LimitError::Requests { .. }) => (
                StatusCode::TOO_MANY_REQUESTS,
                "requests",
                None,
                Some("rate_limit_exceeded"),
            ),
            Self::Limit(LimitError::Tokens { .. }) => (
                StatusCode::TOO_MANY_REQUESTS,
                "tokens",
                None,
                Some("rate_limit_exceeded"),
            ),
            Self::Limit(LimitError::Quota { .. }) => (
                StatusCode::TOO_MANY_REQUESTS,
                "insufficient_quota",
                None,
                Some("insufficient_quota"),
            ),
            Self::Vault(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                None,
                Some("file_integrity_error"),
            ),
            Self::Limit(LimitError::Store(_)) | Self::Store(_) | Self::Io(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                None,
                None,
            ),
            Self::Engine(e) => match e {
                EngineError::ModelNotFound(_) => (
                    StatusCode::NOT_FOUND,
                    INVALID,
                    Some("model"),
                    Some("model_not_found"),
                ),
                EngineError::InvalidRequest { param, .. } => {
                    (StatusCode::BAD_REQUEST, INVALID, *param, None)
                }
                EngineError::ContextLengthExceeded { .. } => (
                    StatusCode::BAD_REQUEST,
                    INVALID,
                    Some("messages"),
                    Some("context_length_exceeded"),
                ),
                EngineError::Overloaded(_) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    None,
                    Some("overloaded"),
                ),
                EngineError::Loading { .. } => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    Some("model"),
                    Some("model_loading"),
                ),
                EngineError::ModelMemoryBusy { .. } => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    Some("model"),
                    Some("model_memory_busy"),
                ),
                EngineError::ModelTooLarge { .. } => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    Some("model"),
                    Some("model_too_large"),
                ),
                EngineError::Model(_)
                | EngineError::Template(_)
                | EngineError::Internal(_)
                | EngineError::Io { .. }
                | EngineError::Fetch(_)
                | EngineError::Manifest { .. } => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    None,
                    None,
                ),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind, param, code) = self.parts();
        let message = if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
            // Internal details go to the log, not to the client.
            tracing::error!("request failed: {self}");
            "The server had an error while processing your request.".to_string()
        } else {
            self.to_string()
        };
        let body = ErrorBody {
            error: ErrorDetail {
                message,
                kind,
                param,
                code,
            },
        };
        let retry_after = match &self {
            Self::Limit(LimitError::Requests { retry_after, .. })
            | Self::Limit(LimitError::Tokens { retry_after, .. }) => {
                Some(retry_after.as_secs() + 1)
            }
            // A quota resets with the calendar; a minute is a polite interval to check back.
            Self::Limit(LimitError::Quota { .. }) => Some(60),
            Self::Engine(EngineError::Overloaded(_)) => Some(1),
            Self::Engine(EngineError::Loading {
                retry_after_secs, ..
            }) => Some(*retry_after_secs),
            // Models in use finish their requests within seconds to minutes.
            Self::Engine(EngineError::ModelMemoryBusy { .. }) => Some(5),
            _ => None,
        };
        let mut response = (status, axum::Json(body)).into_response();
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
