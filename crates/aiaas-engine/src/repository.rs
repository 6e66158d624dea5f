//! The model repository: a folder with one sub-folder per model, each holding its weights and a
//! `model.toml` manifest. The server reads the manifests at start; the CLI writes them.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use aiaas_models::g2p::G2p;
use aiaas_models::vision::EfficientNet;
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
    /// (a generator), a sentence-transformers / Hugging Face BERT folder (an embedding model), a
    /// CTranslate2 or Hugging Face Whisper folder (a speech recognizer), an EfficientNet-Lite
    /// PyTorch checkpoint or a folder holding one and its labels (an image classifier), or a
    /// g2p-en `.npz` checkpoint (grapheme to phoneme).
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
        } else if let Some(checkpoint) = classifier_checkpoint(source)? {
            describe_classifier(source, &checkpoint)?
        } else if has_extension(source, "npz") {
            describe_g2p(source)?
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
            match from {
                Staged::Link(from) => {
                    if std::fs::hard_link(from, &target).is_err() {
                        std::fs::copy(from, &target)
                            .map_err(EngineError::io(format!("copying {}", from.display())))?;
                    }
                }
                Staged::Text(text) => std::fs::write(&target, text)
                    .map_err(EngineError::io(format!("writing {}", target.display())))?,
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

/// A file of an import: linked (or copied) from the source, or made by the import.
enum Staged {
    Link(PathBuf),
    Text(String),
}

/// What an import puts in the model's folder (each with its name there), and its manifest.
type Described = (Vec<(Staged, String)>, ModelManifest);

/// A GGUF generator: the file to copy and its manifest (id and origin filled in by the caller).
fn describe_gguf(source: &Path) -> Result<Described> {
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
        labels: None,
        preprocessing: None,
    };
    Ok((vec![(Staged::Link(source.to_path_buf()), file)], manifest))
}

/// A sentence-transformers folder: loaded once to prove it works, then its files and manifest.
fn describe_sentence_folder(source: &Path) -> Result<Described> {
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
        labels: None,
        preprocessing: None,
    };
    Ok((files, manifest))
}

/// A CTranslate2 or Hugging Face Whisper folder: loaded once to prove it works, then its files
/// and manifest.
fn describe_whisper_folder(source: &Path) -> Result<Described> {
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
        labels: None,
        preprocessing: None,
    };
    Ok((files, manifest))
}

/// An EfficientNet-Lite image classifier: the checkpoint, its class names (see `labels`) and
/// the manifest, with the preprocessing the network was trained with.
fn describe_classifier(source: &Path, checkpoint: &Path) -> Result<Described> {
    let network = EfficientNet::load(checkpoint)?;
    let file = "model.pth".to_string();
    let mut files = vec![(Staged::Link(checkpoint.to_path_buf()), file.clone())];
    let labels = if source.is_dir() {
        labels(source, network.classes())?
    } else {
        None
    };
    let labels = labels.map(|text| {
        files.push((Staged::Text(text), LABELS_FILE.to_string()));
        LABELS_FILE.to_string()
    });
    let manifest = ModelManifest {
        id: String::new(),
        task: Task::ImageClassification,
        format: "pytorch".into(),
        architecture: "efficientnet-lite".into(),
        file,
        context_length: 0,
        dimensions: Some(network.classes()),
        parameters: network.parameters(),
        quantization: "F32".into(),
        created: unix_now(),
        source: None,
        labels,
        preprocessing: Some(network.preprocessing()),
    };
    Ok((files, manifest))
}

/// The class names an image classifier's folder gives, one a line in class order: its
/// `labels.txt`, or ImageNet's synset list with the synsets' names (the first of each synset's
/// names, as timm ships them).
fn labels(folder: &Path, classes: usize) -> Result<Option<String>> {
    let read = |name: &str| {
        let path = folder.join(name);
        std::fs::read_to_string(&path)
            .map_err(EngineError::io(format!("reading {}", path.display())))
    };
    let lines = if folder.join(LABELS_FILE).is_file() {
        read(LABELS_FILE)?
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    } else if folder.join(IMAGENET_SYNSETS).is_file() {
        let names = read(IMAGENET_NAMES)?;
        let names: std::collections::HashMap<&str, &str> = names
            .lines()
            .filter_map(|line| line.split_once('\t'))
            .collect();
        (read(IMAGENET_SYNSETS)?.split_whitespace())
            .map(|synset| {
                let name = names.get(synset).ok_or_else(|| {
                    EngineError::invalid(
                        "labels",
                        format!("{IMAGENET_NAMES} has no name for {synset}"),
                    )
                })?;
                Ok(name.split(',').next().unwrap_or(name).trim().to_string())
            })
            .collect::<Result<Vec<_>>>()?
    } else {
        return Ok(None);
    };
    if lines.len() != classes {
        return Err(EngineError::invalid(
            "labels",
            format!(
                "{} labels for a network with {classes} classes",
                lines.len()
            ),
        ));
    }
    Ok(Some(lines.join("\n") + "\n"))
}

/// The class names file of an imported classifier.
const LABELS_FILE: &str = "labels.txt";
/// ImageNet-1k's synset ids in class order, and their names, as timm ships them.
const IMAGENET_SYNSETS: &str = "imagenet_synsets.txt";
const IMAGENET_NAMES: &str = "imagenet_synset_to_lemma.txt";

/// The PyTorch checkpoint of an image classifier: the file itself, or the one `.pth` in a
/// folder.
fn classifier_checkpoint(source: &Path) -> Result<Option<PathBuf>> {
    if !source.is_dir() {
        return Ok(has_extension(source, "pth").then(|| source.to_path_buf()));
    }
    let entries = std::fs::read_dir(source)
        .map_err(EngineError::io(format!("listing {}", source.display())))?;
    let checkpoints: Vec<PathBuf> = (entries.flatten())
        .map(|entry| entry.path())
        .filter(|path| has_extension(path, "pth"))
        .collect();
    match checkpoints.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one.clone())),
        _ => Err(EngineError::invalid(
            "source",
            format!(
                "{} holds several .pth checkpoints; import one",
                source.display()
            ),
        )),
    }
}

/// A g2p-en grapheme-to-phoneme checkpoint.
fn describe_g2p(source: &Path) -> Result<Described> {
    let model = G2p::load(source)?;
    let file = "model.npz".to_string();
    let manifest = ModelManifest {
        id: String::new(),
        task: Task::GraphemeToPhoneme,
        format: "npz".into(),
        architecture: "g2p-gru".into(),
        file: file.clone(),
        context_length: aiaas_models::g2p::MAX_WORD_CHARS,
        dimensions: None,
        parameters: model.parameters(),
        quantization: "F32".into(),
        created: unix_now(),
        source: None,
        labels: None,
        preprocessing: None,
    };
    Ok((vec![(Staged::Link(source.to_path_buf()), file)], manifest))
}

fn has_extension(path: &Path, extension: &str) -> bool {
    path.is_file()
        && path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case(extension))
}

/// The files of a model folder to import: the required ones and the optional ones present.
fn folder_files(source: &Path, names: &[(&str, bool)]) -> Vec<(Staged, String)> {
    (names.iter())
        .filter(|(name, required)| *required || source.join(name).is_file())
        .map(|(name, _)| (Staged::Link(source.join(name)), name.to_string()))
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
