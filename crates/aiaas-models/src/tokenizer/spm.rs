//! SentencePiece tokenization with scores (llama.cpp's `llm_tokenizer_spm`): spaces become `▁`,
//! the text starts as single characters, and the adjacent pair whose concatenation is the
//! highest-scoring vocabulary entry is merged until none is left. Characters outside the
//! vocabulary fall back to `<0xXX>` byte tokens.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

pub(super) struct Spm {
    index: HashMap<String, u32>,
    scores: Vec<f32>,
}

/// A character run in the text being merged, linked to its neighbours.
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

struct Bigram {
    left: usize,
    right: usize,
    score: f32,
    len: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bigram {
    /// Highest score first; on a tie, the leftmost pair.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl Spm {
    pub(super) fn new(index: HashMap<String, u32>, scores: Vec<f32>) -> Self {
        Self { index, scores }
    }

    pub(super) fn encode(&self, text: &str, out: &mut Vec<u32>) {
        let text = text.replace(' ', "\u{2581}");
        let mut symbols: Vec<Symbol> = Vec::new();
        for (i, (start, ch)) in text.char_indices().enumerate() {
            symbols.push(Symbol {
                start,
                len: ch.len_utf8(),
                prev: i.checked_sub(1),
                next: None,
            });
            if i > 0 {
                symbols[i - 1].next = Some(i);
            }
        }
        let mut queue = BinaryHeap::new();
        for i in 1..symbols.len() {
            self.push_bigram(&text, &symbols, i - 1, i, &mut queue);
        }
        while let Some(bigram) = queue.pop() {
            let (left, right) = (&symbols[bigram.left], &symbols[bigram.right]);
            // Stale entry: one side was merged away since this pair was queued.
            if left.len == 0 || right.len == 0 || left.len + right.len != bigram.len {
                continue;
            }
            let right_next = right.next;
            symbols[bigram.left].len += symbols[bigram.right].len;
            symbols[bigram.right].len = 0;
            symbols[bigram.left].next = right_next;
            if let Some(n) = right_next {
                symbols[n].prev = Some(bigram.left);
            }
            if let Some(p) = symbols[bigram.left].prev {
                self.push_bigram(&text, &symbols, p, bigram.left, &mut queue);
            }
            if let Some(n) = right_next {
                self.push_bigram(&text, &symbols, bigram.left, n, &mut queue);
            }
        }
        let mut at = (!symbols.is_empty()).then_some(0);
        while let Some(i) = at {
            let piece = &text[symbols[i].start..symbols[i].start + symbols[i].len];
            match self.index.get(piece) {
                Some(&id) => out.push(id),
                None => {
                    for byte in piece.bytes() {
                        if let Some(&id) = self.index.get(&format!("<0x{byte:02X}>")) {
                            out.push(id);
                        }
                    }
                }
            }
            at = symbols[i].next;
        }
    }

    fn push_bigram(
        &self,
        text: &str,
        symbols: &[Symbol],
        left: usize,
        right: usize,
        queue: &mut BinaryHeap<Bigram>,
    ) {
        let start = symbols[left].start;
        let len = symbols[left].len + symbols[right].len;
        if let Some(&id) = self.index.get(&text[start..start + len]) {
            queue.push(Bigram {
                left,
                right,
                score: self.scores.get(id as usize).copied().unwrap_or(0.0),
                len,
            });
        }
    }
}

/// The byte a `<0xXX>` token stands for.
pub(super) fn byte_token_value(token: &str) -> Option<u8> {
    let hex = token.strip_prefix("<0x")?.strip_suffix('>')?;
    u8::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab(entries: &[(&str, f32)]) -> Spm {
        let index = entries
            .iter()
            .enumerate()
            .map(|(i, (t, _))| ((*t).to_string(), i as u32))
            .collect();
        Spm::new(index, entries.iter().map(|(_, s)| *s).collect())
    }

    #[test]
    fn merges_highest_score_first_and_falls_back_to_bytes() {
        let spm = vocab(&[
            ("a", 0.0),
            ("b", 0.0),
            ("ab", 1.0),
            ("bc", 2.0),
            ("c", 0.0),
            ("<0xC3>", 0.0),
            ("<0xA9>", 0.0),
        ]);
        let mut out = Vec::new();
        spm.encode("abcé", &mut out);
        // "bc" outscores "ab", so "a" stays alone; "é" is not in the vocabulary.
        assert_eq!(out, [0, 3, 5, 6]);
    }

    #[test]
    fn byte_tokens_parse() {
        assert_eq!(byte_token_value("<0x0A>"), Some(10));
        assert_eq!(byte_token_value("<0xZZ>"), None);
    }
}
