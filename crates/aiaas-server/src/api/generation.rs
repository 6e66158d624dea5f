//! Running a generation for a route: waiting for the whole result, or streaming it as
//! server-sent events. The route supplies the JSON shapes through `ChunkFormat`.

use std::convert::Infallible;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use aiaas_engine::generate::{Event, FinishReason, Finished, TokenEvent};
use aiaas_engine::{EngineError, LoadedGenerator};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, Stream, StreamExt};
use rand::RngCore;
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinHandle;

use super::validate::ValidSampling;
use super::ApiError;
use crate::gate::{Meter, Metered};
use crate::store::KeyRecord;
use crate::telemetry::ModelLabel;
use crate::AppState;

/// A generation in flight and the task that will meter it.
pub struct Started {
    pub model: String,
    pub events: UnboundedReceiver<Event>,
    pub metering: JoinHandle<()>,
}

/// Reserves the request's most tokens against the key's limits, starts the generation and
/// meters it. Any failure before the start releases the reservation.
pub async fn start_metered(
    state: &AppState,
    key: &KeyRecord,
    route: &str,
    generator: &LoadedGenerator,
    prompt: Vec<u32>,
    sampling: &ValidSampling,
) -> Result<Started, ApiError> {
    let started = Instant::now();
    let budget = generator.completion_budget(prompt.len(), sampling.max_tokens);
    let amount = i64::try_from(prompt.len() + budget).unwrap_or(i64::MAX);
    let reservation = state.limiter.reserve(state.store(), key, amount).await?;
    let generation = generator.start(prompt, sampling.max_tokens, sampling.params.clone())?;
    let meter = Meter::new(state, key, &generator.manifest.id, route, started);
    Ok(Started {
        model: generator.manifest.id.clone(),
        events: generation.events,
        metering: meter.spawn(generation.usage, reservation),
    })
}

/// Streams, or waits for the whole result and builds the body with `body`. Either way the
/// usage row is durable before the response completes.
pub async fn respond<F: ChunkFormat>(
    format: F,
    started: Started,
    sampling: &ValidSampling,
    body: impl FnOnce(&F, Collected) -> Value,
) -> Response {
    let model = ModelLabel(started.model.clone());
    let mut response = if sampling.stream {
        stream(format, started, sampling.include_usage).into_response()
    } else {
        let collected = collect(started.events).await;
        if started.metering.await.is_err() {
            tracing::error!("the metering task failed");
        }
        match collected {
            Ok(done) => axum::Json(body(&format, done)).into_response(),
            Err(e) => e.into_response(),
        }
    };
    response.extensions_mut().insert(Metered);
    response.extensions_mut().insert(model);
    response
}

/// `prefix-` and 24 random hex digits, as OpenAI ids look.
pub fn response_id(prefix: &str) -> String {
    let mut bytes = [0u8; 12];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}-{}", hex::encode(bytes))
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub fn usage_json(finished: &Finished) -> Value {
    json!({
        "prompt_tokens": finished.prompt_tokens,
        "completion_tokens": finished.completion_tokens,
        "total_tokens": finished.prompt_tokens + finished.completion_tokens,
    })
}

/// A finished non-streamed generation.
pub struct Collected {
    pub text: String,
    pub tokens: Vec<TokenEvent>,
    pub finished: Finished,
}

pub async fn collect(mut events: UnboundedReceiver<Event>) -> Result<Collected, ApiError> {
    let mut text = String::new();
    let mut tokens = Vec::new();
    while let Some(event) = events.recv().await {
        match event {
            Event::Token(token) => {
                text.push_str(&token.text);
                tokens.push(token);
            }
            Event::Finished(finished) => {
                text.push_str(&finished.text);
                return Ok(Collected {
                    text,
                    tokens,
                    finished,
                });
            }
            Event::Failed(message) => return Err(EngineError::Internal(message).into()),
        }
    }
    Err(EngineError::Internal("the generation ended without a result".into()).into())
}

/// The chunk shapes of one streaming route.
pub trait ChunkFormat: Send + 'static {
    /// A chunk sent before any token (chat announces the assistant role).
    fn opening(&self) -> Option<Value>;
    fn delta(&self, text: &str, token: Option<&TokenEvent>) -> Value;
    fn finish(&self, reason: FinishReason) -> Value;
    /// The final usage-only chunk (`stream_options.include_usage`).
    fn usage(&self, usage: Value) -> Value;
    /// Whether every token must produce a chunk even without text (to carry its logprobs).
    fn wants_every_token(&self) -> bool;
}

/// Streams a generation as SSE: chunks, then `data: [DONE]`. Dropping the stream (the client
/// went away) drops the event receiver, which stops the generation at its next step.
fn stream<F: ChunkFormat>(
    format: F,
    started: Started,
    include_usage: bool,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let with_usage = move |mut chunk: Value| {
        if include_usage {
            chunk["usage"] = Value::Null;
        }
        data(&chunk)
    };
    let opening: Vec<SseEvent> = format.opening().map(with_usage).into_iter().collect();
    let state = Some((format, started.events, Some(started.metering)));
    let body = stream::unfold(state, move |state| async move {
        let (format, mut events, mut metering) = state?;
        let out: Vec<SseEvent> = match events.recv().await {
            Some(Event::Token(token)) if token.text.is_empty() && !format.wants_every_token() => {
                Vec::new()
            }
            Some(Event::Token(token)) => vec![with_usage(format.delta(&token.text, Some(&token)))],
            Some(Event::Finished(finished)) => {
                // The usage row is written before the stream tells the client it is done.
                if let Some(metering) = metering.take() {
                    if metering.await.is_err() {
                        tracing::error!("the metering task failed");
                    }
                }
                let mut out = Vec::new();
                if !finished.text.is_empty() {
                    out.push(with_usage(format.delta(&finished.text, None)));
                }
                out.push(with_usage(format.finish(finished.reason)));
                if include_usage {
                    out.push(data(&format.usage(usage_json(&finished))));
                }
                out.push(SseEvent::default().data("[DONE]"));
                return Some((out, None));
            }
            Some(Event::Failed(message)) => {
                tracing::error!("generation failed mid-stream: {message}");
                let error = json!({"error": {
                    "message": "The server had an error while processing your request.",
                    "type": "server_error", "param": null, "code": null}});
                return Some((vec![data(&error), SseEvent::default().data("[DONE]")], None));
            }
            None => return None,
        };
        Some((out, Some((format, events, metering))))
    });
    let chunks = stream::iter(opening)
        .chain(body.flat_map(stream::iter))
        .map(Ok);
    Sse::new(chunks).keep_alive(KeepAlive::default())
}

fn data(value: &Value) -> SseEvent {
    SseEvent::default().data(value.to_string())
}
