//! Q4_1 weights (GGUF blocks of 32: an f16 scale, an f16 minimum and 4-bit values) times f32
//! activations, computed as ggml computes it: each activation row is quantized to 8-bit blocks
//! (Q8_1), each pair of blocks meets in an integer dot product, then the scales apply. The loops
//! are written for the compiler to vectorize with the CPU's widest SIMD (`vectorized`), and
//! output rows are shared out among the threads. candle's own Q4_1 product is scalar.

use half::f16;
use rayon::prelude::*;

use crate::fast_math::vectorized;
use crate::{ModelError, Result};

/// Weights (and activations) per block.
const BLOCK: usize = 32;
/// A Q4_1 block in the file: scale and minimum (f16 each), then 16 bytes of two 4-bit values.
const BLOCK_BYTES: usize = 4 + BLOCK / 2;
/// Output rows one task computes: enough work to outweigh handing it to a thread.
const ROWS_PER_TASK: usize = 16;

#[derive(Clone, Copy)]
struct WeightBlock {
    scale: f32,
    min: f32,
    /// Value j in the low nibble of byte j, value j + 16 in its high nibble.
    nibbles: [u8; BLOCK / 2],
}

struct ActivationBlock {
    scale: f32,
    /// The scale times the sum of the values: what the weights' minimum multiplies.
    scaled_sum: f32,
    values: [i8; BLOCK],
}

/// A `rows` × `cols` Q4_1 matrix, each row a run of blocks.
pub struct Q4_1Matrix {
    pub rows: usize,
    cols: usize,
    blocks: Vec<WeightBlock>,
}

impl Q4_1Matrix {
    /// Reads the raw bytes of a GGUF Q4_1 tensor of `rows` rows of `cols` weights.
    pub fn from_bytes(bytes: &[u8], rows: usize, cols: usize) -> Result<Self> {
        if !cols.is_multiple_of(BLOCK) || bytes.len() != rows * cols / BLOCK * BLOCK_BYTES {
            return Err(ModelError::Format(format!(
                "a Q4_1 tensor of {rows}×{cols} cannot hold {} bytes",
                bytes.len()
            )));
        }
        let half = |b: &[u8]| f16::from_le_bytes([b[0], b[1]]).to_f32();
        let blocks = bytes
            .chunks_exact(BLOCK_BYTES)
            .map(|b| WeightBlock {
                scale: half(&b[0..2]),
                min: half(&b[2..4]),
                nibbles: b[4..].try_into().expect("16 bytes by the chunk size"),
            })
            .collect();
        Ok(Self { rows, cols, blocks })
    }

    /// `x` (`tokens` rows of `cols` values) times the transposed matrix: `tokens` rows of
    /// `rows` values.
    pub fn matmul(&self, x: &[f32], tokens: usize) -> Vec<f32> {
        debug_assert_eq!(x.len(), tokens * self.cols);
        let per_row = self.cols / BLOCK;
        let activations: Vec<ActivationBlock> = x.chunks_exact(BLOCK).map(quantize).collect();
        // Computed output row by output row (each weight row read once for all tokens), then
        // turned to token-major order.
        let mut by_row = vec![0f32; self.rows * tokens];
        by_row
            .par_chunks_mut(ROWS_PER_TASK * tokens)
            .enumerate()
            .for_each(|(task, out)| {
                let first = task * ROWS_PER_TASK;
                vectorized(
                    #[inline(always)]
                    || {
                        for (r, out) in out.chunks_exact_mut(tokens).enumerate() {
                            let row = first + r;
                            let weights = &self.blocks[row * per_row..(row + 1) * per_row];
                            for (token, value) in out.iter_mut().enumerate() {
                                let acts = &activations[token * per_row..(token + 1) * per_row];
                                *value = dot(weights, acts);
                            }
                        }
                    },
                )
            });
        if tokens == 1 {
            return by_row;
        }
        let mut out = vec![0f32; tokens * self.rows];
        for (row, values) in by_row.chunks_exact(tokens).enumerate() {
            for (token, value) in values.iter().enumerate() {
                out[token * self.rows + row] = *value;
            }
        }
        out
    }
}

