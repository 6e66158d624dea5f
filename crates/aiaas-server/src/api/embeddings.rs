//! `POST /v1/embeddings`: vectors for texts or token lists, as floats or base64.

use std::sync::Arc;
use std::time::Instant;

use aiaas_engine::{EmbedInput, EngineError, LoadedEmbedder};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use super::types::TextsOrTokens;
use super::{ApiError, AppJson};
use crate::gate::{Meter, Metered, Usage};
use crate::store::KeyRecord;
use crate::telemetry::ModelLabel;
use crate::AppState;

const ROUTE: &str = "/v1/embeddings";

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct EmbeddingRequest {
    #[schema(example = "all-minilm-l6-v2")]
    pub model: String,
    pub input: TextsOrTokens,
    pub encoding_format: Option<String>,
    pub dimensions: Option<i64>,
}

#[derive(Clone, Copy)]
enum Encoding {
    Float,
    /// Little-endian f32s, base64-encoded: a quarter of the JSON size, what the SDK asks for.
    Base64,
}

/// Vectors for texts or token lists, in input order.
#[utoipa::path(post, path = "/embeddings", tag = "openai", request_body = EmbeddingRequest,
    responses((status = 200, description = "The vectors in OpenAI's shape, as float arrays or \
        base64 strings", body = serde_json::Value)))]
pub async fn create(
    State(state): State<AppState>,
    Extension(key): Extension<KeyRecord>,
    AppJson(request): AppJson<EmbeddingRequest>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let encoding = match request.encoding_format.as_deref() {
        None | Some("float") => Encoding::Float,
        Some("base64") => Encoding::Base64,
        Some(other) => {
            return Err(ApiError::invalid(
                "encoding_format",
                format!("encoding_format must be `float` or `base64`; got `{other}`"),
            ))
        }
    };
    if !key.allows_model(&request.model) {
        return Err(EngineError::ModelNotFound(request.model).into());
    }
    let embedder = state.engine.embedder(&request.model).await?;
    let native = embedder.dimensions();
    if let Some(asked) = request.dimensions {
        if usize::try_from(asked) != Ok(native) {
            return Err(ApiError::invalid(
                "dimensions",
                format!(
                    "the model `{}` has fixed {native}-dimensional embeddings and cannot \
                     shorten them; omit `dimensions` or pass {native}",
                    request.model
                ),
            ));
        }
    }
    let input = match request.input {
        TextsOrTokens::Text(text) => EmbedInput::Texts(vec![text]),
        TextsOrTokens::Texts(texts) => EmbedInput::Texts(texts),
        TextsOrTokens::Tokens(tokens) => EmbedInput::Tokens(vec![tokens]),
        TextsOrTokens::TokenLists(lists) => EmbedInput::Tokens(lists),
    };
    let sequences = embedder.tokenize(input).await?;
    let prompt_tokens: usize = sequences.iter().map(Vec::len).sum();
    let vectors = embed_metered(&state, &key, embedder, sequences, ROUTE, started).await?;
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(index, vector)| {
            json!({
                "object": "embedding",
                "index": index,
                "embedding": encode(vector, encoding),
            })
        })
        .collect();
    let body = json!({
        "object": "list",
        "data": data,
        "model": &request.model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    });
    let mut response = axum::Json(body).into_response();
    response.extensions_mut().insert(Metered);
    response.extensions_mut().insert(ModelLabel(request.model));
    Ok(response)
}

/// Embeds tokenized inputs, billed to `key` as prompt tokens on `route`.
pub(super) async fn embed_metered(
    state: &AppState,
    key: &KeyRecord,
    embedder: Arc<LoadedEmbedder>,
    sequences: Vec<Vec<u32>>,
    route: &str,
    started: Instant,
) -> Result<Vec<Vec<f32>>, ApiError> {
    let prompt_tokens: usize = sequences.iter().map(Vec::len).sum();
    let amount = i64::try_from(prompt_tokens).unwrap_or(i64::MAX);
    let reservation = state.limiter.reserve(state.store(), key, amount).await?;
    let meter = Meter::new(state, key, &embedder.manifest.id, route, started);
    let usage = move |_: &Vec<Vec<f32>>| Usage {
        prompt_tokens: amount,
        ..Usage::default()
    };
    let vectors = meter
        .run(
            reservation,
            async move { embedder.embed(sequences).await },
            usage,
        )
        .await?;
    Ok(vectors)
}

fn encode(vector: &[f32], encoding: Encoding) -> Value {
    match encoding {
        Encoding::Float => json!(vector),
        Encoding::Base64 => {
            let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
            Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
        }
    }
}
