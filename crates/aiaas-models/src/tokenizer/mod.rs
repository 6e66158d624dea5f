//! Tokenizers read from GGUF metadata (`tokenizer.ggml.*`), matching llama.cpp's tokenization.
//!
//! Two vocabularies are in use: GPT-2-style byte-level BPE (`gpt2`, e.g. SmolLM2 and Qwen2) and
//! SentencePiece with scores and byte fallback (`llama`, e.g. Gemma 3). Special tokens are split
//! out of the text first, as llama.cpp does: user-defined tokens always, control tokens only when
//! the caller asks for it (chat templates write them as text).

mod bpe;
mod decode;
mod spm;

use std::collections::HashMap;

use aho_corasick::{AhoCorasick, MatchKind};
use candle_core::quantized::gguf_file::Value;

pub use decode::TokenDecoder;

use crate::{GgufFile, ModelError, Result};

/// The role a vocabulary entry plays (GGUF `tokenizer.ggml.token_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl TokenType {
    fn from_gguf(code: i32) -> Self {
        match code {
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => Self::Normal,
        }
    }
}

enum Model {
    Bpe(Box<bpe::Bpe>),
    Spm(spm::Spm),
}

pub struct Tokenizer {
    tokens: Vec<String>,
    types: Vec<TokenType>,
    model: Model,
    /// Tokens matched literally in the text before the model sees it.
    specials: Specials,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// Whether a BOS token is prepended to a prompt (`tokenizer.ggml.add_bos_token`).
    pub add_bos: bool,
    /// Tokens that end a generation (EOS, end-of-turn markers).
    pub end_of_generation: Vec<u32>,
}

/// Texts of control tokens that end a turn in the chat formats in use; llama.cpp treats the same
/// ones as end-of-generation even when the GGUF names only one EOS id.
const END_OF_TURN_TEXTS: &[&str] = &[
    "<|im_end|>",
    "<|endoftext|>",
    "<end_of_turn>",
    "<|eot_id|>",
    "<|end|>",
    "</s>",
];

