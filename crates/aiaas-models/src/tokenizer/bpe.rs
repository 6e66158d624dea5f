//! GPT-2-style byte-level BPE: text is split by the vocabulary's pre-tokenizer regexes, each
//! piece is mapped byte by byte onto printable characters, then merged pair by pair in the
//! order of the merge list (lowest rank first).

use std::collections::HashMap;
use std::sync::OnceLock;

use fancy_regex::Regex;

use crate::{ModelError, Result};

/// The GPT-2 split: contractions, words, numbers, punctuation runs, whitespace.
const GPT2_SPLIT: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// Qwen2's split (from its tokenizer.json, case-insensitive contractions spelled out).
const QWEN2_SPLIT: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

pub(super) struct Bpe {
    /// `(left, right)` → `(rank, merged)`.
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Token id of each byte's printable stand-in.
    byte_ids: [Option<u32>; 256],
    splits: Vec<Regex>,
}

impl Bpe {
    pub(super) fn new(index: &HashMap<String, u32>, merges: &[String], pre: &str) -> Result<Self> {
        let mut table = HashMap::with_capacity(merges.len());
        for (rank, merge) in merges.iter().enumerate() {
            let Some((left, right)) = merge.split_once(' ') else {
                continue;
            };
            let ids = (
                index.get(left),
                index.get(right),
                index.get(&format!("{left}{right}")),
            );
            if let (Some(&l), Some(&r), Some(&m)) = ids {
                table.entry((l, r)).or_insert((rank as u32, m));
            }
        }
        let chars = byte_chars();
        let mut byte_ids = [None; 256];
        for (byte, slot) in byte_ids.iter_mut().enumerate() {
            *slot = index.get(&chars[byte].to_string()).copied();
        }
        // The split rules each vocabulary was trained with, as llama.cpp names them.
        let patterns: &[&str] = match pre {
            "qwen2" => &[QWEN2_SPLIT],
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" => {
                &[r"\p{N}", GPT2_SPLIT]
            }
            _ => &[GPT2_SPLIT],
        };
        let splits = patterns
            .iter()
            .map(|p| Regex::new(p).map_err(|e| ModelError::Format(format!("split regex: {e}"))))
            .collect::<Result<_>>()?;
        Ok(Self {
            merges: table,
            byte_ids,
            splits,
        })
    }

    pub(super) fn encode(&self, text: &str, out: &mut Vec<u32>) {
        let mut pieces = vec![text];
        for regex in &self.splits {
            pieces = pieces
                .into_iter()
                .flat_map(|p| split_keeping_gaps(regex, p))
                .collect();
        }
        for piece in pieces {
            self.encode_piece(piece, out);
        }
    }

    fn encode_piece(&self, piece: &str, out: &mut Vec<u32>) {
        let mut symbols: Vec<u32> = piece
            .bytes()
            .filter_map(|b| self.byte_ids[b as usize])
            .collect();
        loop {
            let best = symbols
                .windows(2)
                .enumerate()
                .filter_map(|(i, pair)| self.merges.get(&(pair[0], pair[1])).map(|m| (m.0, i, m.1)))
                .min();
            let Some((_, at, merged)) = best else {
                break;
            };
            symbols[at] = merged;
            symbols.remove(at + 1);
        }
        out.extend(symbols);
    }
}

/// Splits `text` into the regex's matches and the gaps between them, in order.
fn split_keeping_gaps<'a>(regex: &Regex, text: &'a str) -> Vec<&'a str> {
    let mut pieces = Vec::new();
    let mut last = 0;
    for found in regex.find_iter(text).flatten() {
        if found.start() > last {
            pieces.push(&text[last..found.start()]);
        }
        if found.end() > found.start() {
            pieces.push(found.as_str());
        }
        last = found.end();
    }
    if last < text.len() {
        pieces.push(&text[last..]);
    }
    pieces
}

/// GPT-2's reversible map from bytes to printable characters.
fn byte_chars() -> &'static [char; 256] {
    static CHARS: OnceLock<[char; 256]> = OnceLock::new();
    CHARS.get_or_init(|| {
        let mut chars = ['\0'; 256];
        let mut next_spare = 256u32;
        for (byte, slot) in chars.iter_mut().enumerate() {
            let printable = matches!(byte, 33..=126 | 161..=172 | 174..=255);
            let code = if printable {
                byte as u32
            } else {
                let code = next_spare;
                next_spare += 1;
                code
            };
            *slot = char::from_u32(code).expect("codes below 512 are valid chars");
        }
        chars
    })
}

/// Turns a byte-level token string back into the bytes it encodes.
pub(super) fn byte_level_decode(token: &str) -> Vec<u8> {
    static REVERSE: OnceLock<HashMap<char, u8>> = OnceLock::new();
    let reverse = REVERSE.get_or_init(|| {
        byte_chars()
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect()
    });
    token
        .chars()
        .flat_map(|c| match reverse.get(&c) {
            Some(&b) => vec![b],
            None => c.to_string().into_bytes(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_chars_round_trip_every_byte() {
        let all: String = byte_chars().iter().collect();
        assert_eq!(byte_level_decode(&all), (0..=255u8).collect::<Vec<_>>());
    }

    #[test]
    fn gpt2_split_keeps_leading_spaces_with_words() {
        let regex = Regex::new(GPT2_SPLIT).unwrap();
        assert_eq!(
            split_keeping_gaps(&regex, "Hello world's  end"),
            ["Hello", " world", "'s", " ", " end"]
        );
    }
}
