//! A generation model in memory: weights, tokenizer, chat template and the worker thread that
//! runs its sequences.

use std::sync::Arc;

use aiaas_models::{Decoder, GgufFile, Tokenizer};
use tokio::sync::{mpsc, oneshot};

use super::{Generation, GenerationJob, GenerationWorker, SamplingParams, WorkerLimits};
use crate::chat_template::{ChatMessage, ChatTemplate};
use crate::in_use::InUse;
use crate::metrics::ModelMetrics;
use crate::{EngineError, ModelManifest, Result, Task};

pub struct LoadedGenerator {
    pub manifest: ModelManifest,
    pub tokenizer: Arc<Tokenizer>,
    pub context_length: usize,
    template: Option<ChatTemplate>,
    bos_text: Option<String>,
    /// The server's cap on tokens generated per request.
    max_completion_tokens: Option<usize>,
    in_use: InUse,
    worker: GenerationWorker,
}

impl LoadedGenerator {
    pub fn load(
        manifest: ModelManifest,
        path: &std::path::Path,
        limits: WorkerLimits,
        metrics: ModelMetrics,
    ) -> Result<Self> {
        let started = std::time::Instant::now();
        let gguf = GgufFile::open(path)?;
        let tokenizer = Arc::new(Tokenizer::from_gguf(&gguf)?);
        let token_text =
            |id: Option<u32>| id.map(|id| tokenizer.token_text(id).unwrap_or_default().to_string());
        let bos_text = token_text(tokenizer.bos);
        let template = match (manifest.task, gguf.summary()?.chat_template) {
            (Task::Chat, Some(source)) => Some(ChatTemplate::new(
                &source,
                bos_text.clone().unwrap_or_default(),
                token_text(tokenizer.eos).unwrap_or_default(),
            )?),
            _ => None,
        };
        let decoder = Arc::new(Decoder::load(&gguf)?);
        let context_length = decoder.config.context_length;
        let worker = GenerationWorker::spawn(
            manifest.id.clone(),
            decoder,
            tokenizer.clone(),
            limits,
            metrics,
        )?;
        tracing::info!(model = %manifest.id, elapsed_ms = started.elapsed().as_millis() as u64, "model loaded");
        Ok(Self {
            manifest,
            tokenizer,
            context_length,
            template,
            bos_text,
            max_completion_tokens: limits.max_completion_tokens,
            in_use: InUse::default(),
            worker,
        })
    }

    /// Frees the model: waits for its worker to finish the sequences in hand. Blocking.
    pub fn shutdown(self) {
        self.worker.shutdown();
    }

    pub(crate) fn in_use(&self) -> &InUse {
        &self.in_use
    }

    pub fn has_chat_template(&self) -> bool {
        self.template.is_some()
    }

    /// Renders a conversation through the model's chat template and tokenizes it.
    pub fn chat_prompt(&self, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        let template = self.template.as_ref().ok_or_else(|| {
            EngineError::invalid(
                "model",
                format!(
                    "the model `{}` has no chat template (it is a base model); use \
                     /v1/completions with a raw prompt",
                    self.manifest.id
                ),
            )
        })?;
        let text = template.render(messages)?;
        // Templates that write the BOS token themselves must not get a second one.
        let starts_with_bos = self
            .bos_text
            .as_deref()
            .is_some_and(|b| !b.is_empty() && text.starts_with(b));
        Ok(self.tokenizer.encode(&text, !starts_with_bos, true))
    }

    /// Tokenizes a raw completion prompt.
    pub fn text_prompt(&self, text: &str) -> Vec<u32> {
        self.tokenizer.encode(text, true, true)
    }

    /// The most tokens a request may generate: `max_tokens`, or up to the end of the context
    /// (and never more than the server's cap).
    pub fn completion_budget(&self, prompt_tokens: usize, max_tokens: Option<usize>) -> usize {
        let asked = max_tokens.unwrap_or(self.context_length.saturating_sub(prompt_tokens));
        self.max_completion_tokens
            .map_or(asked, |cap| asked.min(cap))
    }

    /// Starts a generation. `max_tokens: None` means "up to the end of the context window".
    pub fn start(
        &self,
        prompt: Vec<u32>,
        max_tokens: Option<usize>,
        mut params: SamplingParams,
    ) -> Result<Generation> {
        let limit = self.context_length;
        let completion = max_tokens.unwrap_or(0);
        if prompt.is_empty() {
            return Err(EngineError::invalid("prompt", "the prompt is empty"));
        }
        if let Some(cap) = self.max_completion_tokens.filter(|&cap| completion > cap) {
            return Err(EngineError::invalid(
                "max_tokens",
                format!("max_tokens is {completion}; this server generates at most {cap} tokens per request"),
            ));
        }
        if prompt.len() >= limit || prompt.len() + completion > limit {
            return Err(EngineError::ContextLengthExceeded {
                limit,
                requested: prompt.len() + completion,
                prompt: prompt.len(),
                completion,
            });
        }
        params.max_tokens = self.completion_budget(prompt.len(), max_tokens);
        let (events, receiver) = mpsc::unbounded_channel();
        let (usage, usage_receiver) = oneshot::channel();
        self.worker.submit(GenerationJob {
            prompt,
            params,
            events,
            usage: Some(usage),
            submitted: std::time::Instant::now(),
            in_use: self.in_use.enter(),
        })?;
        Ok(Generation {
            events: receiver,
            usage: usage_receiver,
        })
    }
}
