//! NumPy's `.npz` archives: a zip of `.npy` arrays, as `numpy.savez` writes them.
//!
//! An `.npy` file is the magic `\x93NUMPY`, a major and minor version byte, the header's length
//! (`u16` little-endian in version 1, `u32` in versions 2 and 3), the header itself (a Python
//! dict literal such as `{'descr': '<f4', 'fortran_order': False, 'shape': (29, 256), }`) and
//! the raw values in C order. Reference: <https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html>.
//!
//! Files are untrusted: every length is checked against the bytes really there before anything
//! is allocated, and every problem is a [`ModelError::Format`] naming the entry.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek};
use std::path::Path;

use half::f16;

use crate::{ModelError, Result};

const MAGIC: &[u8] = b"\x93NUMPY";

/// numpy's own bound on a header's length (`max_header_size`): real headers are about a hundred
/// bytes, and the bound keeps a crafted one from being parsed (or quoted in an error) at length.
const MAX_HEADER_BYTES: usize = 10_000;

/// The most uncompressed bytes an archive may declare, all entries together. Far above any
/// model read from `.npz`, it keeps a crafted archive (a small deflated body declaring gigabytes)
/// from exhausting memory.
const MAX_ARCHIVE_BYTES: u64 = 4 << 30;

/// One array, converted to f32 whatever its stored type, in C (row-major) order.
#[derive(Debug)]
struct Array {
    shape: Vec<usize>,
    values: Vec<f32>,
}

/// An `.npz` archive's arrays by name (`enc_emb` for the entry `enc_emb.npy`, as `numpy.load`
/// names them).
#[derive(Debug)]
pub struct Npz {
    arrays: HashMap<String, Array>,
}

impl Npz {
    pub fn read(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|source| ModelError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_reader(file)
            .map_err(|message| ModelError::Format(format!("{}: {message}", path.display())))
    }

    fn from_reader(reader: impl Read + Seek) -> std::result::Result<Self, String> {
        let mut archive =
            zip::ZipArchive::new(reader).map_err(|e| format!("not a zip archive: {e}"))?;
        let mut arrays = HashMap::new();
        let mut declared_total = 0u64;
        for index in 0..archive.len() {
            let entry = archive
                .by_index(index)
                .map_err(|e| format!("zip entry {index}: {e}"))?;
            let entry_name = entry.name().to_string();
            let name = entry_name
                .strip_suffix(".npy")
                .ok_or_else(|| format!("entry `{entry_name}` is not an .npy array"))?
                .to_string();
            let declared = entry.size();
            declared_total = declared_total.saturating_add(declared);
            if declared_total > MAX_ARCHIVE_BYTES {
                return Err(format!(
                    "the entries declare more than {MAX_ARCHIVE_BYTES} bytes in all"
                ));
            }
            let mut bytes = Vec::new();
            // `take` bounds the read by the declared size whatever the body inflates to; the
            // extra byte catches a body longer than declared.
            entry
                .take(declared.saturating_add(1))
                .read_to_end(&mut bytes)
                .map_err(|e| format!("entry `{entry_name}`: {e}"))?;
            if bytes.len() as u64 != declared {
                return Err(format!(
                    "entry `{entry_name}` holds {} bytes, the archive declares {declared}",
                    bytes.len()
                ));
            }
            let array = parse_npy(&bytes).map_err(|e| format!("entry `{entry_name}`: {e}"))?;
            if arrays.insert(name, array).is_some() {
                return Err(format!("entry `{entry_name}` appears twice"));
            }
        }
        Ok(Self { arrays })
    }

    /// The array `name`, which must have exactly `shape`: its values, in C order.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<&[f32]> {
        let array = self
            .arrays
            .get(name)
            .ok_or_else(|| ModelError::Format(format!("missing array `{name}`")))?;
        if array.shape != shape {
            return Err(ModelError::Format(format!(
                "array `{name}` has shape {:?}, expected {shape:?}",
                array.shape
            )));
        }
        Ok(&array.values)
    }
}

