//! CTranslate2's `model.bin` (format version 6), the weights of faster-whisper's model folders.
//!
//! The file is a header (`u32 version`, the spec's name, `u32 revision`), then `u32 count`
//! variables, each a name, `u8 rank`, `u32` dimensions, `u8 dtype`, `u32` byte count and the raw
//! little-endian values; then an alias table (`u32 count`, pairs of names) for tensors stored
//! once and used twice, such as Whisper's output projection tied to its token embedding.
//! Strings are a `u16` length and that many bytes, the last a NUL.

use std::collections::HashMap;
use std::path::Path;

use half::f16;

use crate::{ModelError, Result};

/// The format versions this reader knows.
const SUPPORTED_VERSIONS: std::ops::RangeInclusive<u32> = 5..=6;

/// One stored tensor, widened to f32 whatever its stored type.
#[derive(Debug, Clone)]
pub struct Variable {
    pub dims: Vec<usize>,
    pub values: Vec<f32>,
}

/// A CTranslate2 model's variables by name (aliases resolved).
#[derive(Debug)]
pub struct Ct2Model {
    /// The model specification the file was written for, e.g. `WhisperSpec`.
    pub spec: String,
    pub revision: u32,
    variables: HashMap<String, Variable>,
}

impl Ct2Model {
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&bytes)
            .map_err(|message| ModelError::Format(format!("{}: {message}", path.display())))
    }

    fn parse(bytes: &[u8]) -> std::result::Result<Self, String> {
        let mut reader = Reader { bytes, at: 0 };
        let version = reader.u32()?;
        if !SUPPORTED_VERSIONS.contains(&version) {
            return Err(format!(
                "CTranslate2 format version {version} (supported: {SUPPORTED_VERSIONS:?})"
            ));
        }
        let spec = reader.string()?;
        let revision = reader.u32()?;
        let count = reader.u32()?;
        let mut variables = HashMap::new();
        for _ in 0..count {
            let name = reader.string()?;
            let variable = reader
                .variable()
                .map_err(|e| format!("variable `{name}`: {e}"))?;
            variables.insert(name, variable);
        }
        // Files written before aliases existed end here.
        let aliases = if reader.at == bytes.len() {
            0
        } else {
            reader.u32()?
        };
        for _ in 0..aliases {
            let alias = reader.string()?;
            let target = reader.string()?;
            let variable = variables
                .get(&target)
                .ok_or_else(|| format!("alias `{alias}` names a missing variable `{target}`"))?
                .clone();
            variables.insert(alias, variable);
        }
        Ok(Self {
            spec,
            revision,
            variables,
        })
    }

    /// A model of variables read from elsewhere (another format, renamed to CTranslate2's names).
    pub fn from_variables(spec: &str, variables: HashMap<String, Variable>) -> Self {
        Self {
            spec: spec.to_string(),
            revision: 0,
            variables,
        }
    }

    /// The variable `name`, which must have `rank` dimensions.
    pub fn get(&self, name: &str, rank: usize) -> Result<&Variable> {
        let variable = self
            .variables
            .get(name)
            .ok_or_else(|| ModelError::Format(format!("missing CTranslate2 variable `{name}`")))?;
        if variable.dims.len() != rank {
            return Err(ModelError::Format(format!(
                "CTranslate2 variable `{name}` has shape {:?}, expected {rank} dimensions",
                variable.dims
            )));
        }
        Ok(variable)
    }

    /// A scalar variable (a head count, a flag) as an integer.
    pub fn scalar(&self, name: &str) -> Result<i64> {
        let variable = self.get(name, 0)?;
        Ok(variable.values[0] as i64)
    }

    /// Every variable, by name.
    pub fn variables(&self) -> impl Iterator<Item = (&str, &Variable)> {
        self.variables.iter().map(|(name, v)| (name.as_str(), v))
    }

    /// Whether a variable of that name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.variables.contains_key(name)
    }
}

