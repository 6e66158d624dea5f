//! GGUF quantized weights times f32 activations, computed as ggml computes it: each activation
//! row is quantized to 8-bit blocks, each weight block meets its activation block in an integer
//! dot product, then the scales apply. Each format defines its float arithmetic exactly
//! (`GroupedFormat::portable_row`: ggml's reference order, block after block), and every kernel
//! computes it to the bit: the AVX-512 VNNI kernels (`avx512`) or else the AVX2 ones (`avx2`),
//! chosen at run time by what the CPU has (`simd::Simd`), and the portable one, compiled for the
//! CPU's widest SIMD (`vectorized`). Matrices are kept in groups of 16 rows (`row_groups`), which
//! are shared out among the threads.
//!
//! A row of the result is computed the same way whatever the number of rows: batching
//! sequences together never changes any of them (candle picks different kernels by row count
//! for K-quants, which moved logits by up to 0.7).
//!
//! Formats: `blocks` (32 weights a block: Q4_0, Q4_1, Q5_0, Q8_0, against ggml's Q8_0/Q8_1
//! activations) and `k_quants` (256-weight super-blocks: Q4_K, Q6_K, against Q8_K activations).

/// Runs `$run` over `$tokens` tokens in tiles of the given sizes, largest first, then of 1:
/// `$run` sees the tile's first token as `$first` and its size as the constant `$tile`
/// (registers are sized by it).
#[cfg(target_arch = "x86_64")]
macro_rules! in_tiles {
    ($tokens:expr, [$($size:literal),+], |$first:ident, $tile:ident| $run:expr) => {{
        let tokens = $tokens;
        let mut $first = 0;
        'tiles: while $first < tokens {
            $(
                if tokens - $first >= $size {
                    const $tile: usize = $size;
                    $run;
                    $first += $size;
                    continue 'tiles;
                }
            )+
            const $tile: usize = 1;
            $run;
            $first += 1;
        }
    }};
}

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod blocks;
mod k_quants;
mod row_groups;
#[cfg(target_arch = "x86_64")]
mod simd;

use rayon::prelude::*;

pub use blocks::{Q4_0, Q4_1, Q5_0, Q8_0};
pub use k_quants::{Q4K, Q6K};
pub use row_groups::{GroupedFormat, GroupedMatrix};

use crate::fast_math::vectorized;

/// Below this many tokens each group of rows is quick work (a decode step of a few sequences),
/// and a product is cut into `TASKS_FOR_FEW_TOKENS` tasks instead of one a group: enough for
/// the threads to share evenly, few enough that handing them out costs little (measured with
/// the earlier kernels, a row at a time, on one token: SmolLM2's 1536×576 product 16.5 → 18.9
/// GMAC/s, Qwen2.5's 4864×896 20.3 → 22.8).
const FEW_TOKENS: usize = 8;
const TASKS_FOR_FEW_TOKENS: usize = 16;

/// Activations quantized to 8 bits, one block of `SIZE` values.
pub trait ActivationBlock: Sized + Send + Sync {
    const SIZE: usize;
    fn quantize(values: &[f32]) -> Self;
}

/// Tokens quantized at once by one task: enough to outweigh handing them to a thread.
const TOKENS_PER_TASK: usize = 16;

/// `x` (tokens of `cols` values) quantized block by block, tokens shared out among the threads.
fn quantize_tokens<A: ActivationBlock>(x: &[f32], cols: usize) -> Vec<A> {
    x.par_chunks(TOKENS_PER_TASK * cols)
        .flat_map_iter(|x| {
            // A plain loop: iterator adapters would be compiled apart from `vectorized`, with
            // `quantize` inlined into them for the baseline CPU.
            let mut blocks = Vec::with_capacity(x.len() / A::SIZE);
            vectorized(
                #[inline(always)]
                || {
                    for block in x.chunks_exact(A::SIZE) {
                        blocks.push(A::quantize(block));
                    }
                },
            );
            blocks
        })
        .collect()
}

/// A weight matrix that multiplies activations, whatever its block format.
pub trait Product: Send + Sync {
    /// `x` (`tokens` rows of the matrix's column count) times the transposed matrix: `tokens`
    /// rows of the matrix's row count.
    fn matmul(&self, x: &[f32], tokens: usize) -> Vec<f32>;
    /// The given rows, as f32, one after the other: a tied embedding table's lookup.
    fn gather(&self, rows: &[u32]) -> Vec<f32>;
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    use super::row_groups::GroupedFormat;
    use super::*;

    /// A `rows` × `cols` matrix quantized by candle (ggml's reference quantizers): its GGUF
    /// bytes, and the dense weights it stands for (candle's dequantization).
    pub(super) fn quantized_bytes(
        dtype: GgmlDType,
        rows: usize,
        cols: usize,
    ) -> (Vec<u8>, Vec<f32>) {
        let values: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919 + i / cols * 13) % 997) as f32 / 498.0 - 1.0)
            .collect();
        let tensor = Tensor::from_vec(values, (rows, cols), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&tensor, dtype).unwrap();
        let dense = q.dequantize(&Device::Cpu).unwrap();
        let dense = dense.flatten_all().unwrap().to_vec1().unwrap();
        (q.data().unwrap().to_vec(), dense)
    }

    /// Checks the product of a matrix of format `F` against the dense one, within the error of
    /// 8-bit activations.
    fn check<F: GroupedFormat>(dtype: GgmlDType) {
        let (rows, cols, tokens) = (37, 512, 3);
        let (bytes, dense) = quantized_bytes(dtype, rows, cols);
        let m = GroupedMatrix::<F>::from_bytes(&bytes, rows, cols).unwrap();
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

    /// `tokens` tokens of `cols` activations that try a kernel's quantizer: the first all zeros,
    /// the second with values halfway between integers once scaled.
    pub(super) fn kernel_test_tokens(tokens: usize, cols: usize) -> Vec<f32> {
        let mut x: Vec<f32> = (0..tokens * cols)
            .map(|i| ((i * 104_729) % 255) as f32 / 127.0 - 1.0)
            .collect();
        x[..cols].fill(0.0);
        for (i, x) in x[cols..2 * cols].iter_mut().enumerate() {
            *x = if i % 32 == 0 {
                127.0
            } else {
                (i % 32) as f32 - 16.5
            };
        }
        x
    }

    #[test]
    fn a_wrong_size_is_an_error() {
        assert!(GroupedMatrix::<Q4_1>::from_bytes(&[0; 19], 1, 32).is_err());
        assert!(GroupedMatrix::<Q4_1>::from_bytes(&[0; 20], 1, 31).is_err());
        assert!(GroupedMatrix::<Q5_0>::from_bytes(&[0; 20], 1, 32).is_err());
        assert!(GroupedMatrix::<Q4K>::from_bytes(&[0; 144], 1, 32).is_err());
    }
}
