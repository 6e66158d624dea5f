//! Turning request fields into engine parameters, one rule at a time; each failure names the
//! field, the bound and the value given.

use aiaas_engine::chat_template::ChatMessage;
use aiaas_engine::generate::SamplingParams;

use super::types::{ChatMessageIn, MessageContent, SamplingFields, StopField};
use super::ApiError;

/// Most stop sequences a request may give (OpenAI's limit).
const MAX_STOPS: usize = 4;
/// Most alternatives `top_logprobs` may ask for (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: i64 = 20;

/// The engine parameters and the requested completion budget (`None`: up to the context end).
pub struct ValidSampling {
    pub params: SamplingParams,
    pub max_tokens: Option<usize>,
    pub stream: bool,
    pub include_usage: bool,
}

pub fn sampling(
    fields: &SamplingFields,
    max_tokens: Option<i64>,
    logprobs: Option<usize>,
) -> Result<ValidSampling, ApiError> {
    if let Some(n) = fields.n {
        if n != 1 {
            return Err(ApiError::invalid(
                "n",
                format!("n must be 1 (one choice per request is supported); got {n}"),
            ));
        }
    }
    let max_tokens = match max_tokens {
        None => None,
        Some(m) if m < 1 => {
            return Err(ApiError::invalid(
                "max_tokens",
                format!("max_tokens must be at least 1; got {m}"),
            ))
        }
        Some(m) => Some(usize::try_from(m).unwrap_or(usize::MAX)),
    };
    let temperature = in_range("temperature", fields.temperature, 0.0, 2.0)?.unwrap_or(1.0);
    let top_p = in_range("top_p", fields.top_p, 0.0, 1.0)?.unwrap_or(1.0);
    if top_p <= 0.0 {
        return Err(ApiError::invalid("top_p", "top_p must be greater than 0"));
    }
    let presence_penalty =
        in_range("presence_penalty", fields.presence_penalty, -2.0, 2.0)?.unwrap_or(0.0);
    let frequency_penalty =
        in_range("frequency_penalty", fields.frequency_penalty, -2.0, 2.0)?.unwrap_or(0.0);
    let stop = match &fields.stop {
        None => Vec::new(),
        Some(StopField::One(s)) => vec![s.clone()],
        Some(StopField::Many(list)) => list.clone(),
    };
    if stop.len() > MAX_STOPS {
        return Err(ApiError::invalid(
            "stop",
            format!(
                "at most {MAX_STOPS} stop sequences are allowed; got {}",
                stop.len()
            ),
        ));
    }
    Ok(ValidSampling {
        params: SamplingParams {
            max_tokens: 0,
            temperature,
            top_p,
            // Seeds are opaque: a negative one is as good as any, reinterpreted bit for bit.
            seed: fields.seed.map(|s| s as u64),
            presence_penalty,
            frequency_penalty,
            stop,
            logprobs,
        },
        max_tokens,
        stream: fields.stream,
        include_usage: fields
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage),
    })
}

fn in_range(
    field: &'static str,
    value: Option<f32>,
    low: f32,
    high: f32,
) -> Result<Option<f32>, ApiError> {
    match value {
        Some(v) if !(low..=high).contains(&v) => Err(ApiError::invalid(
            field,
            format!("{field} must be between {low} and {high}; got {v}"),
        )),
        other => Ok(other),
    }
}

/// Checks roles and flattens content into the plain messages a chat template takes.
pub fn messages(messages: &[ChatMessageIn]) -> Result<Vec<ChatMessage>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "messages must contain at least one message",
        ));
    }
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match m.role.as_str() {
                "system" | "developer" => "system",
                "user" => "user",
                "assistant" => "assistant",
                "tool" => "tool",
                other => {
                    return Err(ApiError::invalid(
                        "messages",
                        format!(
                            "messages[{i}].role `{other}` is not one of system, developer, \
                             user, assistant, tool"
                        ),
                    ))
                }
            };
            let content = match &m.content {
                None if role == "assistant" => String::new(),
                None => {
                    return Err(ApiError::invalid(
                        "messages",
                        format!("messages[{i}].content is required for role `{role}`"),
                    ))
                }
                Some(MessageContent::Text(text)) => text.clone(),
                Some(MessageContent::Parts(parts)) => {
                    let mut text = String::new();
                    for part in parts {
                        match (part.kind.as_str(), &part.text) {
                            ("text", Some(t)) => text.push_str(t),
                            (kind, _) => {
                                return Err(ApiError::invalid(
                                    "messages",
                                    format!(
                                        "messages[{i}] has a `{kind}` content part; this model \
                                         takes text parts only"
                                    ),
                                ))
                            }
                        }
                    }
                    text
                }
            };
            Ok(ChatMessage {
                role: role.to_string(),
                content,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_name_field_and_value() {
        let fields = SamplingFields {
            temperature: Some(3.5),
            ..SamplingFields::default()
        };
        let err = sampling(&fields, None, None).err().unwrap();
        assert_eq!(
            err.to_string(),
            "temperature must be between 0 and 2; got 3.5"
        );
        let err = sampling(&SamplingFields::default(), Some(-5), None)
            .err()
            .unwrap();
        assert!(err.to_string().contains("got -5"));
        let fields = SamplingFields {
            n: Some(2),
            ..SamplingFields::default()
        };
        assert!(sampling(&fields, None, None).is_err());
    }

    #[test]
    fn unknown_roles_and_empty_lists_are_rejected() {
        assert!(messages(&[]).is_err());
        let wizard = ChatMessageIn {
            role: "wizard".into(),
            content: Some(MessageContent::Text("hi".into())),
        };
        assert!(messages(&[wizard])
            .err()
            .unwrap()
            .to_string()
            .contains("wizard"));
    }
}
