//! The models the server offers: manifests read from the repository, each loaded on first use
//! into a generator (weights, tokenizer, chat template and a worker thread) or an embedder.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use aiaas_models::{Decoder, GgufFile, Tokenizer};
use tokio::sync::{mpsc, oneshot, OnceCell};

use crate::chat_template::{ChatMessage, ChatTemplate};
use crate::embed::{EmbedLimits, LoadedEmbedder};
use crate::generate::{Generation, GenerationJob, GenerationWorker, SamplingParams, WorkerLimits};
use crate::{EngineError, EngineMetrics, ModelManifest, ModelRepository, Result, Task};

pub struct Engine {
    repository: ModelRepository,
    limits: WorkerLimits,
    embed_limits: EmbedLimits,
    metrics: Arc<EngineMetrics>,
    slots: RwLock<HashMap<String, Arc<Slot>>>,
}

struct Slot {
    manifest: ModelManifest,
    loaded: OnceCell<LoadedModel>,
}

/// A model in memory, by what it does.
#[derive(Clone)]
enum LoadedModel {
    Generator(Arc<LoadedGenerator>),
    Embedder(Arc<LoadedEmbedder>),
}

impl Engine {
    pub fn new(repository: ModelRepository, limits: WorkerLimits) -> Result<Self> {
        let engine = Self {
            repository,
            limits,
            embed_limits: EmbedLimits::default(),
            metrics: Arc::default(),
            slots: RwLock::default(),
        };
        engine.rescan()?;
        Ok(engine)
    }

    pub fn metrics(&self) -> &Arc<EngineMetrics> {
        &self.metrics
    }

    /// Picks up models imported or removed since the last scan; loaded ones stay loaded.
    pub fn rescan(&self) -> Result<()> {
        let manifests = self.repository.list()?;
        let mut slots = self.slots.write().expect("slot lock poisoned");
        slots.retain(|id, _| manifests.iter().any(|m| &m.id == id));
        for manifest in manifests {
            slots.entry(manifest.id.clone()).or_insert_with(|| {
                Arc::new(Slot {
                    manifest,
                    loaded: OnceCell::new(),
                })
            });
        }
        Ok(())
    }

    pub fn models(&self) -> Vec<ModelManifest> {
        let slots = self.slots.read().expect("slot lock poisoned");
        let mut models: Vec<_> = slots.values().map(|s| s.manifest.clone()).collect();
        models.sort_by(|a, b| a.id.cmp(&b.id));
        models
    }

    fn slot(&self, id: &str) -> Result<Arc<Slot>> {
        let found = self
            .slots
            .read()
            .expect("slot lock poisoned")
            .get(id)
            .cloned();
        if let Some(slot) = found {
            return Ok(slot);
        }
        self.rescan()?;
        self.slots
            .read()
            .expect("slot lock poisoned")
            .get(id)
            .cloned()
            .ok_or_else(|| EngineError::ModelNotFound(id.to_string()))
    }

    pub fn manifest(&self, id: &str) -> Result<ModelManifest> {
        Ok(self.slot(id)?.manifest.clone())
    }

    /// The loaded generator for `id`, loading it on first use.
    pub async fn generator(&self, id: &str) -> Result<Arc<LoadedGenerator>> {
        match self.loaded(id).await? {
            LoadedModel::Generator(generator) => Ok(generator),
            LoadedModel::Embedder(_) => Err(EngineError::invalid(
                "model",
                format!("`{id}` is an embedding model; use /v1/embeddings"),
            )),
        }
    }

    /// The loaded embedder for `id`, loading it on first use.
    pub async fn embedder(&self, id: &str) -> Result<Arc<LoadedEmbedder>> {
        match self.loaded(id).await? {
            LoadedModel::Embedder(embedder) => Ok(embedder),
            LoadedModel::Generator(_) => Err(EngineError::invalid(
                "model",
                format!(
                    "`{id}` is a text generation model, not an embedding model; use \
                     /v1/chat/completions or /v1/completions"
                ),
            )),
        }
    }

    /// The model `id` in memory, loading it on first use (once, however many ask).
    async fn loaded(&self, id: &str) -> Result<LoadedModel> {
        let slot = self.slot(id)?;
        let loaded = slot
            .loaded
            .get_or_try_init(|| async {
                let manifest = slot.manifest.clone();
                let dir = self.repository.model_dir(&manifest);
                let path = self.repository.weights_path(&manifest);
                let (limits, embed_limits) = (self.limits, self.embed_limits);
                let metrics = self.metrics.clone();
                tokio::task::spawn_blocking(move || match manifest.task {
                    Task::Embedding => LoadedEmbedder::load(manifest, &dir, embed_limits)
                        .map(|e| LoadedModel::Embedder(Arc::new(e))),
                    Task::Chat | Task::Completion => {
                        LoadedGenerator::load(manifest, &path, limits, metrics)
                            .map(|g| LoadedModel::Generator(Arc::new(g)))
                    }
                })
                .await
                .map_err(|e| EngineError::Internal(format!("model loading panicked: {e}")))?
            })
            .await?;
        Ok(loaded.clone())
    }
}

pub struct LoadedGenerator {
    pub manifest: ModelManifest,
    pub tokenizer: Arc<Tokenizer>,
    pub context_length: usize,
    template: Option<ChatTemplate>,
    bos_text: Option<String>,
    worker: GenerationWorker,
}

impl LoadedGenerator {
    pub fn load(
        manifest: ModelManifest,
        path: &std::path::Path,
        limits: WorkerLimits,
        metrics: Arc<EngineMetrics>,
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
            worker,
        })
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

    /// The most tokens a request may generate: `max_tokens`, or up to the end of the context.
    pub fn completion_budget(&self, prompt_tokens: usize, max_tokens: Option<usize>) -> usize {
        max_tokens.unwrap_or(self.context_length.saturating_sub(prompt_tokens))
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
        })?;
        Ok(Generation {
            events: receiver,
            usage: usage_receiver,
        })
    }
}
