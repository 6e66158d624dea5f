//! `POST /v1/completions`: raw prompts, for base models and chat models alike.

use std::sync::Arc;

use aiaas_engine::generate::{FinishReason, TokenEvent};
use aiaas_models::Tokenizer;
use axum::extract::State;
use axum::response::Response;
use axum::Extension;
use serde_json::{json, Map, Value};

use super::generation::{self, ChunkFormat};
use super::types::{CompletionRequest, TextsOrTokens};
use super::validate;
use super::{ApiError, AppJson};
use crate::store::KeyRecord;
use crate::AppState;

/// OpenAI's limit on `logprobs` for completions.
const MAX_LOGPROBS: i64 = 5;
/// OpenAI's default completion budget for this route.
const DEFAULT_MAX_TOKENS: i64 = 16;

/// A continuation of a raw prompt.
#[utoipa::path(post, path = "/completions", tag = "openai",
    request_body = CompletionRequest,
    responses((status = 200, description = "The completion in OpenAI's shape; with `stream`, its chunks as \
        server-sent events ending in `data: [DONE]`",
        content((serde_json::Value = "application/json"), (String = "text/event-stream")))))]
pub async fn create(
    State(state): State<AppState>,
    Extension(key): Extension<KeyRecord>,
    AppJson(request): AppJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    if request.echo {
        return Err(ApiError::invalid("echo", "echo is not supported"));
    }
    if request.best_of.is_some_and(|b| b != 1) {
        return Err(ApiError::invalid("best_of", "best_of must be 1"));
    }
    if request.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid(
            "suffix",
            "suffix (fill-in-the-middle) is not supported",
        ));
    }
    let logprobs = match request.logprobs {
        Some(n) if !(0..=MAX_LOGPROBS).contains(&n) => {
            return Err(ApiError::invalid(
                "logprobs",
                format!("logprobs must be between 0 and {MAX_LOGPROBS}; got {n}"),
            ))
        }
        n => n.map(|n| n as usize),
    };
    let max_tokens = request.sampling.max_tokens.or(Some(DEFAULT_MAX_TOKENS));
    let sampling = validate::sampling(&request.sampling, max_tokens, logprobs)?;
    let generator = state.generator_for(&key, &request.model).await?;
    let vocab = generator.tokenizer.vocab_size();
    let prompt = match request.prompt {
        TextsOrTokens::Text(text) => generator.text_prompt(&text),
        TextsOrTokens::Texts(texts) if texts.len() == 1 => generator.text_prompt(&texts[0]),
        TextsOrTokens::Tokens(tokens) => tokens,
        TextsOrTokens::TokenLists(mut lists) if lists.len() == 1 => lists.remove(0),
        TextsOrTokens::Texts(_) | TextsOrTokens::TokenLists(_) => {
            return Err(ApiError::invalid(
                "prompt",
                "exactly one prompt per request is supported; send several requests",
            ))
        }
    };
    if let Some(bad) = prompt.iter().find(|&&t| t as usize >= vocab) {
        return Err(ApiError::invalid(
            "prompt",
            format!("token id {bad} is outside the model's vocabulary of {vocab}"),
        ));
    }
    let started = generation::start_metered(
        &state,
        &key,
        "/v1/completions",
        &generator,
        prompt,
        &sampling,
    )
    .await?;
    let format = CompletionChunks {
        id: generation::response_id("cmpl"),
        created: generation::unix_now(),
        model: request.model,
        tokenizer: generator.tokenizer.clone(),
        logprobs: logprobs.is_some(),
    };
    Ok(
        generation::respond(format, started, &sampling, |format, done| {
            let logprobs = format.logprobs.then(|| format.logprobs_json(&done.tokens));
            json!({
                "id": format.id,
                "object": "text_completion",
                "created": format.created,
                "model": format.model,
                "system_fingerprint": null,
                "choices": [{
                    "text": done.text,
                    "index": 0,
                    "logprobs": logprobs,
                    "finish_reason": done.finished.reason.as_str(),
                }],
                "usage": generation::usage_json(&done.finished),
            })
        })
        .await,
    )
}

struct CompletionChunks {
    id: String,
    created: u64,
    model: String,
    tokenizer: Arc<Tokenizer>,
    logprobs: bool,
}

impl CompletionChunks {
    /// A streamed `text_completion` object with the given choices.
    fn envelope(&self, choices: Value) -> Value {
        json!({
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": choices,
        })
    }

    fn chunk(&self, text: &str, logprobs: Value, finish_reason: Value) -> Value {
        self.envelope(json!([{"text": text, "index": 0, "logprobs": logprobs, "finish_reason": finish_reason}]))
    }

    /// The legacy completions logprobs object: parallel lists per token.
    fn logprobs_json(&self, tokens: &[TokenEvent]) -> Value {
        let mut texts = Vec::new();
        let mut token_logprobs = Vec::new();
        let mut top_logprobs = Vec::new();
        let mut offsets = Vec::new();
        let mut offset = 0;
        for token in tokens {
            let Some(lp) = &token.logprob else { continue };
            let text = self.tokenizer.decode(&[token.token]);
            offsets.push(offset);
            offset += text.len();
            texts.push(text);
            token_logprobs.push(lp.logprob);
            let top: Map<String, Value> = lp
                .top
                .iter()
                .map(|t| (self.tokenizer.decode(&[t.token]), json!(t.logprob)))
                .collect();
            top_logprobs.push(Value::Object(top));
        }
        json!({
            "tokens": texts,
            "token_logprobs": token_logprobs,
            "top_logprobs": top_logprobs,
            "text_offset": offsets,
        })
    }
}

impl ChunkFormat for CompletionChunks {
    fn opening(&self) -> Option<Value> {
        None
    }

    fn delta(&self, text: &str, token: Option<&TokenEvent>) -> Value {
        let logprobs = match token {
            Some(token) if self.logprobs => self.logprobs_json(std::slice::from_ref(token)),
            _ => Value::Null,
        };
        self.chunk(text, logprobs, Value::Null)
    }

    fn finish(&self, reason: FinishReason) -> Value {
        self.chunk("", Value::Null, json!(reason.as_str()))
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
