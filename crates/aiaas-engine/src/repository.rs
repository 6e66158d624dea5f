//! The model repository: a folder with one sub-folder per model, each holding its weights and a
//! `model.toml` manifest. The server reads the manifests at start; the CLI writes them.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use aiaas_models::{sentence, whisper, GgufFile, SentenceEncoder, Whisper};

use crate::manifest::{ModelManifest, Task, MANIFEST_FILE};
use crate::{EngineError, Result};

#[derive(Debug, Clone)]
pub struct ModelRepository {
    root: PathBuf,
}

impl ModelRepository {
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root)
            .map_err(EngineError::io(format!("creating {}", root.display())))?;
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every model with a readable manifest, sorted by id. A folder with a broken manifest is
    /// reported on stderr and skipped, so one bad import cannot keep the server from starting.
    pub fn list(&self) -> Result<Vec<ModelManifest>> {
        let entries = std::fs::read_dir(&self.root)
            .map_err(EngineError::io(format!("listing {}", self.root.display())))?;
        let mut manifests = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path().join(MANIFEST_FILE);
            if !path.is_file() {
                continue;
            }
            match ModelManifest::read(&path) {
                Ok(manifest) => manifests.push(manifest),
                Err(e) => tracing::warn!("skipping model folder: {e}"),
            }
        }
        manifests.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(manifests)
    }

    pub fn get(&self, id: &str) -> Result<ModelManifest> {
        validate_id(id)?;
        let path = self.root.join(id).join(MANIFEST_FILE);
        if !path.is_file() {
            return Err(EngineError::ModelNotFound(id.to_string()));
        }
        ModelManifest::read(&path)
    }

    /// The folder holding a model's files.
    pub fn model_dir(&self, manifest: &ModelManifest) -> PathBuf {
        self.root.join(&manifest.id)
    }

    /// The weights file of a model.
    pub fn weights_path(&self, manifest: &ModelManifest) -> PathBuf {
        self.root.join(&manifest.id).join(&manifest.file)
    }

    /// Imports a model under `id` (default: the file or folder name, lower-cased): a GGUF file
    /// (a generator), a sentence-transformers / Hugging Face BERT folder (an embedding model) or a
    /// CTranslate2 or Hugging Face Whisper folder (a speech recognizer).
    /// Files are hard-linked when on the same file system, copied otherwise.
    pub fn import(
        &self,
        source: &Path,
        id: Option<&str>,
        origin: Option<&str>,
    ) -> Result<ModelManifest> {
        let id = match id {
            Some(id) => id.to_string(),
            None => default_id(source),
        };
        validate_id(&id)?;
        let dir = self.root.join(&id);
        if dir.join(MANIFEST_FILE).exists() {
            return Err(EngineError::invalid(
                "id",
                format!("a model with id `{id}` already exists; remove it first or pick --id"),
            ));
        }
        let (files, mut manifest) = if whisper::is_whisper_folder(source) {
            describe_whisper_folder(source)?
        } else if source.is_dir() {
            describe_sentence_folder(source)?
        } else {
            describe_gguf(source)?
        };
        manifest.id = id.clone();
        manifest.source = origin.map(str::to_owned);
        // Build the folder under a temporary name so a failed import leaves nothing half-made.
        let staging = self.root.join(format!(".{id}.importing"));
        let _ = std::fs::remove_dir_all(&staging);
        for (from, name) in &files {
            let target = staging.join(name);
            let parent = target.parent().expect("staged files have a parent");
            std::fs::create_dir_all(parent)
                .map_err(EngineError::io(format!("creating {}", parent.display())))?;
            if std::fs::hard_link(from, &target).is_err() {
                std::fs::copy(from, &target)
                    .map_err(EngineError::io(format!("copying {}", from.display())))?;
            }
        }
        manifest.write(&staging.join(MANIFEST_FILE))?;
        std::fs::rename(&staging, &dir).map_err(EngineError::io(format!(
            "moving the import into {}",
            dir.display()
        )))?;
        Ok(manifest)
    }

    pub fn remove(&self, id: &str) -> Result<()> {
        self.get(id)?;
        let dir = self.root.join(id);
        std::fs::remove_dir_all(&dir)
            .map_err(EngineError::io(format!("removing {}", dir.display())))
    }
}

