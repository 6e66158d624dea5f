//! What the server tells operators: HTTP request counts and latencies on `/metrics` (beside the
//! engine's series, in the same registry), the process's resident memory, and one log line per
//! request inside a span carrying its `x-request-id`. Request and response bodies are never
//! logged.

use std::time::Instant;

use aiaas_engine::metrics::registered;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::{
    exponential_buckets, Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

use crate::AppState;

/// The model a response was served by, set by the handler once the model is resolved. Only
/// models that exist get a label value (a client cannot grow the series with made-up names).
#[derive(Clone)]
pub struct ModelLabel(pub String);

pub struct HttpMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
    resident_memory: IntGauge,
}

impl HttpMetrics {
    pub fn register(registry: &Registry) -> Self {
        let labels = &["route", "model", "status"];
        let requests = registered(
            registry,
            IntCounterVec::new(
                Opts::new("aiaas_http_requests_total", "HTTP requests answered."),
                labels,
            ),
        );
        let duration = registered(
            registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "aiaas_http_request_duration_seconds",
                    "From a request's arrival to its response headers (streams continue after).",
                )
                .buckets(exponential_buckets(0.0005, 2.0, 18).expect("valid buckets")),
                labels,
            ),
        );
        let resident_memory = registered(
            registry,
            IntGauge::new(
                "process_resident_memory_bytes",
                "Resident memory of the server process.",
            ),
        );
        Self {
            requests,
            duration,
            resident_memory,
        }
    }
}

/// The operator's opt-in (`log_request_bodies`): logs each JSON request body in the request's
/// span (other bodies, file uploads among them, are never read here). Off by default: request
/// content is private.
pub async fn log_request_body(request: Request, next: Next) -> Response {
    let is_json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !is_json {
        return next.run(request).await;
    }
    let limit = request
        .extensions()
        .get::<crate::api::BodyLimit>()
        .map_or(usize::MAX, |limit| limit.0);
    let (parts, body) = request.into_parts();
    match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => {
            tracing::info!(body = %String::from_utf8_lossy(&bytes), "request body");
            next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
                .await
        }
        Err(_) => crate::api::ApiError::PayloadTooLarge(limit).into_response(),
    }
}

/// Counts and times every request by its route pattern (not its raw path: `/v1/models/{id}`,
/// however many ids are asked for), model and status.
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_string();
    let response = next.run(request).await;
    let model = response
        .extensions()
        .get::<ModelLabel>()
        .map_or("-", |m| m.0.as_str());
    let status = response.status();
    let labels = [route.as_str(), model, status.as_str()];
    let metrics = &state.http_metrics;
    metrics.requests.with_label_values(&labels).inc();
    metrics
        .duration
        .with_label_values(&labels)
        .observe(started.elapsed().as_secs_f64());
    response
}

/// `GET /metrics`: Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition format",
        content((String = "text/plain; version=0.0.4")))))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    if let Some(bytes) = resident_memory_bytes() {
        state
            .http_metrics
            .resident_memory
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }
    let encoder = TextEncoder::new();
    let mut body = Vec::new();
    if let Err(e) = encoder.encode(&state.engine.metrics().registry().gather(), &mut body) {
        tracing::error!("could not encode metrics: {e}");
    }
    (
        [(header::CONTENT_TYPE, encoder.format_type().to_string())],
        body,
    )
        .into_response()
}

/// VmRSS from `/proc/self/status` (Linux); `None` elsewhere.
pub fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The span each request's log lines run in: method, route and the request id.
pub fn request_span(request: &Request) -> tracing::Span {
    let id = request_id(request.headers());
    tracing::info_span!(
        "request",
        id = %id,
        method = %request.method(),
        path = %request.uri().path(),
    )
}

fn request_id(headers: &HeaderMap) -> &str {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
}
