//! Model architectures and weight formats.
//!
//! This crate turns weight files into something that maps inputs to outputs. It knows nothing
//! of queues, HTTP or keys: the engine drives it one forward pass at a time.

mod attention;
pub mod audio;
pub mod bert;
mod bf16_matmul;
pub mod ctranslate2;
mod dense;
mod fast_math;
pub mod g2p;
pub mod gguf;
mod int8_matmul;
mod linear;
pub mod npz;
pub mod sentence;
mod team;
pub mod tokenizer;
pub mod torch_legacy;
pub mod transformer;
pub mod vision;
pub mod whisper;

pub use bert::{BertConfig, BertEncoder, Pooling};
pub use gguf::{GgufFile, GgufSummary};
pub use sentence::{SentenceEncoder, SentenceSettings};
pub use tokenizer::{TokenDecoder, Tokenizer};
pub use transformer::{BatchEntry, Decoder, DecoderConfig, KvCache};
pub use whisper::Whisper;

/// Errors raised while reading weights or running a forward pass.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("not a usable model file: {0}")]
    Format(String),
    #[error("unsupported architecture `{0}` (supported: llama, qwen2, gemma3, bert)")]
    UnsupportedArchitecture(String),
    #[error("tensor computation failed: {0}")]
    Tensor(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, ModelError>;
