//! A sentence-transformers folder as one unit: the Hugging Face tokenizer, the BERT encoder,
//! and the pooling, normalisation and input limit its module files ask for.
//!
//! The folder holds `config.json`, `tokenizer.json`, `model.safetensors` and, optionally,
//! `modules.json` (a `Normalize` module means unit-length output), `1_Pooling/config.json`
//! (mean or CLS pooling; mean when absent) and `sentence_bert_config.json` (`max_seq_length`).

use std::path::Path;

use serde_json::Value;

use crate::bert::{BertConfig, BertEncoder, Pooling};
use crate::{ModelError, Result};

pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The files an import copies: required ones first, then the optional module settings.
pub const FOLDER_FILES: &[(&str, bool)] = &[
    ("config.json", true),
    ("tokenizer.json", true),
    (WEIGHTS_FILE, true),
    ("modules.json", false),
    ("sentence_bert_config.json", false),
    ("1_Pooling/config.json", false),
];

/// What the folder's settings say, readable without loading the weights.
#[derive(Debug, Clone)]
pub struct SentenceSettings {
    pub config: BertConfig,
    pub pooling: Pooling,
    pub normalize: bool,
    /// The longest input in tokens, special tokens included.
    pub max_tokens: usize,
}

impl SentenceSettings {
    pub fn read(dir: &Path) -> Result<Self> {
        let config = BertConfig::read(&dir.join("config.json"))?;
        let modules = read_json(&dir.join("modules.json"))?;
        let normalize = modules.as_ref().and_then(Value::as_array).is_some_and(|m| {
            m.iter().any(|module| {
                module["type"]
                    .as_str()
                    .is_some_and(|t| t.ends_with(".Normalize"))
            })
        });
        let pooling = match read_json(&dir.join("1_Pooling/config.json"))? {
            Some(p) if p["pooling_mode_cls_token"] == true => Pooling::Cls,
            Some(p) if p["pooling_mode_mean_tokens"] == false => {
                return Err(ModelError::Format(
                    "only mean and CLS pooling are supported".into(),
                ))
            }
            _ => Pooling::Mean,
        };
        let max_tokens = read_json(&dir.join("sentence_bert_config.json"))?
            .and_then(|s| s["max_seq_length"].as_u64())
            .map_or(config.max_position_embeddings, |n| n as usize)
            .min(config.max_position_embeddings);
        Ok(Self {
            config,
            pooling,
            normalize,
            max_tokens,
        })
    }
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.display().to_string(),
        source,
    })?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| ModelError::Format(format!("{}: {e}", path.display())))
}

pub struct SentenceEncoder {
    pub settings: SentenceSettings,
    tokenizer: tokenizers::Tokenizer,
    /// Special tokens the tokenizer puts before and after a text (`[CLS]` … `[SEP]`), so raw
    /// token-id inputs can be framed the same way.
    prefix: Vec<u32>,
    suffix: Vec<u32>,
    encoder: BertEncoder,
}

impl SentenceEncoder {
    pub fn load(dir: &Path) -> Result<Self> {
        let settings = SentenceSettings::read(dir)?;
        let mut tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| ModelError::Format(format!("tokenizer.json: {e}")))?;
        // Some exports pad every input to a fixed length (all-MiniLM's pads to 128) and
        // truncate: we batch without padding and refuse over-long inputs instead.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| ModelError::Format(format!("tokenizer.json: {e}")))?;
        let (prefix, suffix) = special_frame(&tokenizer)?;
        let encoder = BertEncoder::load(
            settings.config.clone(),
            &dir.join(WEIGHTS_FILE),
            settings.pooling,
            settings.normalize,
        )?;
        Ok(Self {
            settings,
            tokenizer,
            prefix,
            suffix,
            encoder,
        })
    }

    pub fn dimensions(&self) -> usize {
        self.settings.config.hidden_size
    }

    pub fn vocab_size(&self) -> usize {
        self.settings.config.vocab_size
    }

    pub fn parameter_count(&self) -> u64 {
        self.encoder.parameter_count()
    }

    /// Token ids for a text, special tokens included.
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer
            .encode(text, true)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| ModelError::Format(format!("tokenizing: {e}")))
    }

    /// Raw token ids framed with the special tokens a text would get.
    pub fn frame(&self, ids: &[u32]) -> Vec<u32> {
        let mut framed = Vec::with_capacity(self.prefix.len() + ids.len() + self.suffix.len());
        framed.extend(&self.prefix);
        framed.extend(ids);
        framed.extend(&self.suffix);
        framed
    }

    pub fn embed(&self, sequences: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        self.encoder.embed(sequences)
    }
}

/// The special tokens around one ordinary token, found by encoding a single word.
fn special_frame(tokenizer: &tokenizers::Tokenizer) -> Result<(Vec<u32>, Vec<u32>)> {
    let encoding = tokenizer
        .encode("a", true)
        .map_err(|e| ModelError::Format(format!("tokenizing: {e}")))?;
    let mask = encoding.get_special_tokens_mask();
    let ids = encoding.get_ids();
    let first = mask.iter().position(|&m| m == 0).unwrap_or(ids.len());
    let last = mask.iter().rposition(|&m| m == 0).map_or(first, |i| i + 1);
    Ok((ids[..first].to_vec(), ids[last..].to_vec()))
}
