//! Running a generation for a route: waiting for the whole result, or streaming it as
//! server-sent events. The route supplies the JSON shapes through `ChunkFormat`.

use std::convert::Infallible;
use std::time::{SystemTime, UNIX_EPOCH};

use aiaas_engine::generate::{Event, FinishReason, Finished, TokenEvent};
use aiaas_engine::EngineError;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::stream::{self, Stream, StreamExt};
use rand::RngCore;
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use super::ApiError;

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
            Event::Failed(message) => return Err(EngineError::Template(message).into()),
        }
    }
    Err(EngineError::Template("the generation ended without a result".into()).into())
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
pub fn stream<F: ChunkFormat>(
    format: F,
    events: UnboundedReceiver<Event>,
    include_usage: bool,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let with_usage = move |mut chunk: Value| {
        if include_usage {
            chunk["usage"] = Value::Null;
        }
        data(&chunk)
    };
    let opening: Vec<SseEvent> = format.opening().map(with_usage).into_iter().collect();
    let body = stream::unfold(Some((format, events)), move |state| async move {
        let (format, mut events) = state?;
        let out: Vec<SseEvent> = match events.recv().await {
            Some(Event::Token(token)) => if token.text.is_empty() && !format.wants_every_token() {
                Vec::new()
            } else {
                vec![with_usage(format.delta(&token.text, Some(&token)))]
            }
            .into_iter()
            .collect(),
            Some(Event::Finished(finished)) => {
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
        Some((out, Some((format, events))))
    });
    let chunks = stream::iter(opening)
        .chain(body.flat_map(stream::iter))
        .map(Ok);
    Sse::new(chunks).keep_alive(KeepAlive::default())
}

fn data(value: &Value) -> SseEvent {
    SseEvent::default().data(value.to_string())
}
