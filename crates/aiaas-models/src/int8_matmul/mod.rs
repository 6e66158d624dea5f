//! GGUF quantized weights times f32 activations, computed as ggml computes it: each activation
//! row is quantized to 8-bit blocks, each weight block meets its activation block in an integer
//! dot product, then the scales apply. Each format defines its float arithmetic exactly
//! (`WeightBlock::dot_row`: for 32-weight blocks, 16 lanes as ggml's SIMD kernels sum; for
//! K-quants, ggml's reference order), and every kernel computes it to the bit: the AVX-512 VNNI
//! kernels (`avx512`, chosen at run time when the CPU has them) and the portable one, compiled
//! for the CPU's widest SIMD (`vectorized`). Output rows are shared out among the threads.
//!
//! A row of the result is computed the same way whatever the number of rows: batching
//! sequences together never changes any of them (candle picks different kernels by row count
//! for K-quants, which moved logits by up to 0.7).
//!
//! Formats: `blocks` (32 weights a block: Q4_0, Q4_1, Q5_0, Q8_0, against ggml's Q8_0/Q8_1
//! activations, kept in groups of 16 rows: `row_groups`, `GroupedMatrix`) and `k_quants`
//! (256-weight super-blocks: Q4_K, Q6_K, against Q8_K activations, row after row:
//! `QuantizedMatrix`).

#[cfg(target_arch = "x86_64")]
mod avx512;
mod blocks;
mod k_quants;
mod row_groups;

use rayon::prelude::*;

pub use blocks::{Q4_0, Q4_1, Q5_0, Q8_0};
pub use k_quants::{Q4K, Q6K};
pub use row_groups::GroupedMatrix;

use crate::fast_math::vectorized;
use crate::{ModelError, Result};

/// Output rows one task computes at least: enough work to outweigh handing it to a thread when
/// many tokens share the rows.
const ROWS_PER_TASK: usize = 16;
/// Below this many tokens each row is quick work (a decode step of a few sequences), and a
/// product is cut into `TASKS_FOR_FEW_TOKENS` tasks instead: enough for the threads to share
/// evenly, few enough that handing them out costs little (measured on one token: SmolLM2's
/// 1536×576 product 16.5 → 18.9 GMAC/s, Qwen2.5's 4864×896 20.3 → 22.8).
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

/// A weight block format: how it is stored and how it meets an activation block.
pub trait WeightBlock: Sized + Send + Sync {
    /// Bytes of one block in the file.
    const BYTES: usize;
    type Activations: ActivationBlock;
    fn read(bytes: &[u8]) -> Self;
    /// The block's weights as f32, computed as ggml's (and candle's) `dequantize_row` does.
    fn dequantize(&self, out: &mut [f32]);
    /// One row of blocks times one token's activations: the arithmetic that every kernel for
    /// the format computes, to the bit.
    fn dot_row(weights: &[Self], activations: &[Self::Activations]) -> f32;
    /// A product's activations as the format's AVX-512 kernel reads them: quantized once per
    /// product (as `ActivationBlock::quantize` does each block), read once per weight row.
    #[cfg(target_arch = "x86_64")]
    type Avx512Activations: Send + Sync;
    /// `x` (tokens of `cols` values) quantized for the AVX-512 kernel.
    #[cfg(target_arch = "x86_64")]
    fn avx512_activations(cpu: avx512::Avx512, x: &[f32], cols: usize) -> Self::Avx512Activations;
    /// `weights` (rows of `per_row` blocks) times every token's activations into `out`
    /// (`tokens` values a row), as `dot_row` computes each, with AVX-512 VNNI instructions.
    #[cfg(target_arch = "x86_64")]
    fn avx512_rows(
        cpu: avx512::Avx512,
        weights: &[Self],
        per_row: usize,
        activations: &Self::Avx512Activations,
        out: &mut [f32],
    );
}

