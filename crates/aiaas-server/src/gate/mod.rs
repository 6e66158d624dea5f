//! The gate: who is calling, what they may use, how much. Every `/v1` and `/admin` route passes
//! `require_key`; `/admin` routes also pass `require_admin`. Health and metrics do not.

mod keys;
mod limits;
mod meter;

pub use keys::{CreatedKey, KeySpec, Keys, KEY_PREFIX};
pub use limits::{LimitError, Limiter, Reservation, Snapshot};
pub use meter::{Meter, Metered, Usage};

use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::api::ApiError;
use crate::store::KeyRecord;
use crate::AppState;

/// Authenticates the bearer key, counts the request against its rate limit, and after the
/// handler: adds the `x-ratelimit-*` headers and records failed requests as usage (successful
/// generations record their own, with tokens).
pub async fn require_key(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let presented = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .map(str::to_owned);
    let Some(presented) = presented else {
        return ApiError::MissingKey.into_response();
    };
    let key = match state.keys.verify(&presented).await {
        Ok(Some(key)) => key,
        Ok(None) => return ApiError::InvalidKey.into_response(),
        Err(e) => return ApiError::Store(e).into_response(),
    };
    let route = request.uri().path().to_string();
    let mut response = match state.limiter.admit_request(&key) {
        Ok(()) => {
            request.extensions_mut().insert(key.clone());
            next.run(request).await
        }
        Err(e) => ApiError::Limit(e).into_response(),
    };
    if key.has_limits() {
        add_rate_limit_headers(response.headers_mut(), &state.limiter.snapshot(&key));
    }
    let status = response.status();
    if !status.is_success() && response.extensions().get::<Metered>().is_none() {
        let meter = Meter::new(&state, &key, "-", &route, started);
        if let Err(e) = meter.record(0, 0, status.as_u16()).await {
            tracing::error!("could not record usage: {e}");
        }
    }
    response
}

/// Lets only admin keys through (after `require_key`).
pub async fn require_admin(request: Request, next: Next) -> Result<Response, ApiError> {
    let admin = request
        .extensions()
        .get::<KeyRecord>()
        .is_some_and(|k| k.admin);
    if !admin {
        return Err(ApiError::AdminOnly);
    }
    Ok(next.run(request).await)
}

/// OpenAI's headers: limit, remaining, and time until the window frees up (e.g. `1s`, `6m0s`).
fn add_rate_limit_headers(headers: &mut HeaderMap, snapshot: &Snapshot) {
    let windows = [("requests", snapshot.requests), ("tokens", snapshot.tokens)];
    for (kind, window) in windows {
        let Some((limit, remaining, reset)) = window else {
            continue;
        };
        let values = [
            (format!("x-ratelimit-limit-{kind}"), limit.to_string()),
            (
                format!("x-ratelimit-remaining-{kind}"),
                remaining.to_string(),
            ),
            (format!("x-ratelimit-reset-{kind}"), format_reset(reset)),
        ];
        for (name, value) in values {
            if let (Ok(name), Ok(value)) = (
                axum::http::HeaderName::try_from(name),
                HeaderValue::try_from(value),
            ) {
                headers.insert(name, value);
            }
        }
    }
}

fn format_reset(reset: Duration) -> String {
    let ms = reset.as_millis();
    match ms {
        0..=999 => format!("{ms}ms"),
        1000..=59_999 => format!("{:.3}s", reset.as_secs_f64()).replace(".000s", "s"),
        _ => format!("{}m{}s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resets_read_like_openai_headers() {
        assert_eq!(format_reset(Duration::from_millis(20)), "20ms");
        assert_eq!(format_reset(Duration::from_secs(1)), "1s");
        assert_eq!(format_reset(Duration::from_millis(1500)), "1.500s");
        assert_eq!(format_reset(Duration::from_secs(360)), "6m0s");
    }
}