/// A cursor over the file's bytes; every read checks that the bytes are there.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, len: usize) -> std::result::Result<&[u8], String> {
        let end = self
            .at
            .checked_add(len)
            .filter(|&end| end <= self.bytes.len());
        let end = end.ok_or_else(|| format!("truncated at byte {}", self.at))?;
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }

    fn u8(&mut self) -> std::result::Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> std::result::Result<u16, String> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }

    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }

    fn string(&mut self) -> std::result::Result<String, String> {
        let len = self.u16()? as usize;
        let bytes = self.take(len)?;
        let text = bytes.strip_suffix(&[0]).unwrap_or(bytes);
        String::from_utf8(text.to_vec()).map_err(|_| "a name that is not UTF-8".to_string())
    }

    fn variable(&mut self) -> std::result::Result<Variable, String> {
        let rank = self.u8()? as usize;
        let dims = (0..rank)
            .map(|_| Ok(self.u32()? as usize))
            .collect::<std::result::Result<Vec<_>, String>>()?;
        let dtype = self.u8()?;
        let width = match dtype {
            1 => 1,
            2 | 4 => 2,
            0 | 3 => 4,
            other => return Err(format!("unsupported value type {other}")),
        };
        let len = self.u32()? as usize;
        let count: usize = dims.iter().product();
        if count.checked_mul(width) != Some(len) {
            return Err(format!("{len} bytes for shape {dims:?} of type {dtype}"));
        }
        let raw = self.take(len)?;
        let values = match dtype {
            0 => raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            1 => raw.iter().map(|&b| b as i8 as f32).collect(),
            2 => raw
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes(b.try_into().unwrap()) as f32)
                .collect(),
            3 => raw
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes(b.try_into().unwrap()) as f32)
                .collect(),
            _ => raw
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes(b.try_into().unwrap()).to_f32())
                .collect(),
        };
        Ok(Variable { dims, values })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file with one f16 matrix, one i16 scalar and one alias, written as CTranslate2 does.
    fn sample() -> Vec<u8> {
        fn string(out: &mut Vec<u8>, s: &str) {
            out.extend(((s.len() + 1) as u16).to_le_bytes());
            out.extend(s.as_bytes());
            out.push(0);
        }
        let mut out = Vec::new();
        out.extend(6u32.to_le_bytes());
        string(&mut out, "WhisperSpec");
        out.extend(3u32.to_le_bytes());
        out.extend(2u32.to_le_bytes());
        string(&mut out, "embeddings/weight");
        out.push(2);
        out.extend(2u32.to_le_bytes());
        out.extend(3u32.to_le_bytes());
        out.push(4);
        out.extend(12u32.to_le_bytes());
        for v in [1.0f32, -2.0, 0.5, 3.0, 0.0, -0.25] {
            out.extend(f16::from_f32(v).to_le_bytes());
        }
        string(&mut out, "num_heads");
        out.push(0);
        out.push(2);
        out.extend(2u32.to_le_bytes());
        out.extend(6i16.to_le_bytes());
        out.extend(1u32.to_le_bytes());
        string(&mut out, "projection/weight");
        string(&mut out, "embeddings/weight");
        out
    }

    #[test]
    fn reads_variables_scalars_and_aliases() {
        let model = Ct2Model::parse(&sample()).unwrap();
        assert_eq!((model.spec.as_str(), model.revision), ("WhisperSpec", 3));
        let embeddings = model.get("embeddings/weight", 2).unwrap();
        assert_eq!(embeddings.dims, [2, 3]);
        assert_eq!(embeddings.values, [1.0, -2.0, 0.5, 3.0, 0.0, -0.25]);
        assert_eq!(model.scalar("num_heads").unwrap(), 6);
        assert_eq!(
            model.get("projection/weight", 2).unwrap().values,
            embeddings.values
        );
        assert!(model.get("embeddings/weight", 1).is_err());
    }

    #[test]
    fn a_truncated_or_foreign_file_is_an_error_not_a_panic() {
        let bytes = sample();
        for len in 0..bytes.len() - 1 {
            // Cut before the alias table's end: either an error or (cut exactly after the
            // variables) a model without the alias.
            if let Ok(model) = Ct2Model::parse(&bytes[..len]) {
                assert!(!model.contains("projection/weight"));
            }
        }
        let mut other = bytes.clone();
        other[0] = 9;
        let error = Ct2Model::parse(&other).unwrap_err();
        assert!(error.contains("version 9"), "{error}");
    }
}