/// `weights` (rows of `per_row` blocks) times every token's activations (`per_row` blocks each)
/// into `out` (`tokens` values a row): the portable kernel.
#[inline(always)]
fn portable_rows<B: WeightBlock>(
    weights: &[B],
    per_row: usize,
    activations: &[B::Activations],
    out: &mut [f32],
) {
    let tokens = activations.len() / per_row;
    for (row, totals) in weights
        .chunks_exact(per_row)
        .zip(out.chunks_exact_mut(tokens))
    {
        for (total, token) in totals.iter_mut().zip(activations.chunks_exact(per_row)) {
            *total = B::dot_row(row, token);
        }
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
    /// `x` (`tokens` rows of the matrix's column count) times the transposed matrix: `tokens`
    /// rows of the matrix's row count.
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
        let per_row = self.cols / B::Activations::SIZE;
        // Computed output row by output row (each weight row read once for all tokens), then
        // turned to token-major order.
        let mut by_row = vec![0f32; self.rows * tokens];
        // With more tokens a task's rows stay in the cache while tiles of tokens pass over them.
        let rows_per_task = if tokens >= FEW_TOKENS {
            ROWS_PER_TASK
        } else {
            self.rows.div_ceil(TASKS_FOR_FEW_TOKENS).max(ROWS_PER_TASK)
        };
        let tasks = by_row.par_chunks_mut(rows_per_task * tokens).enumerate();
        let weights_of = |task: usize, out: &[f32]| {
            let rows = out.len() / tokens;
            &self.blocks[task * rows_per_task * per_row..][..rows * per_row]
        };
        #[cfg(target_arch = "x86_64")]
        if let Some(cpu) = avx512::Avx512::detect() {
            let activations = B::avx512_activations(cpu, x, self.cols);
            tasks.for_each(|(task, out)| {
                B::avx512_rows(cpu, weights_of(task, out), per_row, &activations, out)
            });
            return token_major(by_row, self.rows, tokens);
        }
        let activations = quantize_tokens::<B::Activations>(x, self.cols);
        tasks.for_each(|(task, out)| {
            let weights = weights_of(task, out);
            vectorized(
                #[inline(always)]
                || portable_rows(weights, per_row, &activations, out),
            )
        });
        token_major(by_row, self.rows, tokens)
    }
}

/// Values computed output row by output row turned to token-major order.
fn token_major(by_row: Vec<f32>, rows: usize, tokens: usize) -> Vec<f32> {
    if tokens == 1 {
        return by_row;
    }
    transpose(&by_row, rows, tokens)
}