/// One `.npy` file: header checked, values converted to f32.
fn parse_npy(bytes: &[u8]) -> std::result::Result<Array, String> {
    let rest = bytes
        .strip_prefix(MAGIC)
        .ok_or("not an .npy array (no \\x93NUMPY magic)")?;
    let (version, rest) = split(rest, 2)?;
    let (header_len, rest) = match version[0] {
        1 => {
            let (len, rest) = split(rest, 2)?;
            (usize::from(u16::from_le_bytes([len[0], len[1]])), rest)
        }
        2 | 3 => {
            let (len, rest) = split(rest, 4)?;
            let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]);
            // A length that does not fit a usize is refused as too long below.
            (usize::try_from(len).unwrap_or(usize::MAX), rest)
        }
        other => return Err(format!(".npy format version {other} (supported: 1 to 3)")),
    };
    if header_len > MAX_HEADER_BYTES {
        return Err(format!(
            "a header of {header_len} bytes (at most {MAX_HEADER_BYTES})"
        ));
    }
    let (header, data) = split(rest, header_len)?;
    // Version 3 only widens the header's encoding to UTF-8; the keys and values are ASCII.
    let header = std::str::from_utf8(header).map_err(|_| "a header that is not UTF-8")?;
    let header = Header::parse(header).map_err(|e| format!("header `{}`: {e}", header.trim()))?;
    if header.fortran_order {
        return Err("Fortran-ordered arrays are not supported".into());
    }
    let dtype = DType::parse(&header.descr)?;
    let count = (header.shape.iter())
        .try_fold(1usize, |count, &dim| count.checked_mul(dim))
        .ok_or_else(|| format!("shape {:?} overflows", header.shape))?;
    let expected = count
        .checked_mul(dtype.width)
        .ok_or_else(|| format!("shape {:?} overflows", header.shape))?;
    if data.len() != expected {
        return Err(format!(
            "{} data bytes for shape {:?} of type {}, expected {expected}",
            data.len(),
            header.shape,
            header.descr
        ));
    }
    Ok(Array {
        shape: header.shape,
        values: dtype.convert(data),
    })
}

/// The first `len` bytes and the rest, or an error if there are fewer.
fn split(bytes: &[u8], len: usize) -> std::result::Result<(&[u8], &[u8]), String> {
    if bytes.len() < len {
        return Err(format!(
            "truncated: {len} bytes needed, {} left",
            bytes.len()
        ));
    }
    Ok(bytes.split_at(len))
}

/// An element type: `descr` such as `<f4` is the byte order, the kind and the width in bytes.
struct DType {
    width: usize,
    big_endian: bool,
    /// Reads one element from its bytes, little-endian, padded with zeros to 8.
    read: fn([u8; 8]) -> f32,
}

impl DType {
    fn parse(descr: &str) -> std::result::Result<Self, String> {
        let unsupported = || format!("unsupported element type `{descr}`");
        let mut chars = descr.chars();
        let big_endian = match chars.next() {
            Some('<' | '|') => false,
            Some('>') => true,
            _ => return Err(unsupported()),
        };
        let kind = chars.next().ok_or_else(unsupported)?;
        let width = chars.as_str();
        let read: fn([u8; 8]) -> f32 = match (kind, width) {
            ('f', "2") => |b| f16::from_le_bytes([b[0], b[1]]).to_f32(),
            ('f', "4") => |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            ('f', "8") => |b| f64::from_le_bytes(b) as f32,
            ('i', "1") => |b| f32::from(b[0] as i8),
            ('i', "2") => |b| f32::from(i16::from_le_bytes([b[0], b[1]])),
            ('i', "4") => |b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32,
            ('i', "8") => |b| i64::from_le_bytes(b) as f32,
            ('u', "1") => |b| f32::from(b[0]),
            ('u', "2") => |b| f32::from(u16::from_le_bytes([b[0], b[1]])),
            ('u', "4") => |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32,
            ('u', "8") => |b| u64::from_le_bytes(b) as f32,
            _ => return Err(unsupported()),
        };
        Ok(Self {
            width: width.parse().map_err(|_| unsupported())?,
            big_endian,
            read,
        })
    }

    /// The values of `data`, whose length is a multiple of the width.
    fn convert(&self, data: &[u8]) -> Vec<f32> {
        (data.chunks_exact(self.width))
            .map(|element| {
                let mut bytes = [0u8; 8];
                bytes[..self.width].copy_from_slice(element);
                if self.big_endian {
                    bytes[..self.width].reverse();
                }
                (self.read)(bytes)
            })
            .collect()
    }
}

