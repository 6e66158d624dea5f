//! The manifest (`model.toml`) each model folder in the repository carries.

use std::path::Path;

use aiaas_models::vision::ImagePreprocessing;
use serde::{Deserialize, Serialize};

use crate::{EngineError, Result};

pub const MANIFEST_FILE: &str = "model.toml";

/// What a model does, which decides the routes that serve it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// A generator with a chat template: `/v1/chat/completions` and `/v1/completions`.
    Chat,
    /// A generator without a chat template (a base model): `/v1/completions` only.
    Completion,
    /// A sentence encoder: `/v1/embeddings`.
    Embedding,
    /// A speech recognizer: `/v1/audio/transcriptions` (and, multilingual, `/translations`).
    Transcription,
    /// An image classifier: `/v1/images/classifications`.
    ImageClassification,
    /// English words to ARPAbet phonemes (g2p): the inference protocol's `/v2` routes.
    GraphemeToPhoneme,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelManifest {
    pub id: String,
    pub task: Task,
    pub format: String,
    pub architecture: String,
    /// The weights file, relative to the model's folder.
    pub file: String,
    /// The longest input in tokens (for an embedding model, per input).
    pub context_length: usize,
    /// The length of an embedding model's vectors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<usize>,
    pub parameters: u64,
    pub quantization: String,
    /// Unix seconds when the model was imported.
    pub created: u64,
    /// The catalog entry it was fetched from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// A classifier's class names, one a line in class order (a file in the model's folder).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<String>,
    /// How an image classifier's input images are prepared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preprocessing: Option<ImagePreprocessing>,
}

impl ModelManifest {
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(EngineError::io(format!("reading {}", path.display())))?;
        toml::from_str(&text).map_err(|e| EngineError::Manifest {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let text = toml::to_string_pretty(self).map_err(|e| EngineError::Manifest {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        std::fs::write(path, text).map_err(EngineError::io(format!("writing {}", path.display())))
    }
}