/// `rows` × `columns` values, row after row, turned column after column: each task takes a
/// few columns, which it reads as short runs of every row.
fn transpose(values: &[f32], rows: usize, columns: usize) -> Vec<f32> {
    const COLUMNS_PER_TASK: usize = 32;
    let mut out = vec![0f32; values.len()];
    out.par_chunks_mut(COLUMNS_PER_TASK * rows)
        .enumerate()
        .for_each(|(task, out)| {
            let first = task * COLUMNS_PER_TASK;
            let width = out.len() / rows;
            for (row, values) in values.chunks_exact(columns).enumerate() {
                for (column, value) in values[first..first + width].iter().enumerate() {
                    out[column * rows + row] = *value;
                }
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

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

    /// A matrix of K-quant blocks, read back by this module, and its dense weights.
    fn quantized<B: WeightBlock>(
        dtype: GgmlDType,
        rows: usize,
        cols: usize,
    ) -> (QuantizedMatrix<B>, Vec<f32>) {
        let (bytes, dense) = quantized_bytes(dtype, rows, cols);
        (
            QuantizedMatrix::from_bytes(&bytes, rows, cols).unwrap(),
            dense,
        )
    }

    /// Makes a matrix of a tensor's bytes, rows and columns.
    type Reader = fn(&[u8], usize, usize) -> Result<Box<dyn Product>>;

    /// Checks the product of a matrix read by `read` against the dense one, within the error of
    /// 8-bit activations.
    fn check(dtype: GgmlDType, read: Reader) {
        let (rows, cols, tokens) = (37, 512, 3);
        let (bytes, dense) = quantized_bytes(dtype, rows, cols);
        let m = read(&bytes, rows, cols).unwrap();
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

    fn boxed<P: Product + 'static>(read: Result<P>) -> Result<Box<dyn Product>> {
        Ok(Box::new(read?))
    }

    #[test]
    fn every_format_matches_the_dense_product_within_8_bit_rounding() {
        check(GgmlDType::Q4_0, |b, r, c| {
            boxed(GroupedMatrix::<Q4_0>::from_bytes(b, r, c))
        });
        check(GgmlDType::Q4_1, |b, r, c| {
            boxed(GroupedMatrix::<Q4_1>::from_bytes(b, r, c))
        });
        check(GgmlDType::Q5_0, |b, r, c| {
            boxed(GroupedMatrix::<Q5_0>::from_bytes(b, r, c))
        });
        check(GgmlDType::Q8_0, |b, r, c| {
            boxed(GroupedMatrix::<Q8_0>::from_bytes(b, r, c))
        });
        check(GgmlDType::Q4K, |b, r, c| {
            boxed(QuantizedMatrix::<Q4K>::from_bytes(b, r, c))
        });
        check(GgmlDType::Q6K, |b, r, c| {
            boxed(QuantizedMatrix::<Q6K>::from_bytes(b, r, c))
        });
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

    /// The AVX-512 kernel and quantizer against the portable ones, to the bit: rows whose block
    /// count leaves an odd tail after whole chunks, several tokens, one of zeros and one of
    /// values halfway between integers once scaled.
    #[cfg(target_arch = "x86_64")]
    fn simd_matches_portable<B: WeightBlock>(dtype: GgmlDType, cols: usize) {
        let Some(cpu) = avx512::Avx512::detect() else {
            println!("SKIPPED: this CPU has no AVX-512 VNNI, so its kernel cannot be compared");
            return;
        };
        // 31 tokens: a tile of each size (16, 8, 4, 2, 1).
        let (rows, tokens) = (5, 31);
        let (m, _) = quantized::<B>(dtype, rows, cols);
        let x = kernel_test_tokens(tokens, cols);
        let activations: Vec<B::Activations> = x
            .chunks_exact(B::Activations::SIZE)
            .map(B::Activations::quantize)
            .collect();
        let per_row = cols / B::Activations::SIZE;
        let mut portable = vec![0f32; rows * tokens];
        portable_rows(&m.blocks, per_row, &activations, &mut portable);
        let mut simd = vec![0f32; rows * tokens];
        let activations = B::avx512_activations(cpu, &x, cols);
        B::avx512_rows(cpu, &m.blocks, per_row, &activations, &mut simd);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&simd), bits(&portable), "{dtype:?}");
        // A product of one token alone (the decode step's own path), token by token.
        for (token, x) in x.chunks_exact(cols).enumerate() {
            let activations = B::avx512_activations(cpu, x, cols);
            let mut single = vec![0f32; rows];
            B::avx512_rows(cpu, &m.blocks, per_row, &activations, &mut single);
            let expected: Vec<f32> = portable.chunks_exact(tokens).map(|r| r[token]).collect();
            assert_eq!(
                bits(&single),
                bits(&expected),
                "{dtype:?}, token {token} alone"
            );
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx512_k_quant_kernels_equal_the_portable_one_to_the_bit() {
        simd_matches_portable::<Q4K>(GgmlDType::Q4K, 3 * 256);
        simd_matches_portable::<Q6K>(GgmlDType::Q6K, 3 * 256);
    }

    #[test]
    fn a_wrong_size_is_an_error() {
        assert!(GroupedMatrix::<Q4_1>::from_bytes(&[0; 19], 1, 32).is_err());
        assert!(GroupedMatrix::<Q4_1>::from_bytes(&[0; 20], 1, 31).is_err());
        assert!(GroupedMatrix::<Q5_0>::from_bytes(&[0; 20], 1, 32).is_err());
        assert!(QuantizedMatrix::<Q4K>::from_bytes(&[0; 144], 1, 32).is_err());
    }
}
