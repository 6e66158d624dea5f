//! `POST /v1/chat/completions`.

use std::sync::Arc;

use aiaas_engine::generate::{FinishReason, TokenEvent, TokenLogprob};
use aiaas_models::Tokenizer;
use axum::extract::State;
use axum::response::Response;
use axum::Extension;
use serde_json::{json, Value};

use super::generation::{self, ChunkFormat};
use super::types::ChatCompletionRequest;
use super::validate::{self, MAX_TOP_LOGPROBS};
use super::{ApiError, AppJson};
use crate::store::KeyRecord;
use crate::AppState;

/// A reply to a conversation, rendered through the model's chat template.
#[utoipa::path(post, path = "/chat/completions", tag = "openai",
    request_body = ChatCompletionRequest,
    responses((status = 200, description = "The completion in OpenAI's shape; with `stream`, its chunks as \
        server-sent events ending in `data: [DONE]`",
        content((serde_json::Value = "application/json"), (String = "text/event-stream")))))]
pub async fn create(
    State(state): State<AppState>,
    Extension(key): Extension<KeyRecord>,
    AppJson(request): AppJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let top_logprobs = match (request.logprobs, request.top_logprobs) {
        (_, Some(n)) if !(0..=MAX_TOP_LOGPROBS).contains(&n) => {
            return Err(ApiError::invalid(
                "top_logprobs",
                format!("top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}; got {n}"),
            ))
        }
        (Some(true), n) => Some(n.unwrap_or(0) as usize),
        (_, Some(_)) => {
            return Err(ApiError::invalid(
                "top_logprobs",
                "top_logprobs requires logprobs to be true",
            ))
        }
        _ => None,
    };
    let max_tokens = request
        .max_completion_tokens
        .or(request.sampling.max_tokens);
    let sampling = validate::sampling(&request.sampling, max_tokens, top_logprobs)?;
    let messages = validate::messages(&request.messages)?;
    let generator = state.generator_for(&key, &request.model).await?;
    let prompt = generator.chat_prompt(&messages)?;
    let started = generation::start_metered(
        &state,
        &key,
        "/v1/chat/completions",
        &generator,
        prompt,
        &sampling,
    )
    .await?;

    let format = ChatChunks {
        id: generation::response_id("chatcmpl"),
        created: generation::unix_now(),
        model: request.model,
        tokenizer: generator.tokenizer.clone(),
        logprobs: top_logprobs.is_some(),
    };
    Ok(
        generation::respond(format, started, &sampling, |format, done| {
            let logprobs = format.logprobs.then(|| {
                let content: Vec<Value> = done
                    .tokens
                    .iter()
                    .filter_map(|t| format.token_logprob(t))
                    .collect();
                json!({ "content": content })
            });
            json!({
                "id": format.id,
                "object": "chat.completion",
                "created": format.created,
                "model": format.model,
                "system_fingerprint": null,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": done.text, "refusal": null},
                    "logprobs": logprobs,
                    "finish_reason": done.finished.reason.as_str(),
                }],
                "usage": generation::usage_json(&done.finished),
            })
        })
        .await,
    )
}

struct ChatChunks {
    id: String,
    created: u64,
    model: String,
    tokenizer: Arc<Tokenizer>,
    logprobs: bool,
}

impl ChatChunks {
    /// A `chat.completion.chunk` with the given choices.
    fn envelope(&self, choices: Value) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": choices,
        })
    }

    fn chunk(&self, delta: Value, logprobs: Value, finish_reason: Value) -> Value {
        self.envelope(json!([{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}]))
    }

    /// OpenAI's per-token entry: the token's text, its log-probability, its UTF-8 bytes and the
    /// most likely alternatives.
    fn token_logprob(&self, token: &TokenEvent) -> Option<Value> {
        let TokenLogprob { logprob, top } = token.logprob.as_ref()?;
        let entry = |id: u32, logprob: f32| {
            let bytes = self.tokenizer.token_bytes(id);
            json!({
                "token": String::from_utf8_lossy(&bytes),
                "logprob": logprob,
                "bytes": bytes,
            })
        };
        let mut value = entry(token.token, *logprob);
        value["top_logprobs"] = top.iter().map(|t| entry(t.token, t.logprob)).collect();
        Some(value)
    }
}

impl ChunkFormat for ChatChunks {
    fn opening(&self) -> Option<Value> {
        Some(self.chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
            Value::Null,
        ))
    }

    fn delta(&self, text: &str, token: Option<&TokenEvent>) -> Value {
        let logprobs = match token.and_then(|t| self.token_logprob(t)) {
            Some(entry) => json!({"content": [entry]}),
            None => Value::Null,
        };
        self.chunk(json!({"content": text}), logprobs, Value::Null)
    }

    fn finish(&self, reason: FinishReason) -> Value {
        self.chunk(json!({}), Value::Null, json!(reason.as_str()))
    }

    fn usage(&self, usage: Value) -> Value {
        let mut chunk = self.envelope(json!([]));
        chunk["usage"] = usage;
        chunk
    }

    fn wants_every_token(&self) -> bool {
        self.logprobs
    }
}
