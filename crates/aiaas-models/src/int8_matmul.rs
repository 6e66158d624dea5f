//! GGUF 4- and 5-bit weights (Q4_1, Q5_0) times f32 activations, computed as ggml computes it:
//! each activation row is quantized to 8-bit blocks of 32, each weight block meets its
//! activation block in an integer dot product, then the scales apply. The arithmetic follows
//! candle's CPU path step by step (whose results match llama.cpp's token for token), but the
//! loops are written for the compiler to vectorize with the CPU's widest SIMD (`vectorized`), and
//! output rows are shared out among the threads. candle's own products for these two types are
//! scalar.

use half::f16;
use rayon::prelude::*;

use crate::fast_math::vectorized;
use crate::{ModelError, Result};

/// Weights (and activations) per block.
const BLOCK: usize = 32;
/// Output rows one task computes: enough work to outweigh handing it to a thread.
const ROWS_PER_TASK: usize = 16;

/// A weight block format: how it is stored and how it meets an activation block.
pub trait WeightBlock: Sized + Send + Sync {
    /// Bytes of one block in the file.
    const BYTES: usize;
    fn read(bytes: &[u8]) -> Self;
    fn dot(&self, activations: &ActivationBlock) -> f32;
}

/// Q4_1: `scale · q + min` with q in 0..16.
pub struct Q4_1 {
    scale: f32,
    min: f32,
    /// Value j in the low nibble of byte j, value j + 16 in its high nibble.
    nibbles: [u8; BLOCK / 2],
}

/// Q5_0: `scale · (q - 16)` with q in 0..32: four bits in the nibbles, the fifth in `high_bits`.
pub struct Q5_0 {
    scale: f32,
    /// Bit j: the fifth bit of value j.
    high_bits: u32,
    nibbles: [u8; BLOCK / 2],
}

fn half(bytes: &[u8]) -> f32 {
    f16::from_le_bytes([bytes[0], bytes[1]]).to_f32()
}

fn nibbles(bytes: &[u8]) -> [u8; BLOCK / 2] {
    bytes.try_into().expect("16 bytes by the block layout")
}

impl WeightBlock for Q4_1 {
    const BYTES: usize = 4 + BLOCK / 2;

    fn read(bytes: &[u8]) -> Self {
        Self {
            scale: half(&bytes[0..2]),
            min: half(&bytes[2..4]),
            nibbles: nibbles(&bytes[4..]),
        }
    }

    #[inline(always)]
    fn dot(&self, a: &ActivationBlock) -> f32 {
        let mut sum = 0i32;
        for j in 0..BLOCK / 2 {
            let low = i32::from(self.nibbles[j] & 0x0F);
            let high = i32::from(self.nibbles[j] >> 4);
            sum += low * i32::from(a.values[j]) + high * i32::from(a.values[j + BLOCK / 2]);
        }
        sum as f32 * self.scale * a.scale + self.min * a.scaled_sum
    }
}

impl WeightBlock for Q5_0 {
    const BYTES: usize = 2 + 4 + BLOCK / 2;

    fn read(bytes: &[u8]) -> Self {
        Self {
            scale: half(&bytes[0..2]),
            high_bits: u32::from_le_bytes(bytes[2..6].try_into().expect("4 bytes")),
            nibbles: nibbles(&bytes[6..]),
        }
    }

    #[inline(always)]
    fn dot(&self, a: &ActivationBlock) -> f32 {
        let mut sum = 0i32;
        for j in 0..BLOCK / 2 {
            let fifth = |bit: usize| (((self.high_bits >> bit) & 1) << 4) as i32;
            let low = (i32::from(self.nibbles[j] & 0x0F) | fifth(j)) - 16;
            let high = (i32::from(self.nibbles[j] >> 4) | fifth(j + BLOCK / 2)) - 16;
            sum += low * i32::from(a.values[j]) + high * i32::from(a.values[j + BLOCK / 2]);
        }
        sum as f32 * self.scale * a.scale
    }
}

/// 32 activations quantized to 8 bits (ggml's Q8_1, which is Q8_0 plus the scaled sum).
pub struct ActivationBlock {
    scale: f32,
    /// The scale times the sum of the values: what a Q4_1 block's minimum multiplies.
    scaled_sum: f32,
    values: [i8; BLOCK],
}

/// A `rows` × `cols` matrix of weight blocks, each row a run of blocks.
pub struct QuantizedMatrix<B> {
    pub rows: usize,
    cols: usize,
    blocks: Vec<B>,
}

