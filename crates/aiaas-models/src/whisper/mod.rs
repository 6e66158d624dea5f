//! Whisper speech recognition from CTranslate2 model folders (faster-whisper's format):
//! `model.bin` (see `ctranslate2`), `config.json` (suppressed tokens, language ids) and
//! `tokenizer.json`.
//!
//! The encoder turns 30 s of log-mel frames (`mel`) into 1500 vectors; the decoder writes
//! tokens one at a time, attending to its own past (a key/value cache) and to the encoder's
//! output (keys and values computed once per window). `transcribe` drives both the way
//! faster-whisper does (`transcribe`): windows, timestamps, segments.

mod decoder;
mod encoder;
pub mod hugging_face;
pub mod mel;
mod transcribe;

use std::collections::{HashMap, HashSet};
use std::path::Path;

use serde::Deserialize;

use crate::ctranslate2::Ct2Model;
use crate::dense::{Dense, Norm};
use crate::{ModelError, Result};
use decoder::TextDecoder;
use encoder::Encoder;
pub use transcribe::{Segment, Task, TranscribeOptions, Transcript};

/// The weights file of a CTranslate2 folder.
pub const WEIGHTS_FILE: &str = "model.bin";

/// The files of a CTranslate2 Whisper folder, and whether each is required.
pub const FOLDER_FILES: &[(&str, bool)] = &[
    (WEIGHTS_FILE, true),
    ("config.json", true),
    ("tokenizer.json", true),
    ("vocabulary.txt", false),
    ("preprocessor_config.json", false),
];

/// The fields of a Whisper folder's configuration that decoding needs, under CTranslate2's
/// names or Hugging Face's.
#[derive(Debug, Deserialize)]
struct Config {
    #[serde(default, alias = "suppress_tokens", deserialize_with = "null_as_empty")]
    suppress_ids: Vec<u32>,
    #[serde(
        default,
        alias = "begin_suppress_tokens",
        deserialize_with = "null_as_empty"
    )]
    suppress_ids_begin: Vec<u32>,
    #[serde(default)]
    lang_ids: Vec<u32>,
    /// Hugging Face's language tokens, `{"<|en|>": 50259, ...}`.
    #[serde(default)]
    lang_to_id: HashMap<String, u32>,
}

impl Config {
    /// Fills what this configuration lacks from `other`.
    fn merge(&mut self, other: Config) {
        for (mine, theirs) in [
            (&mut self.suppress_ids, other.suppress_ids),
            (&mut self.suppress_ids_begin, other.suppress_ids_begin),
            (&mut self.lang_ids, other.lang_ids),
        ] {
            if mine.is_empty() {
                *mine = theirs;
            }
        }
        if self.lang_to_id.is_empty() {
            self.lang_to_id = other.lang_to_id;
        }
    }

