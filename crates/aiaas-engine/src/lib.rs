//! The engine: the model repository, fetching known models, and running them.
//!
//! It knows tensors and sequences, not HTTP or keys. Each loaded generator has a worker thread
//! that owns the sequences in flight and advances them step by step; callers talk to it through a
//! bounded channel and receive events back. `residency` decides which models are in memory.

mod batch_queue;
pub mod catalog;
pub mod chat_template;
pub mod classify;
pub mod embed;
pub mod fetch;
pub mod generate;
mod in_use;
pub mod manifest;
pub mod metrics;
pub mod phonemize;
pub mod registry;
pub mod repository;
pub mod residency;
pub mod transcribe;

pub use classify::LoadedClassifier;
pub use embed::{EmbedInput, LoadedEmbedder};
pub use generate::LoadedGenerator;
pub use manifest::{ModelManifest, Task};
pub use metrics::EngineMetrics;
pub use phonemize::LoadedPhonemizer;
pub use registry::Engine;
pub use repository::ModelRepository;
pub use residency::{set_release_hook, LoadedModel, ModelState, ModelStatus, ResidencyPolicy};
pub use transcribe::{CancelOnDrop, LoadedTranscriber, TranscriptionJob};

/// Errors the engine reports; the API layer maps each to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("The model `{0}` does not exist or you do not have access to it.")]
    ModelNotFound(String),
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<&'static str>,
    },
    #[error(
        "This model's maximum context length is {limit} tokens. However, your request has \
         {requested} tokens ({prompt} in the prompt, {completion} for the completion). Please \
         reduce the length of the prompt or the completion."
    )]
    ContextLengthExceeded {
        limit: usize,
        requested: usize,
        prompt: usize,
        completion: usize,
    },
    #[error("The model `{0}` is busy: its request queue is full. Retry shortly.")]
    Overloaded(String),
    #[error("The model `{model}` is loading. Retry in a moment.")]
    Loading {
        model: String,
        retry_after_secs: u64,
    },
    #[error(
        "The model `{model}` needs {} MiB of memory, and the models in use hold the rest of \
         the {} MiB model memory budget. Retry shortly.", needed >> 20, budget >> 20
    )]
    ModelMemoryBusy {
        model: String,
        needed: u64,
        budget: u64,
    },
    #[error(
        "The model `{model}` needs {} MiB of memory, more than the whole model memory budget \
         of {} MiB (--max-model-memory).", needed >> 20, budget >> 20
    )]
    ModelTooLarge {
        model: String,
        needed: u64,
        budget: u64,
    },
    #[error("model error: {0}")]
    Model(#[from] aiaas_models::ModelError),
    /// The model's chat template is unusable (not the caller's messages: those are
    /// `InvalidRequest`).
    #[error("{0}")]
    Template(String),
    /// Something failed inside the engine: a generation that broke off, a load that panicked.
    #[error("{0}")]
    Internal(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("fetch failed: {0}")]
    Fetch(String),
    #[error("invalid manifest {path}: {message}")]
    Manifest { path: String, message: String },
}

impl EngineError {
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }

    pub fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        Self::InvalidRequest {
            message: message.into(),
            param: Some(param),
        }
    }
}

pub type Result<T> = std::result::Result<T, EngineError>;
