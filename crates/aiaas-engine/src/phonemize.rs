//! Grapheme-to-phoneme models: a loaded g2p network behind a batch queue (`batch_queue`), so
//! that words run off the async threads and a flood of requests meets a bounded queue.

use std::path::Path;

use aiaas_models::g2p::{G2p, MAX_WORD_CHARS};

use crate::batch_queue::{BatchModel, BatchQueue};
use crate::in_use::InUse;
use crate::metrics::ModelMetrics;
use crate::{EngineError, ModelManifest, Result};

/// Words one request may carry.
pub const MAX_WORDS: usize = 1024;
/// Words per turn of the worker (each word is its own small recurrence).
const BATCH_WORDS: usize = 256;
const MAX_QUEUED: usize = 64;

pub struct LoadedPhonemizer {
    pub manifest: ModelManifest,
    in_use: InUse,
    batches: BatchQueue<WordBatches>,
}

impl LoadedPhonemizer {
    pub fn load(manifest: ModelManifest, dir: &Path, metrics: ModelMetrics) -> Result<Self> {
        let model = G2p::load(&dir.join(&manifest.file))?;
        let words = WordBatches {
            model,
            graphemes: metrics.prompt_tokens.clone(),
        };
        let batches = BatchQueue::start(&manifest.id, words, BATCH_WORDS, MAX_QUEUED, metrics)?;
        tracing::info!(model = %manifest.id, "model loaded");
        Ok(Self {
            manifest,
            in_use: InUse::default(),
            batches,
        })
    }

    pub(crate) fn in_use(&self) -> &InUse {
        &self.in_use
    }

    /// The ARPAbet phonemes of each word, in order (checked as `check` does).
    pub async fn phonemes(
        &self,
        param: &'static str,
        words: Vec<String>,
    ) -> Result<Vec<Vec<&'static str>>> {
        check(param, &words)?;
        let _in_use = self.in_use.enter();
        self.batches.run(words).await
    }
}

/// Refuses (as an `InvalidRequest` naming `param`) no words, too many, an empty word, one with
/// spaces or one longer than `MAX_WORD_CHARS`.
pub fn check(param: &'static str, words: &[String]) -> Result<()> {
    if words.is_empty() {
        return Err(EngineError::invalid(param, "no word given"));
    }
    if words.len() > MAX_WORDS {
        return Err(EngineError::invalid(
            param,
            format!(
                "{} words given; at most {MAX_WORDS} are allowed per request",
                words.len()
            ),
        ));
    }
    for (i, word) in words.iter().enumerate() {
        let length = word.chars().count();
        if length == 0 || length > MAX_WORD_CHARS || word.chars().any(char::is_whitespace) {
            return Err(EngineError::invalid(
                param,
                format!(
                    "{param}[{i}] must be one word of 1 to {MAX_WORD_CHARS} characters \
                     without spaces"
                ),
            ));
        }
    }
    Ok(())
}

/// The network as the batching worker drives it.
struct WordBatches {
    model: G2p,
    graphemes: prometheus::IntCounter,
}

impl BatchModel for WordBatches {
    type Item = String;
    type Output = Vec<&'static str>;

    fn cost(&self, _word: &String) -> usize {
        1
    }

    fn run(&self, words: &[&String]) -> Result<Vec<Vec<&'static str>>> {
        let graphemes: usize = words.iter().map(|w| w.chars().count()).sum();
        self.graphemes.inc_by(graphemes as u64);
        Ok(words.iter().map(|word| self.model.phonemes(word)).collect())
    }
}