/// The three keys of an `.npy` header, which `numpy.load` also requires and allows alone.
struct Header {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
}

/// A value of the header's dict: the only Python literals numpy writes there.
enum Literal {
    Str(String),
    Bool(bool),
    Tuple(Vec<usize>),
}

impl Header {
    fn parse(text: &str) -> std::result::Result<Self, String> {
        let mut parser = Parser { text, at: 0 };
        let (mut descr, mut fortran_order, mut shape) = (None, None, None);
        parser.expect('{')?;
        while !parser.eat('}') {
            let key = parser.string()?;
            if !["descr", "fortran_order", "shape"].contains(&key.as_str()) {
                return Err(format!("unexpected key `{key}`"));
            }
            parser.expect(':')?;
            let slot_filled = match (key.as_str(), parser.literal()?) {
                ("descr", Literal::Str(value)) => descr.replace(value).is_some(),
                ("fortran_order", Literal::Bool(value)) => fortran_order.replace(value).is_some(),
                ("shape", Literal::Tuple(value)) => shape.replace(value).is_some(),
                _ => return Err(format!("`{key}` has an unexpected type")),
            };
            if slot_filled {
                return Err(format!("`{key}` appears twice"));
            }
            if !parser.eat(',') {
                parser.expect('}')?;
                break;
            }
        }
        if !parser.rest().trim().is_empty() {
            return Err("text after the dict".into());
        }
        Ok(Self {
            descr: descr.ok_or("no `descr`")?,
            fortran_order: fortran_order.ok_or("no `fortran_order`")?,
            shape: shape.ok_or("no `shape`")?,
        })
    }
}

/// A cursor over the header text; whitespace between tokens is skipped.
struct Parser<'a> {
    text: &'a str,
    at: usize,
}

impl Parser<'_> {
    fn rest(&self) -> &str {
        &self.text[self.at..]
    }

    /// Skips whitespace, then consumes `c` if it comes next.
    fn eat(&mut self, c: char) -> bool {
        self.at = self.text.len() - self.rest().trim_start().len();
        let found = self.rest().starts_with(c);
        if found {
            self.at += c.len_utf8();
        }
        found
    }

    fn expect(&mut self, c: char) -> std::result::Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!("expected `{c}` at byte {}", self.at))
        }
    }

    /// A quoted string without escapes (numpy's keys and type names have none).
    fn string(&mut self) -> std::result::Result<String, String> {
        let quote = if self.eat('\'') {
            '\''
        } else {
            self.expect('"')?;
            '"'
        };
        let len = (self.rest().find(quote)).ok_or("an unterminated string")?;
        let value = self.rest()[..len].to_string();
        self.at += len + 1;
        Ok(value)
    }

    fn literal(&mut self) -> std::result::Result<Literal, String> {
        if self.eat('(') {
            return self.tuple().map(Literal::Tuple);
        }
        for (word, value) in [("True", true), ("False", false)] {
            if self.rest().starts_with(word) {
                self.at += word.len();
                return Ok(Literal::Bool(value));
            }
        }
        self.string().map(Literal::Str)
    }

    /// The rest of a tuple of integers after its `(`: `()`, `(5,)`, `(29, 256)`. Python 2's
    /// numpy wrote long integers with an `L` suffix (`(29L, 256L)`).
    fn tuple(&mut self) -> std::result::Result<Vec<usize>, String> {
        let mut values = Vec::new();
        while !self.eat(')') {
            let rest = self.rest();
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            let value = rest[..digits]
                .parse()
                .map_err(|_| format!("expected a dimension at byte {}", self.at))?;
            values.push(value);
            self.at += digits;
            self.eat('L');
            if !self.eat(',') {
                self.expect(')')?;
                break;
            }
        }
        Ok(values)
    }
}

/// Hand-built `.npy` files and `.npz` archives, for this module's tests and the models'.
#[cfg(test)]
pub(crate) mod fixtures {
    use std::io::{Cursor, Write};

    use zip::write::SimpleFileOptions;
    use zip::CompressionMethod;

