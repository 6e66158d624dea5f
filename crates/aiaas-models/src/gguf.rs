//! Reading GGUF files: metadata lookups and the summary a model manifest records.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};

use crate::{ModelError, Result};

/// An opened GGUF file: its parsed header and the path to read tensors from.
pub struct GgufFile {
    pub path: PathBuf,
    pub content: Content,
}

/// What a manifest and the model list need to know about a GGUF model.
#[derive(Debug, Clone)]
pub struct GgufSummary {
    pub architecture: String,
    pub name: Option<String>,
    pub context_length: usize,
    pub parameters: u64,
    /// The dominant weight type of the file, e.g. `Q4_1`.
    pub quantization: String,
    pub chat_template: Option<String>,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|source| ModelError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let content = Content::read(&mut BufReader::new(file))
            .map_err(|e| ModelError::Format(format!("{}: {e}", path.display())))?;
        Ok(Self {
            path: path.to_path_buf(),
            content,
        })
    }

    pub fn architecture(&self) -> Result<String> {
        self.string("general.architecture")
    }

    pub fn value(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    pub fn string(&self, key: &str) -> Result<String> {
        match self.value(key) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(ModelError::Format(format!("`{key}` is not a string"))),
            None => Err(ModelError::Format(format!("missing `{key}`"))),
        }
    }

    /// An integer of any width, as GGUF writers differ in which they use.
    pub fn usize(&self, key: &str) -> Result<usize> {
        let value = self
            .value(key)
            .ok_or_else(|| ModelError::Format(format!("missing `{key}`")))?;
        let n = match value {
            Value::U8(v) => u64::from(*v),
            Value::U16(v) => u64::from(*v),
            Value::U32(v) => u64::from(*v),
            Value::U64(v) => *v,
            Value::I32(v) if *v >= 0 => *v as u64,
            Value::I64(v) if *v >= 0 => *v as u64,
            _ => {
                return Err(ModelError::Format(format!(
                    "`{key}` is not an unsigned integer"
                )))
            }
        };
        usize::try_from(n).map_err(|_| ModelError::Format(format!("`{key}` is too large")))
    }

    pub fn f32(&self, key: &str) -> Result<f32> {
        match self.value(key) {
            Some(Value::F32(v)) => Ok(*v),
            Some(Value::F64(v)) => Ok(*v as f32),
            Some(_) => Err(ModelError::Format(format!("`{key}` is not a float"))),
            None => Err(ModelError::Format(format!("missing `{key}`"))),
        }
    }

    pub fn bool(&self, key: &str) -> Option<bool> {
        match self.value(key) {
            Some(Value::Bool(b)) => Some(*b),
            _ => None,
        }
    }

    pub fn array(&self, key: &str) -> Result<&Vec<Value>> {
        match self.value(key) {
            Some(Value::Array(items)) => Ok(items),
            Some(_) => Err(ModelError::Format(format!("`{key}` is not an array"))),
            None => Err(ModelError::Format(format!("missing `{key}`"))),
        }
    }

    /// A key under the architecture's own namespace, e.g. `llama.block_count`.
    pub fn arch_key(&self, suffix: &str) -> Result<String> {
        Ok(format!("{}.{suffix}", self.architecture()?))
    }

    pub fn summary(&self) -> Result<GgufSummary> {
        let architecture = self.architecture()?;
        let context_length = self.usize(&self.arch_key("context_length")?)?;
        let mut parameters = 0u64;
        let mut bytes_by_type: Vec<(String, u64)> = Vec::new();
        for info in self.content.tensor_infos.values() {
            let count = info.shape.elem_count() as u64;
            parameters += count;
            let name = format!("{:?}", info.ggml_dtype).to_uppercase();
            match bytes_by_type.iter_mut().find(|(n, _)| *n == name) {
                Some((_, total)) => *total += count,
                None => bytes_by_type.push((name, count)),
            }
        }
        let quantization = bytes_by_type
            .into_iter()
            .max_by_key(|(_, count)| *count)
            .map(|(name, _)| name)
            .unwrap_or_default();
        Ok(GgufSummary {
            name: self.string("general.name").ok(),
            chat_template: self.string("tokenizer.chat_template").ok(),
            architecture,
            context_length,
            parameters,
            quantization,
        })
    }
}