    /// The language tokens, by either name.
    fn language_ids(&self) -> Vec<u32> {
        let mut ids = self.lang_ids.clone();
        ids.extend(self.lang_to_id.values());
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

/// A list that may be written as `null` (Hugging Face configurations do that).
fn null_as_empty<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<u32>, D::Error> {
    Ok(Option::<Vec<u32>>::deserialize(d)?.unwrap_or_default())
}

/// Whether `folder` holds a Whisper model: a CTranslate2 `model.bin`, or a Hugging Face
/// `config.json` of `model_type` whisper.
pub fn is_whisper_folder(folder: &Path) -> bool {
    #[derive(Deserialize)]
    struct ModelType {
        model_type: String,
    }
    folder.join(WEIGHTS_FILE).is_file()
        || read_json::<ModelType>(&folder.join("config.json"))
            .is_ok_and(|c| c.model_type == "whisper")
}

/// The files a Whisper folder's import takes, and whether each is required.
pub fn folder_files(folder: &Path) -> (&'static str, &'static [(&'static str, bool)]) {
    if folder.join(WEIGHTS_FILE).is_file() {
        (WEIGHTS_FILE, FOLDER_FILES)
    } else {
        (hugging_face::WEIGHTS_FILE, hugging_face::FOLDER_FILES)
    }
}

/// A JSON file, parsed.
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.display().to_string(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| ModelError::Format(format!("{}: {e}", path.display())))
}

/// The tokens that steer decoding, looked up by name in the tokenizer.
#[derive(Debug, Clone)]
struct SpecialTokens {
    end_of_text: u32,
    start_of_transcript: u32,
    start_of_previous: u32,
    transcribe: u32,
    translate: u32,
    no_timestamps: u32,
    no_speech: u32,
    /// The first timestamp token (`<|0.00|>`); every token from here on is a timestamp.
    timestamp_begin: u32,
}

pub struct Whisper {
    encoder: Encoder,
    decoder: TextDecoder,
    tokenizer: tokenizers::Tokenizer,
    special: SpecialTokens,
    /// Never generated: non-speech symbols and control tokens.
    suppressed: Vec<u32>,
    /// Not generated first: a blank and the end of text.
    suppressed_at_begin: Vec<u32>,
    /// Language tokens (`<|en|>` ...), for a multilingual model; empty for an English one.
    languages: Vec<(String, u32)>,
}

impl Whisper {
    /// Reads a CTranslate2 Whisper folder.
    /// Reads a CTranslate2 Whisper folder (`model.bin`) or a Hugging Face one
    /// (`model.safetensors`).
    pub fn load(folder: &Path) -> Result<Self> {
        let hugging_face = !folder.join(WEIGHTS_FILE).is_file();
        let model = match hugging_face {
            true => hugging_face::read(folder)?,
            false => Ct2Model::read(&folder.join(WEIGHTS_FILE))?,
        };
        if model.spec != "WhisperSpec" {
            return Err(ModelError::UnsupportedArchitecture(model.spec));
        }
        let mut config: Config = read_json(&folder.join("config.json"))?;
        // Hugging Face keeps decoding settings in `generation_config.json` too.
        let generation = folder.join("generation_config.json");
        if hugging_face && generation.is_file() {
            let generation: Config = read_json(&generation)?;
            config.merge(generation);
        }
        let tokenizer_path = folder.join("tokenizer.json");
        let tokenizer = tokenizers::Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| ModelError::Format(format!("{}: {e}", tokenizer_path.display())))?;
        let id = |name: &str| {
            tokenizer
                .token_to_id(name)
                .ok_or_else(|| ModelError::Format(format!("the tokenizer has no `{name}`")))
        };
        let no_timestamps = id("<|notimestamps|>")?;
        let special = SpecialTokens {
            end_of_text: id("<|endoftext|>")?,
            start_of_transcript: id("<|startoftranscript|>")?,
            start_of_previous: id("<|startofprev|>")?,
            transcribe: id("<|transcribe|>")?,
            translate: id("<|translate|>")?,
            no_timestamps,
            no_speech: id("<|nospeech|>").or_else(|_| id("<|nocaptions|>"))?,
            timestamp_begin: no_timestamps + 1,
        };
        let encoder = Encoder::load(&model)?;
        let decoder = TextDecoder::load(&model)?;
        // An English-only model's vocabulary ends before the first language token's place.
        let multilingual = decoder.vocabulary() >= 51_865;
        // Language tokens from the configuration, else (a Hugging Face folder without its
        // generation_config.json) the vocabulary's run of them after the start of transcript.
        let mut language_ids = config.language_ids();
        if language_ids.is_empty() {
            language_ids = (special.start_of_transcript + 1..special.translate).collect();
        }
        let languages = if multilingual {
            language_ids
                .into_iter()
                .filter_map(|id| {
                    let token = tokenizer.id_to_token(id)?;
                    let code = token.strip_prefix("<|")?.strip_suffix("|>")?.to_string();
                    Some((code, id))
                })
                .collect()
        } else {
            Vec::new()
        };
        let mut suppressed: HashSet<u32> = config.suppress_ids.into_iter().collect();
        suppressed.extend([
            special.transcribe,
            special.translate,
            special.start_of_transcript,
            special.start_of_previous,
            special.no_speech,
        ]);
        if let Ok(start_of_lm) = id("<|startoflm|>") {
            suppressed.insert(start_of_lm);
        }
        let mut suppressed: Vec<u32> = suppressed.into_iter().collect();
        suppressed.sort_unstable();
        Ok(Self {
            encoder,
            decoder,
            tokenizer,
            special,
            suppressed,
            suppressed_at_begin: config.suppress_ids_begin,
            languages,
        })
    }

    /// Whether the model knows other languages than English (and can translate).
    pub fn is_multilingual(&self) -> bool {
        !self.languages.is_empty()
    }

    /// The language codes the model accepts (empty for an English-only model).
    pub fn languages(&self) -> impl Iterator<Item = &str> {
        self.languages.iter().map(|(code, _)| code.as_str())
    }

    /// The most tokens (prompt and text) one 30 s window can hold.
    pub fn max_tokens(&self) -> usize {
        self.decoder.max_tokens()
    }

    pub fn parameter_count(&self) -> u64 {
        (self.encoder.parameter_count() + self.decoder.parameter_count()) as u64
    }
}

/// Reads CTranslate2 layers by their variable names.
struct Variables<'a>(&'a Ct2Model);

impl Variables<'_> {
    /// A linear layer; a missing bias (Whisper's key projections) is zeros.
    fn dense(&self, name: &str) -> Result<Dense> {
        if self.0.contains(&format!("{name}/weight_scale")) {
            return Err(ModelError::Format(format!(
                "`{name}` is quantized (int8 with scales); convert the model with \
                 --quantization float16 or float32"
            )));
        }
        let weight = self.0.get(&format!("{name}/weight"), 2)?;
        let (outputs, inputs) = (weight.dims[0], weight.dims[1]);
        let bias = match self.0.contains(&format!("{name}/bias")) {
            true => self.values(&format!("{name}/bias"), 1)?,
            false => vec![0.0; outputs],
        };
        if bias.len() != outputs {
            return Err(ModelError::Format(format!(
                "`{name}`: bias and weight disagree"
            )));
        }
        Ok(Dense::new(&weight.values, bias, inputs))
    }