    use super::MAGIC;

    /// An `.npy` file of format version `major` with this header text and data.
    pub fn npy(major: u8, header: &str, data: &[u8]) -> Vec<u8> {
        let mut bytes = MAGIC.to_vec();
        bytes.extend([major, 0]);
        if major == 1 {
            bytes.extend(u16::try_from(header.len()).unwrap().to_le_bytes());
        } else {
            bytes.extend(u32::try_from(header.len()).unwrap().to_le_bytes());
        }
        bytes.extend(header.as_bytes());
        bytes.extend(data);
        bytes
    }

    pub fn f32_bytes(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    /// A header as numpy writes it: the dict, then spaces and a newline.
    pub fn header(descr: &str, shape: &str) -> String {
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}        \n")
    }

    /// A zip of these entries: name, bytes, compression.
    pub fn archive(entries: &[(&str, Vec<u8>, CompressionMethod)]) -> Cursor<Vec<u8>> {
        let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (name, bytes, method) in entries {
            let options = SimpleFileOptions::default().compression_method(*method);
            writer.start_file(*name, options).unwrap();
            writer.write_all(bytes).unwrap();
        }
        writer.finish().unwrap()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use zip::CompressionMethod;

    use super::fixtures::{archive, f32_bytes, header, npy};
    use super::*;

    fn parse_err(bytes: &[u8]) -> String {
        parse_npy(bytes).unwrap_err()
    }

    #[test]
    fn reads_version_1_float32_in_c_order() {
        let values = [1.0, -2.5, 3.0, 0.0, 1e-3, 7.0];
        let array = parse_npy(&npy(1, &header("<f4", "(2, 3)"), &f32_bytes(&values))).unwrap();
        assert_eq!(array.shape, [2, 3]);
        assert_eq!(array.values, values);
    }

    #[test]
    fn reads_versions_2_and_3() {
        let data: Vec<u8> = [0.5f64, -4.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        for major in [2, 3] {
            let array = parse_npy(&npy(major, &header("<f8", "(2,)"), &data)).unwrap();
            assert_eq!(array.values, [0.5, -4.0]);
        }
    }

    #[test]
    fn converts_every_supported_type_to_f32() {
        let half: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_le_bytes())
            .collect();
        let cases: [(&str, Vec<u8>, [f32; 2]); 5] = [
            ("<f2", half, [1.5, -2.0]),
            (
                "<i8",
                [-3i64, 9].iter().flat_map(|v| v.to_le_bytes()).collect(),
                [-3.0, 9.0],
            ),
            ("|i1", vec![0xff, 5], [-1.0, 5.0]),
            ("|u1", vec![0xff, 5], [255.0, 5.0]),
            (
                ">f4",
                [6.25f32, -1.0]
                    .iter()
                    .flat_map(|v| v.to_be_bytes())
                    .collect(),
                [6.25, -1.0],
            ),
        ];
        for (descr, data, expected) in cases {
            let array = parse_npy(&npy(1, &header(descr, "(2,)"), &data)).unwrap();
            assert_eq!(array.values, expected, "{descr}");
        }
    }

    #[test]
    fn reads_scalars_and_python_2_headers() {
        let scalar = parse_npy(&npy(1, &header("<f4", "()"), &f32_bytes(&[4.0]))).unwrap();
        assert_eq!((scalar.shape.len(), scalar.values), (0, vec![4.0]));
        let py2 = "{'descr': '<f4', 'fortran_order': False, 'shape': (1L, 2L)}\n";
        let array = parse_npy(&npy(1, py2, &f32_bytes(&[1.0, 2.0]))).unwrap();
        assert_eq!(array.shape, [1, 2]);
    }

    #[test]
    fn refuses_broken_preambles() {
        assert!(parse_err(b"PK\x03\x04").contains("magic"));
        assert!(parse_err(b"\x93NUMPY\x01").contains("truncated"));
        assert!(parse_err(&npy(4, &header("<f4", "(1,)"), &[0; 4])).contains("version 4"));
        let mut long_header = npy(1, &header("<f4", "(1,)"), &[]);
        long_header[8..10].copy_from_slice(&9_999u16.to_le_bytes());
        assert!(parse_err(&long_header).contains("truncated"));
        let mut huge_header = npy(2, &header("<f4", "(1,)"), &[]);
        huge_header[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse_err(&huge_header).contains("at most 10000"));
    }

    #[test]
    fn refuses_headers_numpy_would_not_write() {
        let cases = [
            ("{'descr': '<f4', 'shape': (1,)}", "no `fortran_order`"),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': 1}",
                "unexpected key",
            ),
            (
                "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False}",
                "twice",
            ),
            (
                "{'descr': '<f4', 'fortran_order': 'no', 'shape': (1,)}",
                "unexpected type",
            ),
            (
                "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,)}",
                "expected `\"`",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (-1,)}",
                "dimension",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (1,)} x",
                "after the dict",
            ),
            ("{'descr': '<f4", "unterminated"),
            ("", "expected `{`"),
        ];
        for (text, message) in cases {
            let error = parse_err(&npy(1, text, &[0; 4]));
            assert!(error.contains(message), "{text}: {error}");
        }
    }

    #[test]
    fn refuses_unsupported_layouts_and_types() {
        let fortran = "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2)}";
        assert!(parse_err(&npy(1, fortran, &[0; 16])).contains("Fortran"));
        for descr in ["<c8", "|O", "<f3", "<f", "f4", "<U4"] {
            let error = parse_err(&npy(1, &header(descr, "(1,)"), &[0; 8]));
            assert!(
                error.contains("unsupported element type"),
                "{descr}: {error}"
            );
        }
    }

    #[test]
    fn compares_the_declared_size_with_the_data_before_allocating() {
        let short = parse_err(&npy(1, &header("<f4", "(3,)"), &[0; 8]));
        assert!(short.contains("8 data bytes"), "{short}");
        let long = parse_err(&npy(1, &header("<f4", "(1,)"), &[0; 8]));
        assert!(long.contains("expected 4"), "{long}");
        let huge = format!("({}, {})", usize::MAX / 2, 4);
        assert!(parse_err(&npy(1, &header("<f4", &huge), &[])).contains("overflows"));
        let large = header("<f8", &format!("({},)", u32::MAX));
        assert!(parse_err(&npy(1, &large, &[0; 8])).contains("8 data bytes"));
    }

    #[test]
    fn reads_stored_and_deflated_entries_by_name() {
        let weights = npy(
            1,
            &header("<f4", "(2, 2)"),
            &f32_bytes(&[1.0, 2.0, 3.0, 4.0]),
        );
        let bias = npy(1, &header("<f4", "(2,)"), &f32_bytes(&[0.5, 0.25]));
        let npz = Npz::from_reader(archive(&[
            ("w.npy", weights, CompressionMethod::Stored),
            ("b.npy", bias, CompressionMethod::Deflated),
        ]))
        .unwrap();
        assert_eq!(npz.get("w", &[2, 2]).unwrap(), [1.0, 2.0, 3.0, 4.0]);
        assert_eq!(npz.get("b", &[2]).unwrap(), [0.5, 0.25]);
        let wrong = npz.get("w", &[4]).unwrap_err().to_string();
        assert!(
            wrong.contains("array `w` has shape [2, 2], expected [4]"),
            "{wrong}"
        );
        assert!(npz
            .get("x", &[1])
            .unwrap_err()
            .to_string()
            .contains("missing array `x`"));
    }

    #[test]
    fn refuses_bad_archives() {
        let not_zip = Npz::from_reader(Cursor::new(b"\x93NUMPY".to_vec())).unwrap_err();
        assert!(not_zip.contains("not a zip archive"), "{not_zip}");
        let stray = archive(&[("notes.txt", b"hi".to_vec(), CompressionMethod::Stored)]);
        let error = Npz::from_reader(stray).unwrap_err();
        assert!(
            error.contains("`notes.txt` is not an .npy array"),
            "{error}"
        );
        let bad = archive(&[(
            "a.npy",
            b"\x93NUMPY\x01\x00".to_vec(),
            CompressionMethod::Stored,
        )]);
        let error = Npz::from_reader(bad).unwrap_err();
        assert!(error.starts_with("entry `a.npy`: truncated"), "{error}");
    }
}