impl Tokenizer {
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let tokens: Vec<String> = gguf
            .array("tokenizer.ggml.tokens")?
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                _ => Err(ModelError::Format("token list holds a non-string".into())),
            })
            .collect::<Result<_>>()?;
        let types: Vec<TokenType> = match gguf.array("tokenizer.ggml.token_type") {
            Ok(values) => values
                .iter()
                .map(|v| TokenType::from_gguf(v.to_i32().unwrap_or(1)))
                .collect(),
            Err(_) => vec![TokenType::Normal; tokens.len()],
        };
        if types.len() != tokens.len() {
            return Err(ModelError::Format(
                "token types and tokens differ in length".into(),
            ));
        }
        let index: HashMap<String, u32> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();

        let kind = gguf.string("tokenizer.ggml.model")?;
        let model = match kind.as_str() {
            "gpt2" => {
                let merges: Vec<String> = gguf
                    .array("tokenizer.ggml.merges")?
                    .iter()
                    .filter_map(|v| v.to_string().ok().cloned())
                    .collect();
                let pre = gguf.string("tokenizer.ggml.pre").unwrap_or_default();
                Model::Bpe(Box::new(bpe::Bpe::new(&index, &merges, &pre)?))
            }
            "llama" => {
                let scores: Vec<f32> = gguf
                    .array("tokenizer.ggml.scores")?
                    .iter()
                    .map(|v| v.to_f32().unwrap_or(0.0))
                    .collect();
                Model::Spm(spm::Spm::new(index, scores))
            }
            other => {
                return Err(ModelError::Format(format!(
                    "unsupported tokenizer model `{other}` (supported: gpt2, llama)"
                )))
            }
        };

        let specials = Specials::new(&tokens, &types)?;

        let id = |key: &str| gguf.usize(key).ok().map(|v| v as u32);
        let bos = id("tokenizer.ggml.bos_token_id");
        let eos = id("tokenizer.ggml.eos_token_id");
        let mut end_of_generation: Vec<u32> = [eos, id("tokenizer.ggml.eot_token_id")]
            .into_iter()
            .flatten()
            .collect();
        for (i, (text, ty)) in tokens.iter().zip(&types).enumerate() {
            if *ty == TokenType::Control && END_OF_TURN_TEXTS.contains(&text.as_str()) {
                end_of_generation.push(i as u32);
            }
        }
        end_of_generation.sort_unstable();
        end_of_generation.dedup();

        let add_bos = gguf
            .bool("tokenizer.ggml.add_bos_token")
            .unwrap_or(matches!(model, Model::Spm(_)));
        Ok(Self {
            tokens,
            types,
            model,
            specials,
            bos,
            eos,
            add_bos,
            end_of_generation,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The stored text of a token (byte-level or `▁`-encoded), for display in errors and tests.
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// Tokenizes `text`. `parse_special` lets control tokens written as text (e.g. `<|im_start|>`)
    /// become their ids, as a rendered chat template needs; `add_bos` prepends BOS when the
    /// model's vocabulary asks for it.
    pub fn encode(&self, text: &str, add_bos: bool, parse_special: bool) -> Vec<u32> {
        let mut ids = Vec::new();
        if add_bos && self.add_bos {
            ids.extend(self.bos);
        }
        for fragment in self.split_specials(text, parse_special) {
            match fragment {
                Fragment::Token(id) => ids.push(id),
                Fragment::Text(text) => match &self.model {
                    Model::Bpe(bpe) => bpe.encode(text, &mut ids),
                    Model::Spm(spm) => spm.encode(text, &mut ids),
                },
            }
        }
        ids
    }

    fn split_specials<'a>(&self, text: &'a str, parse_special: bool) -> Vec<Fragment<'a>> {
        let (matcher, ids) = if parse_special {
            (&self.specials.all, &self.specials.all_ids)
        } else {
            (&self.specials.user_defined, &self.specials.user_defined_ids)
        };
        let mut fragments = Vec::new();
        let mut last = 0;
        for found in matcher.find_iter(text) {
            if found.start() > last {
                fragments.push(Fragment::Text(&text[last..found.start()]));
            }
            fragments.push(Fragment::Token(ids[found.pattern().as_usize()]));
            last = found.end();
        }
        if last < text.len() {
            fragments.push(Fragment::Text(&text[last..]));
        }
        fragments
    }

    /// The bytes a token stands for in output text; control tokens produce none.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        let Some(text) = self.tokens.get(id as usize) else {
            return Vec::new();
        };
        match self.types[id as usize] {
            TokenType::Control | TokenType::Unknown | TokenType::Unused => Vec::new(),
            TokenType::UserDefined => text.as_bytes().to_vec(),
            TokenType::Byte => spm::byte_token_value(text).map_or_else(Vec::new, |b| vec![b]),
            TokenType::Normal => match &self.model {
                Model::Bpe(_) => bpe::byte_level_decode(text),
                Model::Spm(_) => text.replace('\u{2581}', " ").into_bytes(),
            },
        }
    }

    /// Decodes a whole sequence (invalid UTF-8 replaced).
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids.iter().flat_map(|&id| self.token_bytes(id)).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    pub fn is_end_of_generation(&self, id: u32) -> bool {
        self.end_of_generation.binary_search(&id).is_ok()
    }
}

/// Special tokens found in one pass over the text (leftmost, longest first), whatever their
/// number: Gemma's vocabulary has over 6,000, so a scan per token would make long prompts slow.
struct Specials {
    /// Control and user-defined tokens (a rendered chat template).
    all: AhoCorasick,
    all_ids: Vec<u32>,
    /// User-defined tokens only: llama.cpp matches these even in plain text.
    user_defined: AhoCorasick,
    user_defined_ids: Vec<u32>,
}

impl Specials {
    fn new(tokens: &[String], types: &[TokenType]) -> Result<Self> {
        let build = |wanted: &dyn Fn(TokenType) -> bool| -> Result<(AhoCorasick, Vec<u32>)> {
            let (texts, ids): (Vec<&str>, Vec<u32>) = tokens
                .iter()
                .zip(types)
                .enumerate()
                .filter(|(_, (text, ty))| wanted(**ty) && !text.is_empty())
                .map(|(id, (text, _))| (text.as_str(), id as u32))
                .unzip();
            let matcher = AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(&texts)
                .map_err(|e| ModelError::Format(format!("special tokens: {e}")))?;
            Ok((matcher, ids))
        };
        let (all, all_ids) =
            build(&|ty| matches!(ty, TokenType::Control | TokenType::UserDefined))?;
        let (user_defined, user_defined_ids) = build(&|ty| ty == TokenType::UserDefined)?;
        Ok(Self {
            all,
            all_ids,
            user_defined,
            user_defined_ids,
        })
    }
}

enum Fragment<'a> {
    Text(&'a str),
    Token(u32),
}