    /// A convolution's weights `(outputs, inputs, width)` as a dense layer over the inputs'
    /// windows flattened input by input (`inputs × width` values a row).
    fn convolution(&self, name: &str) -> Result<Dense> {
        let weight = self.0.get(&format!("{name}/weight"), 3)?;
        let inputs = weight.dims[1] * weight.dims[2];
        let bias = self.values(&format!("{name}/bias"), 1)?;
        Ok(Dense::new(&weight.values, bias, inputs))
    }

    fn norm(&self, name: &str) -> Result<Norm> {
        Ok(Norm {
            weight: self.values(&format!("{name}/gamma"), 1)?,
            bias: self.values(&format!("{name}/beta"), 1)?,
            eps: 1e-5,
        })
    }

    fn values(&self, name: &str, rank: usize) -> Result<Vec<f32>> {
        Ok(self.0.get(name, rank)?.values.clone())
    }

    /// How many `{prefix}/layer_N` layers there are.
    fn layer_count(&self, prefix: &str) -> usize {
        (0..)
            .take_while(|i| {
                self.0
                    .contains(&format!("{prefix}/layer_{i}/ffn/layer_norm/gamma"))
            })
            .count()
    }

    fn heads(&self, prefix: &str, width: usize) -> Result<usize> {
        let heads = self.0.scalar(&format!("{prefix}/num_heads"))?;
        match usize::try_from(heads) {
            Ok(heads) if heads > 0 && width.is_multiple_of(heads) => Ok(heads),
            _ => Err(ModelError::Format(format!(
                "{prefix}: {heads} heads for width {width}"
            ))),
        }
    }
}
