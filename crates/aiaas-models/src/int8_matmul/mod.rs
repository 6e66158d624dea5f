//! GGUF quantized weights times f32 activations, computed as ggml computes it: each activation
//! row is quantized to 8-bit blocks, each weight block meets its activation block in an integer
//! dot product, then the scales apply. The arithmetic follows ggml's reference code as candle's
//! CPU path does (integer sums are exact; only the order of float additions differs), but the
//! loops are written for the compiler to vectorize with the CPU's widest SIMD (`vectorized`),
//! and output rows are shared out among the threads.
//!
//! A row of the result is computed the same way whatever the number of rows: batching
//! sequences together never changes any of them (candle picks different kernels by row count
//! for K-quants, which moved logits by up to 0.7).
//!
//! Formats: `blocks` (32 weights a block: Q4_0, Q4_1, Q5_0, Q8_0, against ggml's Q8_0/Q8_1
//! activations) and `k_quants` (256-weight super-blocks: Q4_K, Q6_K, against Q8_K activations).

mod blocks;
mod k_quants;

use rayon::prelude::*;

pub use blocks::{Q4_0, Q4_1, Q5_0, Q8_0};
pub use k_quants::{Q4K, Q6K};

use crate::fast_math::vectorized;
use crate::{ModelError, Result};

/// Output rows one task computes: enough work to outweigh handing it to a thread.
const ROWS_PER_TASK: usize = 16;

/// Activations quantized to 8 bits, one block of `SIZE` values.
pub trait ActivationBlock: Sized + Send + Sync {
    const SIZE: usize;
    fn quantize(values: &[f32]) -> Self;
}

/// A weight block format: how it is stored and how it meets an activation block.
pub trait WeightBlock: Sized + Send + Sync {
    /// Bytes of one block in the file.
    const BYTES: usize;
    type Activations: ActivationBlock;
    fn read(bytes: &[u8]) -> Self;
    fn dot(&self, activations: &Self::Activations) -> f32;
    /// The block's weights as f32, computed as ggml's (and candle's) `dequantize_row` does.
    fn dequantize(&self, out: &mut [f32]);

    /// One weight row times one quantized activation row, block after block.
    #[inline(always)]
    fn dot_row(weights: &[Self], activations: &[Self::Activations]) -> f32 {
        let mut total = 0f32;
        for (w, a) in weights.iter().zip(activations) {
            total += w.dot(a);
        }
        total
    }
}

/// A `rows` × `cols` matrix of weight blocks, each row a run of blocks.
pub struct QuantizedMatrix<B> {
    pub rows: usize,
    cols: usize,
    blocks: Vec<B>,
}

/// A weight matrix that multiplies activations, whatever its block format.
pub trait Product: Send + Sync {
    /// Output values per token.
    fn rows(&self) -> usize;
    /// Input values per token.
    fn cols(&self) -> usize;
    /// `x` (`tokens` rows of the matrix's column count) times the transposed matrix: `tokens`
    /// rows of `rows()` values.
    fn matmul(&self, x: &[f32], tokens: usize) -> Vec<f32>;
    /// The given rows, as f32, one after the other: a tied embedding table's lookup.
    fn gather(&self, rows: &[u32]) -> Vec<f32>;
}

impl<B: WeightBlock> QuantizedMatrix<B> {
    /// Reads the raw bytes of a GGUF tensor of `rows` rows of `cols` weights.
    pub fn from_bytes(bytes: &[u8], rows: usize, cols: usize) -> Result<Self> {
        let size = B::Activations::SIZE;
        if !cols.is_multiple_of(size) || bytes.len() != rows * cols / size * B::BYTES {
            return Err(ModelError::Format(format!(
                "a {rows}×{cols} tensor of {}-byte blocks of {size} cannot hold {} bytes",
                B::BYTES,
                bytes.len()
            )));
        }
        let blocks = bytes.chunks_exact(B::BYTES).map(B::read).collect();
        Ok(Self { rows, cols, blocks })
    }
}

impl<B: WeightBlock> Product for QuantizedMatrix<B> {
    fn rows(&self) -> usize {
        self.rows
    }

    fn cols(&self) -> usize {
        self.cols
    }

