//! g2p-en's neural grapheme-to-phoneme model: a word's spelling in, ARPAbet phonemes out.
//!
//! A GRU encoder reads the word's letters, then `</s>`; a GRU decoder, started from the
//! encoder's last state and `<s>`, emits the most likely phoneme at each step (greedy) until it
//! emits `</s>` or has taken 20 steps. This is `G2p.predict` of g2p-en 2.1.0 with its weights
//! `checkpoint20.npz` (<https://github.com/Kyubyong/g2p>, `g2p_en/g2p.py`). What the package
//! does around it (CMU-dictionary lookup, homographs, numbers spelled out) is not reproduced.

use std::path::Path;

use crate::fast_math::dot;
use crate::npz::Npz;
use crate::{ModelError, Result};

/// The longest word, in characters, that callers should accept (the API answers 400 beyond
/// it). English words are far shorter; the bound caps one request's work, one encoder step a
/// character. [`G2p::phonemes`] itself takes any length.
pub const MAX_WORD_CHARS: usize = 64;

/// The decoder's step limit, g2p.py's: longer pronunciations are cut there.
const MAX_PHONEMES: usize = 20;

const HIDDEN: usize = 256;
const EMBEDDING: usize = 256;
/// The rows of a GRU's stacked gates: reset, update, new (PyTorch's order).
const GATES: usize = 3 * HIDDEN;

/// Input symbols, as g2p.py numbers them: `<pad>`, `<unk>`, `</s>`, then `a` to `z`.
const GRAPHEMES: usize = 29;
const GRAPHEME_UNKNOWN: usize = 1;
const GRAPHEME_END: usize = 2;
const GRAPHEME_A: usize = 3;

/// Output symbols, as g2p.py numbers them: four specials, then ARPAbet with stress digits.
pub const PHONEMES: [&str; 74] = [
    "<pad>", "<unk>", "<s>", "</s>", "AA0", "AA1", "AA2", "AE0", "AE1", "AE2", "AH0", "AH1", "AH2",
    "AO0", "AO1", "AO2", "AW0", "AW1", "AW2", "AY0", "AY1", "AY2", "B", "CH", "D", "DH", "EH0",
    "EH1", "EH2", "ER0", "ER1", "ER2", "EY0", "EY1", "EY2", "F", "G", "HH", "IH0", "IH1", "IH2",
    "IY0", "IY1", "IY2", "JH", "K", "L", "M", "N", "NG", "OW0", "OW1", "OW2", "OY0", "OY1", "OY2",
    "P", "R", "S", "SH", "T", "TH", "UH0", "UH1", "UH2", "UW", "UW0", "UW1", "UW2", "V", "W", "Y",
    "Z", "ZH",
];
const PHONEME_START: usize = 2;
const PHONEME_END: usize = 3;

/// The checkpoint's values: two embeddings, two GRUs (input and hidden weights and biases) and
/// the output layer. `load` checks every shape, so this is the loaded file's count.
const PARAMETERS: u64 = ((GRAPHEMES + PHONEMES.len()) * EMBEDDING
    + 2 * GATES * (EMBEDDING + HIDDEN + 2)
    + PHONEMES.len() * (HIDDEN + 1)) as u64;

/// The loaded model. Prediction is deterministic: the same word gives the same phonemes.
pub struct G2p {
    encoder: Gru,
    decoder: Gru,
    /// The output layer, `PHONEMES.len() × HIDDEN`, and its bias.
    fc_w: Vec<f32>,
    fc_b: Vec<f32>,
}

impl G2p {
    /// Reads g2p-en's `checkpoint20.npz`.
    pub fn load(path: &Path) -> Result<Self> {
        let npz = Npz::read(path)?;
        Ok(Self {
            encoder: Gru::load(&npz, "enc", GRAPHEMES)?,
            decoder: Gru::load(&npz, "dec", PHONEMES.len())?,
            fc_w: weights(&npz, "fc_w", &[PHONEMES.len(), HIDDEN])?.to_vec(),
            fc_b: weights(&npz, "fc_b", &[PHONEMES.len()])?.to_vec(),
        })
    }

    /// The pronunciation of `word`. ASCII letters are read case-blind; any other character
    /// (digit, apostrophe, accented letter) is g2p.py's `<unk>`. As in g2p.py, a special symbol
    /// the decoder might emit (`<pad>`, `<unk>`, `<s>`) is returned like a phoneme.
    pub fn phonemes(&self, word: &str) -> Vec<&'static str> {
        let mut state = [0f32; HIDDEN];
        for symbol in word.chars().map(grapheme).chain([GRAPHEME_END]) {
            self.encoder.step(symbol, &mut state);
        }
        let mut phonemes = Vec::new();
        let mut previous = PHONEME_START;
        for _ in 0..MAX_PHONEMES {
            self.decoder.step(previous, &mut state);
            let next = self.most_likely(&state);
            if next == PHONEME_END {
                break;
            }
            phonemes.push(PHONEMES[next]);
            previous = next;
        }
        phonemes
    }

    /// The number of values in the checkpoint.
    pub fn parameters(&self) -> u64 {
        PARAMETERS
    }

    /// The phoneme the output layer scores highest; the first of equals, as numpy's `argmax`.
    fn most_likely(&self, state: &[f32; HIDDEN]) -> usize {
        let scores =
            (self.fc_w.chunks_exact(HIDDEN).zip(&self.fc_b)).map(|(w, b)| dot(w, state) + b);
        let mut best = (0, f32::NEG_INFINITY);
        for (index, score) in scores.enumerate() {
            if score > best.1 {
                best = (index, score);
            }
        }
        best.0
    }
}