/// A GGUF generator: the file to copy and its manifest (id and origin filled in by the caller).
fn describe_gguf(source: &Path) -> Result<(Vec<(PathBuf, String)>, ModelManifest)> {
    let summary = GgufFile::open(source)?.summary()?;
    aiaas_models::transformer::Architecture::parse(&summary.architecture)?;
    let file = "model.gguf".to_string();
    let manifest = ModelManifest {
        id: String::new(),
        task: if summary.chat_template.is_some() {
            Task::Chat
        } else {
            Task::Completion
        },
        format: "gguf".into(),
        architecture: summary.architecture,
        file: file.clone(),
        context_length: summary.context_length,
        dimensions: None,
        parameters: summary.parameters,
        quantization: summary.quantization,
        created: unix_now(),
        source: None,
    };
    Ok((vec![(source.to_path_buf(), file)], manifest))
}

/// A sentence-transformers folder: loaded once to prove it works, then its files and manifest.
fn describe_sentence_folder(source: &Path) -> Result<(Vec<(PathBuf, String)>, ModelManifest)> {
    let encoder = SentenceEncoder::load(source)?;
    let files = folder_files(source, sentence::FOLDER_FILES);
    let manifest = ModelManifest {
        id: String::new(),
        task: Task::Embedding,
        format: "safetensors".into(),
        architecture: encoder.settings.config.model_type.clone(),
        file: sentence::WEIGHTS_FILE.into(),
        context_length: encoder.settings.max_tokens,
        dimensions: Some(encoder.dimensions()),
        parameters: encoder.parameter_count(),
        quantization: "F32".into(),
        created: unix_now(),
        source: None,
    };
    Ok((files, manifest))
}

/// A CTranslate2 or Hugging Face Whisper folder: loaded once to prove it works, then its files
/// and manifest.
fn describe_whisper_folder(source: &Path) -> Result<(Vec<(PathBuf, String)>, ModelManifest)> {
    let model = Whisper::load(source)?;
    let (weights, names) = whisper::folder_files(source);
    let files = folder_files(source, names);
    let manifest = ModelManifest {
        id: String::new(),
        task: Task::Transcription,
        format: match weights {
            whisper::WEIGHTS_FILE => "ctranslate2",
            _ => "safetensors",
        }
        .into(),
        architecture: "whisper".into(),
        file: weights.into(),
        context_length: model.max_tokens(),
        dimensions: None,
        parameters: model.parameter_count(),
        quantization: "F16".into(),
        created: unix_now(),
        source: None,
    };
    Ok((files, manifest))
}

/// The files of a model folder to import: the required ones and the optional ones present.
fn folder_files(source: &Path, names: &[(&str, bool)]) -> Vec<(PathBuf, String)> {
    (names.iter())
        .filter(|(name, required)| *required || source.join(name).is_file())
        .map(|(name, _)| (source.join(name), name.to_string()))
        .collect()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn default_id(source: &Path) -> String {
    let name = if source.is_dir() {
        source.file_name()
    } else {
        source.file_stem()
    };
    let stem = name
        .map(|s| s.to_string_lossy().to_lowercase())
        .unwrap_or_else(|| "model".into());
    stem.chars()
        .map(|c| if is_id_char(c) { c } else { '-' })
        .collect()
}

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')
}

/// Model ids name folders, so they are restricted to a safe alphabet (no separators, no `..`).
pub fn validate_id(id: &str) -> Result<()> {
    let ok =
        !id.is_empty() && id.len() <= 128 && !id.starts_with('.') && id.chars().all(is_id_char);
    if ok {
        Ok(())
    } else {
        Err(EngineError::invalid(
            "id",
            format!(
                "invalid model id `{id}`: use 1-128 letters, digits, `-`, `_`, `.` or `:`, \
                 not starting with `.`"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_cannot_escape_the_repository() {
        for bad in ["", "../x", "a/b", ".hidden", "a b"] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
        validate_id("smollm2-135m-instruct").unwrap();
        assert_eq!(
            default_id(Path::new("/x/My Model.Q4_1.gguf")),
            "my-model.q4_1"
        );
    }
}