    fn gather(&self, rows: &[u32]) -> Vec<f32> {
        let size = B::Activations::SIZE;
        let per_row = self.cols / size;
        let mut out = vec![0f32; rows.len() * self.cols];
        for (row, out) in rows.iter().zip(out.chunks_exact_mut(self.cols)) {
            let blocks = &self.blocks[*row as usize * per_row..][..per_row];
            for (block, out) in blocks.iter().zip(out.chunks_exact_mut(size)) {
                block.dequantize(out);
            }
        }
        out
    }

    fn matmul(&self, x: &[f32], tokens: usize) -> Vec<f32> {
        debug_assert_eq!(x.len(), tokens * self.cols);
        let size = B::Activations::SIZE;
        let per_row = self.cols / size;
        let activations: Vec<B::Activations> =
            x.chunks_exact(size).map(B::Activations::quantize).collect();
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
                                *value = B::dot_row(weights, acts);
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

#[cfg(test)]
mod tests {
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    use super::*;

    /// A `rows` × `cols` matrix quantized by candle (ggml's reference quantizers), read back
    /// by this module, and the dense weights it stands for (candle's dequantization).
    fn quantized<B: WeightBlock>(
        dtype: GgmlDType,
        rows: usize,
        cols: usize,
    ) -> (QuantizedMatrix<B>, Vec<f32>) {
        let values: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919 + i / cols * 13) % 997) as f32 / 498.0 - 1.0)
            .collect();
        let tensor = Tensor::from_vec(values, (rows, cols), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&tensor, dtype).unwrap();
        let dense = q.dequantize(&Device::Cpu).unwrap();
        let dense = dense.flatten_all().unwrap().to_vec1().unwrap();
        let matrix = QuantizedMatrix::from_bytes(&q.data().unwrap(), rows, cols).unwrap();
        (matrix, dense)
    }

    /// Checks the product against the dense one, within the error of 8-bit activations.
    fn check<B: WeightBlock>(dtype: GgmlDType) {
        let (rows, cols, tokens) = (37, 512, 3);
        let (m, dense) = quantized::<B>(dtype, rows, cols);
        let x: Vec<f32> = (0..tokens * cols)
            .map(|i| ((i * 104_729) % 200) as f32 / 100.0 - 1.0)
            .collect();
        let out = m.matmul(&x, tokens);
        for token in 0..tokens {
            for row in 0..rows {
                let weights = &dense[row * cols..(row + 1) * cols];
                let acts = &x[token * cols..(token + 1) * cols];
                let exact: f32 = weights.iter().zip(acts).map(|(w, a)| w * a).sum();
                // Each activation is off by at most half a step of its block's 8-bit scale
                // (the largest activation is 1).
                let bound: f32 = weights.iter().map(|w| w.abs()).sum::<f32>() / 254.0 + 1e-3;
                let got = out[token * rows + row];
                assert!(
                    (got - exact).abs() <= bound,
                    "{dtype:?} {token},{row}: {got} vs {exact}"
                );
            }
        }
        // Gathered rows are candle's dequantized rows, to the bit.
        let gathered = m.gather(&[5, 0]);
        assert_eq!(&gathered[..cols], &dense[5 * cols..6 * cols]);
        assert_eq!(&gathered[cols..], &dense[..cols]);
        // A row alone is computed exactly as among others.
        let last = m.matmul(&x[(tokens - 1) * cols..], 1);
        assert_eq!(last.as_slice(), &out[(tokens - 1) * rows..]);
    }

    #[test]
    fn every_format_matches_the_dense_product_within_8_bit_rounding() {
        check::<Q4_0>(GgmlDType::Q4_0);
        check::<Q4_1>(GgmlDType::Q4_1);
        check::<Q5_0>(GgmlDType::Q5_0);
        check::<Q8_0>(GgmlDType::Q8_0);
        check::<Q4K>(GgmlDType::Q4K);
        check::<Q6K>(GgmlDType::Q6K);
    }

    #[test]
    fn a_wrong_size_is_an_error() {
        assert!(QuantizedMatrix::<Q4_1>::from_bytes(&[0; 19], 1, 32).is_err());
        assert!(QuantizedMatrix::<Q4_1>::from_bytes(&[0; 20], 1, 31).is_err());
        assert!(QuantizedMatrix::<Q5_0>::from_bytes(&[0; 20], 1, 32).is_err());
        assert!(QuantizedMatrix::<Q4K>::from_bytes(&[0; 144], 1, 32).is_err());
    }
}
