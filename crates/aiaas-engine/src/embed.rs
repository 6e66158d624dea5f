//! Embedding models: a loaded sentence encoder behind a batch queue (`batch_queue`) that packs
//! every caller's inputs together by a token budget. Packing means no padding, so mixing short
//! and long inputs wastes nothing.

use std::sync::Arc;

use aiaas_models::SentenceEncoder;

use crate::batch_queue::{BatchModel, BatchQueue};
use crate::in_use::InUse;
use crate::metrics::ModelMetrics;
use crate::{EngineError, ModelManifest, Result};

/// OpenAI's limit on inputs per embeddings request.
pub const MAX_INPUTS: usize = 2048;

#[derive(Debug, Clone, Copy)]
pub struct EmbedLimits {
    /// Tokens per forward pass.
    pub batch_tokens: usize,
    /// Requests that may wait before new ones are refused.
    pub max_queued: usize,
}

impl Default for EmbedLimits {
    fn default() -> Self {
        Self {
            batch_tokens: 8192,
            max_queued: 256,
        }
    }
}

/// What a caller asks to embed.
pub enum EmbedInput {
    Texts(Vec<String>),
    /// Token ids without special tokens; they are framed like a text's.
    Tokens(Vec<Vec<u32>>),
}

pub struct LoadedEmbedder {
    pub manifest: ModelManifest,
    encoder: Arc<SentenceEncoder>,
    in_use: InUse,
    batches: BatchQueue<EncoderBatches>,
}

impl LoadedEmbedder {
    pub fn load(
        manifest: ModelManifest,
        dir: &std::path::Path,
        limits: EmbedLimits,
        metrics: ModelMetrics,
    ) -> Result<Self> {
        let started = std::time::Instant::now();
        let encoder = Arc::new(SentenceEncoder::load(dir)?);
        let batches = EncoderBatches {
            encoder: encoder.clone(),
            prompt_tokens: metrics.prompt_tokens.clone(),
        };
        let budget = limits.batch_tokens.max(encoder.settings.max_tokens);
        let batches = BatchQueue::start(&manifest.id, batches, budget, limits.max_queued, metrics)?;
        tracing::info!(model = %manifest.id, elapsed_ms = started.elapsed().as_millis() as u64, "model loaded");
        Ok(Self {
            manifest,
            encoder,
            in_use: InUse::default(),
            batches,
        })
    }

    pub(crate) fn in_use(&self) -> &InUse {
        &self.in_use
    }

    pub fn dimensions(&self) -> usize {
        self.encoder.dimensions()
    }

    /// Tokenizes and checks every input (off the async threads: 2,048 long texts take a while).
    pub async fn tokenize(&self, input: EmbedInput) -> Result<Vec<Vec<u32>>> {
        let encoder = self.encoder.clone();
        tokio::task::spawn_blocking(move || tokenize(&encoder, input))
            .await
            .map_err(|e| EngineError::Internal(format!("tokenizing panicked: {e}")))?
    }

    /// Queues tokenized inputs for the batching worker and waits for their vectors, in order.
    pub async fn embed(&self, sequences: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>> {
        let _in_use = self.in_use.enter();
        self.batches.run(sequences).await
    }
}

fn tokenize(encoder: &SentenceEncoder, input: EmbedInput) -> Result<Vec<Vec<u32>>> {
    let count = match &input {
        EmbedInput::Texts(t) => t.len(),
        EmbedInput::Tokens(t) => t.len(),
    };
    if count == 0 {
        return Err(EngineError::invalid("input", "input must not be empty"));
    }
    if count > MAX_INPUTS {
        return Err(EngineError::invalid(
            "input",
            format!("input has {count} items; at most {MAX_INPUTS} are allowed per request"),
        ));
    }
    let vocab = encoder.vocab_size();
    let sequences = match input {
        EmbedInput::Texts(texts) => texts
            .iter()
            .enumerate()
            .map(|(i, text)| {
                if text.is_empty() {
                    return Err(EngineError::invalid(
                        "input",
                        format!("input[{i}] is an empty string"),
                    ));
                }
                Ok(encoder.tokenize(text)?)
            })
            .collect::<Result<Vec<_>>>()?,
        EmbedInput::Tokens(lists) => lists
            .iter()
            .enumerate()
            .map(|(i, ids)| {
                if ids.is_empty() {
                    return Err(EngineError::invalid(
                        "input",
                        format!("input[{i}] is an empty token list"),
                    ));
                }
                if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
                    return Err(EngineError::invalid(
                        "input",
                        format!("input[{i}]: token id {bad} is outside the vocabulary of {vocab}"),
                    ));
                }
                Ok(encoder.frame(ids))
            })
            .collect::<Result<Vec<_>>>()?,
    };
    let limit = encoder.settings.max_tokens;
    if let Some((i, s)) = sequences.iter().enumerate().find(|(_, s)| s.len() > limit) {
        return Err(EngineError::invalid(
            "input",
            format!(
                "input[{i}] has {} tokens, more than this model's limit of {limit} tokens \
                 (special tokens included); shorten or split it",
                s.len()
            ),
        ));
    }
    Ok(sequences)
}

/// The encoder as the batching worker drives it: sequences cost their tokens.
struct EncoderBatches {
    encoder: Arc<SentenceEncoder>,
    prompt_tokens: prometheus::IntCounter,
}

impl BatchModel for EncoderBatches {
    type Item = Vec<u32>;
    type Output = Vec<f32>;

    fn cost(&self, sequence: &Vec<u32>) -> usize {
        sequence.len()
    }

    fn run(&self, sequences: &[&Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        let tokens: usize = sequences.iter().map(|s| s.len()).sum();
        self.prompt_tokens.inc_by(tokens as u64);
        let batch: Vec<&[u32]> = sequences.iter().map(|s| s.as_slice()).collect();
        Ok(self.encoder.embed(&batch)?)
    }
}
