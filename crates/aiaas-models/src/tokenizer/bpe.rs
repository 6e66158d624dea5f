//! GPT-2-style byte-level BPE: text is split by the vocabulary's pre-tokenizer regexes, each
//! piece is mapped byte by byte onto printable characters, then merged pair by pair in the
//! order of the merge list (lowest rank first).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
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

    /// Merges one piece. Candidate pairs wait in a heap (lowest rank, then leftmost) over a
    /// linked list of symbols, so a piece of n bytes costs O(n log n), not O(n²): a prompt that
    /// is one megabyte-long "word" must not pin a core.
    fn encode_piece(&self, piece: &str, out: &mut Vec<u32>) {
        let mut symbols: Vec<Symbol> = piece
            .bytes()
            .filter_map(|b| self.byte_ids[b as usize])
            .enumerate()
            .map(|(i, id)| Symbol {
                id,
                prev: i.checked_sub(1),
                next: Some(i + 1),
            })
            .collect();
        if let Some(last) = symbols.last_mut() {
            last.next = None;
        }
        let mut queue = BinaryHeap::new();
        for left in 1..symbols.len() {
            self.push_pair(&symbols, left - 1, &mut queue);
        }
        while let Some(Reverse(pair)) = queue.pop() {
            let Some(right) = symbols[pair.left].next else {
                continue;
            };
            // Stale entry: a neighbour was merged since this pair was queued.
            if symbols[pair.left].id != pair.ids.0 || symbols[right].id != pair.ids.1 {
                continue;
            }
            let after = symbols[right].next;
            symbols[pair.left].id = pair.merged;
            symbols[pair.left].next = after;
            symbols[right].id = u32::MAX;
            if let Some(n) = after {
                symbols[n].prev = Some(pair.left);
            }
            if let Some(p) = symbols[pair.left].prev {
                self.push_pair(&symbols, p, &mut queue);
            }
            self.push_pair(&symbols, pair.left, &mut queue);
        }
        let mut at = (!symbols.is_empty()).then_some(0);
        while let Some(i) = at {
            out.push(symbols[i].id);
            at = symbols[i].next;
        }
    }

    /// Queues the pair starting at `left` if the merge list has it.
    fn push_pair(&self, symbols: &[Symbol], left: usize, queue: &mut BinaryHeap<Reverse<Pair>>) {
        let Some(right) = symbols[left].next else {
            return;
        };
        let ids = (symbols[left].id, symbols[right].id);
        if let Some(&(rank, merged)) = self.merges.get(&ids) {
            queue.push(Reverse(Pair {
                rank,
                left,
                ids,
                merged,
            }));
        }
    }
}

/// One token of a piece being merged, linked to its neighbours.
struct Symbol {
    id: u32,
    prev: Option<usize>,
    next: Option<usize>,
}

/// A mergeable neighbour pair; ordered by merge rank, then position (leftmost first).
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Pair {
    rank: u32,
    left: usize,
    ids: (u32, u32),
    merged: u32,
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

    fn toy() -> Bpe {
        let index: HashMap<String, u32> = ["a", "b", "aa", "ab", "aaaa"]
            .iter()
            .enumerate()
            .map(|(id, t)| (t.to_string(), id as u32))
            .collect();
        let merges = ["a b", "a a", "aa aa"].map(String::from);
        Bpe::new(&index, &merges, "gpt2").unwrap()
    }

    #[test]
    fn merges_lowest_rank_first_then_leftmost() {
        let mut out = Vec::new();
        // "a b" outranks "a a"; among the equal "a a" pairs the leftmost merges first.
        toy().encode("aabaaa", &mut out);
        assert_eq!(out, [0, 3, 2, 0]);
    }

    #[test]
    fn one_huge_word_encodes_in_near_linear_time() {
        let mut out = Vec::new();
        toy().encode(&"a".repeat(400_001), &mut out);
        assert_eq!(out.len(), 100_001);
        assert!(out[..100_000].iter().all(|&id| id == 4));
        assert_eq!(out[100_000], 0);
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
