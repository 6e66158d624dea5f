//! Chat templates: the Jinja template stored in the model (`tokenizer.chat_template`) rendered
//! with minijinja under the settings Hugging Face uses (`trim_blocks`, `lstrip_blocks`) and the
//! Python string methods templates call.

use minijinja::{Environment, ErrorKind, Value};
use serde::Serialize;

use crate::{EngineError, Result};

/// One chat message as the template sees it.
#[derive(Debug, Clone, Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

const TEMPLATE_NAME: &str = "chat";

impl ChatTemplate {
    pub fn new(source: &str, bos_token: String, eos_token: String) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        minijinja_contrib::add_to_environment(&mut env);
        env.add_function(
            "raise_exception",
            |message: String| -> std::result::Result<Value, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_template_owned(TEMPLATE_NAME, source.to_owned())
            .map_err(|e| {
                EngineError::Template(format!("the model's chat template does not parse: {e}"))
            })?;
        Ok(Self {
            env,
            bos_token,
            eos_token,
        })
    }

    /// Renders the conversation with the assistant's turn opened for generation.
    pub fn render(&self, messages: &[ChatMessage]) -> Result<String> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .expect("the template was added at construction. This is a bug.");
        template
            .render(minijinja::context! {
                messages => messages,
                add_generation_prompt => true,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| EngineError::InvalidRequest {
                message: format!("the model's chat template rejected these messages: {e}"),
                param: Some("messages"),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_chatml_with_python_methods_and_block_trimming() {
        let source = "{% for m in messages %}\n<|{{ m.role }}|>{{ m.content.strip() }}\n{% endfor %}\n{% if add_generation_prompt %}<|assistant|>{% endif %}";
        let template = ChatTemplate::new(source, "<s>".into(), "</s>".into()).unwrap();
        let text = template
            .render(&[ChatMessage {
                role: "user".into(),
                content: "  hi  ".into(),
            }])
            .unwrap();
        assert_eq!(text, "<|user|>hi\n<|assistant|>");
    }

    #[test]
    fn raise_exception_becomes_a_request_error() {
        let source = "{{ raise_exception('only user turns') }}";
        let template = ChatTemplate::new(source, String::new(), String::new()).unwrap();
        let err = template.render(&[]).unwrap_err();
        assert!(err.to_string().contains("only user turns"), "{err}");
    }
}
