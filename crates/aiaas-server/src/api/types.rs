//! OpenAI wire types for the generation and embedding routes: what clients send. Responses are built with
//! `serde_json::json!` beside each route, where their shape is easiest to compare with OpenAI's.

use serde::Deserialize;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

/// `stop`: one string or a list of strings.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum StopField {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Sampling fields shared by chat and completions requests.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct SamplingFields {
    pub max_tokens: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub seed: Option<i64>,
    pub stop: Option<StopField>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub n: Option<i64>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ChatCompletionRequest {
    #[schema(example = "smollm2-135m-instruct")]
    pub model: String,
    pub messages: Vec<ChatMessageIn>,
    pub max_completion_tokens: Option<i64>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<i64>,
    #[serde(flatten)]
    pub sampling: SamplingFields,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ChatMessageIn {
    pub role: String,
    #[serde(default)]
    pub content: Option<MessageContent>,
}

/// Message content: a string, or a list of parts of which only text is understood here.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CompletionRequest {
    #[schema(example = "smollm2-135m-instruct")]
    pub model: String,
    pub prompt: TextsOrTokens,
    pub logprobs: Option<i64>,
    #[serde(default)]
    pub echo: bool,
    pub best_of: Option<i64>,
    pub suffix: Option<String>,
    #[serde(flatten)]
    pub sampling: SamplingFields,
}

/// A completion's `prompt` or an embedding request's `input`: a string, a list of strings, a
/// token list, or a list of token lists.
#[derive(Debug)]
pub enum TextsOrTokens {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

impl<'de> Deserialize<'de> for TextsOrTokens {
    /// Tries each shape in turn, and names all of them when none fits (serde's untagged enums
    /// only say "did not match any variant").
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        let parsed = match &value {
            serde_json::Value::String(text) => Some(Self::Text(text.clone())),
            serde_json::Value::Array(items) => match items.first() {
                None => Some(Self::Texts(Vec::new())),
                Some(serde_json::Value::String(_)) => {
                    serde_json::from_value(value.clone()).ok().map(Self::Texts)
                }
                Some(serde_json::Value::Array(_)) => serde_json::from_value(value.clone())
                    .ok()
                    .map(Self::TokenLists),
                Some(_) => serde_json::from_value(value.clone()).ok().map(Self::Tokens),
            },
            _ => None,
        };
        parsed.ok_or_else(|| {
            serde::de::Error::custom(
                "expected a string, an array of strings, an array of token ids (non-negative \
                 integers) or an array of such arrays",
            )
        })
    }
}

/// The four shapes `TextsOrTokens` reads, for the API document (its parser is hand-written).
impl PartialSchema for TextsOrTokens {
    fn schema() -> RefOr<Schema> {
        let text = || ObjectBuilder::new().schema_type(Type::String);
        let token = || {
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(0))
        };
        let tokens = || ArrayBuilder::new().items(token());
        OneOfBuilder::new()
            .item(text())
            .item(ArrayBuilder::new().items(text()))
            .item(tokens())
            .item(ArrayBuilder::new().items(tokens()))
            .description(Some(
                "A string, an array of strings, an array of token ids, or an array of such arrays",
            ))
            .into()
    }
}

impl ToSchema for TextsOrTokens {}