impl<B: WeightBlock> QuantizedMatrix<B> {
    /// Reads the raw bytes of a GGUF tensor of `rows` rows of `cols` weights.
    pub fn from_bytes(bytes: &[u8], rows: usize, cols: usize) -> Result<Self> {
        if !cols.is_multiple_of(BLOCK) || bytes.len() != rows * cols / BLOCK * B::BYTES {
            return Err(ModelError::Format(format!(
                "a {rows}×{cols} tensor of {}-byte blocks cannot hold {} bytes",
                B::BYTES,
                bytes.len()
            )));
        }
        let blocks = bytes.chunks_exact(B::BYTES).map(B::read).collect();
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

/// ggml's `quantize_row_q8_1` as candle's CPU path computes it: values scaled so the largest
/// magnitude is 127 and rounded; the scale in f16, the scaled sum as the f16 product of the f16
/// sum and that scale.
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

/// One weight row times one quantized activation row, block after block.
#[inline(always)]
fn dot<B: WeightBlock>(weights: &[B], activations: &[ActivationBlock]) -> f32 {
    let mut total = 0f32;
    for (w, a) in weights.iter().zip(activations) {
        total += w.dot(a);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of row r, column c in the test matrices: 0..32.
    fn code(r: usize, c: usize) -> u8 {
        ((r * 7 + c) % 32) as u8
    }

    /// Blocks of a Q4_1 matrix with values code % 16, scale 0.5 and minimum -1.
    fn q4_1(rows: usize, cols: usize) -> (QuantizedMatrix<Q4_1>, Vec<f32>) {
        let mut bytes = Vec::new();
        for r in 0..rows {
            for start in (0..cols).step_by(BLOCK) {
                bytes.extend(f16::from_f32(0.5).to_le_bytes());
                bytes.extend(f16::from_f32(-1.0).to_le_bytes());
                let value = |j: usize| code(r, start + j) % 16;
                bytes.extend((0..BLOCK / 2).map(|j| value(j) | (value(j + BLOCK / 2) << 4)));
            }
        }
        let dense = dense(rows, cols, |q| 0.5 * f32::from(q % 16) - 1.0);
        (
            QuantizedMatrix::from_bytes(&bytes, rows, cols).unwrap(),
            dense,
        )
    }

    /// Blocks of a Q5_0 matrix with values code, scale 0.25.
    fn q5_0(rows: usize, cols: usize) -> (QuantizedMatrix<Q5_0>, Vec<f32>) {
        let mut bytes = Vec::new();
        for r in 0..rows {
            for start in (0..cols).step_by(BLOCK) {
                bytes.extend(f16::from_f32(0.25).to_le_bytes());
                let value = |j: usize| code(r, start + j);
                let high: u32 = (0..BLOCK).map(|j| u32::from(value(j) >> 4) << j).sum();
                bytes.extend(high.to_le_bytes());
                let low = |j: usize| value(j) & 0x0F;
                bytes.extend((0..BLOCK / 2).map(|j| low(j) | (low(j + BLOCK / 2) << 4)));
            }
        }
        let dense = dense(rows, cols, |q| 0.25 * (f32::from(q) - 16.0));
        (
            QuantizedMatrix::from_bytes(&bytes, rows, cols).unwrap(),
            dense,
        )
    }

    fn dense(rows: usize, cols: usize, weight: impl Fn(u8) -> f32) -> Vec<f32> {
        (0..rows)
            .flat_map(|r| (0..cols).map(move |c| (r, c)))
            .map(|(r, c)| weight(code(r, c)))
            .collect()
    }

    /// Checks the product against the dense one, within the error of 8-bit activations.
    fn check<B: WeightBlock>(m: &QuantizedMatrix<B>, dense: &[f32]) {
        let (rows, cols, tokens) = (m.rows, m.cols, 3);
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
                let bound: f32 = weights.iter().map(|w| w.abs()).sum::<f32>() / 254.0 + 1e-3;
                let got = out[token * rows + row];
                assert!(
                    (got - exact).abs() <= bound,
                    "{token},{row}: {got} vs {exact}"
                );
            }
        }
    }

    #[test]
    fn q4_1_products_match_the_dense_product_within_8_bit_rounding() {
        let (m, dense) = q4_1(37, 64);
        check(&m, &dense);
    }

    #[test]
    fn q5_0_products_match_the_dense_product_within_8_bit_rounding() {
        let (m, dense) = q5_0(37, 64);
        check(&m, &dense);
    }

    #[test]
    fn a_wrong_size_is_an_error() {
        assert!(QuantizedMatrix::<Q4_1>::from_bytes(&[0; 19], 1, 32).is_err());
        assert!(QuantizedMatrix::<Q4_1>::from_bytes(&[0; 20], 1, 31).is_err());
        assert!(QuantizedMatrix::<Q5_0>::from_bytes(&[0; 20], 1, 32).is_err());
    }
}