/// The input symbol of one character of the word.
fn grapheme(c: char) -> usize {
    match c.to_ascii_lowercase() {
        letter @ 'a'..='z' => GRAPHEME_A + (letter as usize - 'a' as usize),
        _ => GRAPHEME_UNKNOWN,
    }
}

/// The array `name` of `shape`, refused if any value is not finite: a NaN would make every
/// later state NaN and the argmax meaningless.
fn weights<'a>(npz: &'a Npz, name: &str, shape: &[usize]) -> Result<&'a [f32]> {
    let values = npz.get(name, shape)?;
    if values.iter().any(|v| !v.is_finite()) {
        return Err(ModelError::Format(format!(
            "array `{name}` holds a value that is not finite"
        )));
    }
    Ok(values)
}

/// A one-layer GRU over the embeddings of a small vocabulary. The input's share of the gates,
/// `embedding · w_ihᵀ + b_ih`, depends on the symbol alone, so it is computed once per symbol
/// at load and looked up at each step.
struct Gru {
    /// `vocabulary × GATES`: each symbol's input gates.
    input_gates: Vec<f32>,
    /// `GATES × HIDDEN`, and its bias.
    w_hh: Vec<f32>,
    b_hh: Vec<f32>,
}

impl Gru {
    /// The GRU stored as `{prefix}_emb`, `{prefix}_w_ih`, `{prefix}_w_hh`, `{prefix}_b_ih` and
    /// `{prefix}_b_hh`.
    fn load(npz: &Npz, prefix: &str, vocabulary: usize) -> Result<Self> {
        let array =
            |suffix: &str, shape: &[usize]| weights(npz, &format!("{prefix}_{suffix}"), shape);
        let embedding = array("emb", &[vocabulary, EMBEDDING])?;
        let w_ih = array("w_ih", &[GATES, EMBEDDING])?;
        let b_ih = array("b_ih", &[GATES])?;
        let input_gates = (embedding.chunks_exact(EMBEDDING))
            .flat_map(|x| affine(w_ih, b_ih, x))
            .collect();
        Ok(Self {
            input_gates,
            w_hh: array("w_hh", &[GATES, HIDDEN])?.to_vec(),
            b_hh: array("b_hh", &[GATES])?.to_vec(),
        })
    }

    /// Reads `symbol`: g2p.py's `grucell`, in its order of operations.
    fn step(&self, symbol: usize, state: &mut [f32; HIDDEN]) {
        let input = &self.input_gates[symbol * GATES..][..GATES];
        let hidden = affine(&self.w_hh, &self.b_hh, state);
        for i in 0..HIDDEN {
            let reset = sigmoid(input[i] + hidden[i]);
            let update = sigmoid(input[HIDDEN + i] + hidden[HIDDEN + i]);
            let new = (input[2 * HIDDEN + i] + reset * hidden[2 * HIDDEN + i]).tanh();
            state[i] = (1.0 - update) * new + update * state[i];
        }
    }
}

/// `w · x + b` for the rows of `w`.
fn affine(w: &[f32], b: &[f32], x: &[f32]) -> Vec<f32> {
    (w.chunks_exact(x.len()).zip(b))
        .map(|(row, b)| dot(row, x) + b)
        .collect()
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

#[cfg(test)]
mod tests {
    use zip::CompressionMethod;

    use super::*;
    use crate::npz::fixtures::{archive, f32_bytes, header, npy};

    #[test]
    fn reads_letters_case_blind_and_anything_else_as_unknown() {
        assert_eq!(grapheme('a'), 3);
        assert_eq!(grapheme('Z'), 28);
        for c in ['\'', '3', 'é', ' ', '\u{212a}'] {
            assert_eq!(grapheme(c), GRAPHEME_UNKNOWN, "{c}");
        }
    }

    #[test]
    fn counts_the_checkpoint_values() {
        // The twelve arrays of checkpoint20.npz, by their shapes.
        let shapes: [&[usize]; 12] = [
            &[29, 256],
            &[768, 256],
            &[768, 256],
            &[768],
            &[768],
            &[74, 256],
            &[768, 256],
            &[768, 256],
            &[768],
            &[768],
            &[74, 256],
            &[74],
        ];
        let total: usize = shapes.iter().map(|s| s.iter().product::<usize>()).sum();
        assert_eq!(PARAMETERS, total as u64);
    }

    /// `G2p::load`'s error on an archive holding only `enc_emb` (the first array it reads).
    fn load_error(enc_emb: Vec<u8>) -> String {
        let bytes = archive(&[("enc_emb.npy", enc_emb, CompressionMethod::Stored)]).into_inner();
        let path = std::env::temp_dir().join(format!("g2p-test-{}.npz", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        let error = G2p::load(&path).err().unwrap().to_string();
        std::fs::remove_file(&path).unwrap();
        error
    }

    #[test]
    fn refuses_checkpoints_of_other_shapes_or_with_non_finite_values() {
        let square = npy(1, &header("<f4", "(2, 2)"), &f32_bytes(&[0.0; 4]));
        let error = load_error(square);
        assert!(
            error.contains("array `enc_emb` has shape [2, 2], expected [29, 256]"),
            "{error}"
        );
        let mut values = vec![0.0; 29 * 256];
        values[100] = f32::NAN;
        let nan = npy(1, &header("<f4", "(29, 256)"), &f32_bytes(&values));
        let error = load_error(nan);
        assert!(
            error.contains("`enc_emb` holds a value that is not finite"),
            "{error}"
        );
    }
}