/// ggml's `quantize_row_q8_1` as candle's CPU path computes it (whose results match
/// llama.cpp's token for token): values scaled so the largest magnitude is 127 and rounded; the
/// scale in f16, the scaled sum as the f16 product of the f16 sum and that scale.
fn quantize(x: &[f32]) -> ActivationBlock {
    let max = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let scale = max / 127.0;
    let inverse = if scale != 0.0 { 1.0 / scale } else { 0.0 };
    let mut values = [0i8; BLOCK];
    let mut sum = 0i32;
    for (q, v) in values.iter_mut().zip(x) {
        *q = (v * inverse).round() as i8;
        sum += i32::from(*q);
    }
    let scale = f16::from_f32(scale);
    ActivationBlock {
        scale: scale.to_f32(),
        scaled_sum: (f16::from_f32(sum as f32) * scale).to_f32(),
        values,
    }
}

/// One weight row times one quantized activation row.
#[inline(always)]
fn dot(weights: &[WeightBlock], activations: &[ActivationBlock]) -> f32 {
    let mut total = 0f32;
    for (w, a) in weights.iter().zip(activations) {
        let mut sum = 0i32;
        for j in 0..BLOCK / 2 {
            let low = i32::from(w.nibbles[j] & 0x0F);
            let high = i32::from(w.nibbles[j] >> 4);
            sum += low * i32::from(a.values[j]) + high * i32::from(a.values[j + BLOCK / 2]);
        }
        total += sum as f32 * w.scale * a.scale + w.min * a.scaled_sum;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks of a known matrix: row r, column c holds the 4-bit value (r + c) % 16, scale
    /// 0.5 and minimum -1, so weight = 0.5 · ((r + c) % 16) - 1.
    fn matrix(rows: usize, cols: usize) -> (Q4_1Matrix, Vec<f32>) {
        let mut bytes = Vec::new();
        let mut dense = Vec::new();
        for r in 0..rows {
            for block in 0..cols / BLOCK {
                bytes.extend(f16::from_f32(0.5).to_le_bytes());
                bytes.extend(f16::from_f32(-1.0).to_le_bytes());
                let value = |j: usize| ((r + block * BLOCK + j) % 16) as u8;
                bytes.extend((0..BLOCK / 2).map(|j| value(j) | (value(j + BLOCK / 2) << 4)));
            }
            dense.extend((0..cols).map(|c| 0.5 * ((r + c) % 16) as f32 - 1.0));
        }
        (Q4_1Matrix::from_bytes(&bytes, rows, cols).unwrap(), dense)
    }

    #[test]
    fn the_product_matches_the_dense_product_within_8_bit_rounding() {
        let (rows, cols, tokens) = (37, 64, 3);
        let (m, dense) = matrix(rows, cols);
        let x: Vec<f32> = (0..tokens * cols)
            .map(|i| ((i * 7919) % 200) as f32 / 100.0 - 1.0)
            .collect();
        let out = m.matmul(&x, tokens);
        for token in 0..tokens {
            for row in 0..rows {
                let weights = &dense[row * cols..(row + 1) * cols];
                let acts = &x[token * cols..(token + 1) * cols];
                let exact: f32 = weights.iter().zip(acts).map(|(w, a)| w * a).sum();
                // Each activation is off by at most half a step of its block's 8-bit scale.
                let bound: f32 = weights.iter().map(|w| w.abs()).sum::<f32>() / 254.0 + 1e-4;
                let got = out[token * rows + row];
                assert!(
                    (got - exact).abs() <= bound,
                    "{token},{row}: {got} vs {exact}"
                );
            }
        }
    }

    #[test]
    fn a_wrong_size_is_an_error() {
        assert!(Q4_1Matrix::from_bytes(&[0; 19], 1, 32).is_err());
        assert!(Q4_1Matrix::from_bytes(&[0; 20], 1, 31).is_err());
    }
}
