//! AVX-512 kernels for K-quant super-blocks (`k_quants`): each super-block's exact integer dot
//! product with a token, then the format's float expression, added block after block, as
//! `sequential_dot_row` computes them.
//!
//! Tokens go in tiles of up to 16. For each super-block the integer part takes, per token, four
//! `vpmaddubsw` + `vpmaddwd` pairs (products of two, then times the sub-block scales), which
//! cannot overflow: weights are at most 63 and activations at most 127 in magnitude. The 16
//! tokens' lane sums are then reduced together, into one lane a token (`reduce_16`), so that the
//! activations' scales, the Q4_K minimums and the Q6_K offset (from the activations' sums of
//! each run of 16) apply to the whole tile in a few vector operations.

use std::arch::x86_64::*;

use bytemuck::{bytes_of, pod_read_unaligned};

use super::super::k_quants::{Q8KActivations, Q4K, Q6K, RUN, SUPER};
use super::super::quantize_tokens;
use super::{in_token_order, prefetch_row, reduce_16, Tile, PREFETCH_ROWS_AHEAD};

/// Runs of 16 activations whose sums are read as one pair.
const RUN_PAIRS: usize = SUPER / RUN / 2;

/// A product's activations for the K-quant kernels.
pub struct SuperBlockActivations {
    tokens: usize,
    /// Token after token, block after block.
    blocks: Vec<Q8KActivations>,
    /// Block after block, token after token: each token's scale.
    scales: Vec<f32>,
    /// Block after block, pair of runs after pair, token after token: the two runs' sums.
    run_sums: Vec<[i16; 2]>,
}

impl SuperBlockActivations {
    /// `x` (tokens of `cols` values) quantized as `Q8KActivations::quantize` does.
    pub fn quantize(x: &[f32], cols: usize) -> Self {
        let blocks: Vec<Q8KActivations> = quantize_tokens(x, cols);
        let per_row = cols / SUPER;
        let tokens = x.len() / cols;
        let mut scales = vec![0f32; blocks.len()];
        let mut run_sums = vec![[0i16; 2]; blocks.len() * RUN_PAIRS];
        for (t, token) in blocks.chunks_exact(per_row).enumerate() {
            for (i, block) in token.iter().enumerate() {
                scales[i * tokens + t] = block.scale;
                for (k, pair) in block.sums.chunks_exact(2).enumerate() {
                    run_sums[(i * RUN_PAIRS + k) * tokens + t] = [pair[0], pair[1]];
                }
            }
        }
        Self {
            tokens,
            blocks,
            scales,
            run_sums,
        }
    }
}

/// A super-block unpacked for the integer part: four vectors of 64 unsigned weights in
/// activation order, each with its 32 pairs' sub-block scales (16 bits each), and the
/// coefficient of each run of 16's activation sum, two runs to a 32-bit lane.
struct Unpacked {
    values: [__m512i; 4],
    scales: [__m512i; 4],
    run_coefficients: [i32; RUN_PAIRS],
}

/// Two 16-bit coefficients in one 32-bit lane, the first low.
fn coefficient_pair(first: i16, second: i16) -> i32 {
    i32::from(first as u16) | i32::from(second) << 16
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) fn q4k(
    weights: &[Q4K],
    per_row: usize,
    activations: &SuperBlockActivations,
    out: &mut [f32],
) {
    // Run r: 32 bytes, value 64r + j in the low nibble of byte j and 64r + 32 + j in its high
    // one: sub-block 2r in the low 256 bits, 2r + 1 in the high ones. Minimums multiply the
    // activations' sums: sub-block j's is that of runs 2j and 2j + 1.
    let unpack = |block: &Q4K| {
        let mut values = [_mm512_setzero_si512(); 4];
        let mut scales = [_mm512_setzero_si512(); 4];
        let mut run_coefficients = [0; RUN_PAIRS];
        for run in 0..4 {
            let bytes: __m256i = pod_read_unaligned(&block.nibbles[32 * run..][..32]);
            let high = _mm256_srli_epi16::<4>(bytes);
            let both = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(bytes), high);
            values[run] = _mm512_and_si512(both, _mm512_set1_epi8(0x0F));
            let (low, high) = (block.sub_scales[2 * run], block.sub_scales[2 * run + 1]);
            scales[run] = _mm512_inserti64x4::<1>(
                _mm512_set1_epi16(i16::from(low)),
                _mm256_set1_epi16(i16::from(high)),
            );
        }
        for (pair, min) in run_coefficients.iter_mut().zip(block.sub_mins) {
            *pair = coefficient_pair(i16::from(min), i16::from(min));
        }
        Unpacked {
            values,
            scales,
            run_coefficients,
        }
    };
    // `apply_scales`: the minimums' sum is the runs' part.
    let apply = |block: &Q4K, sums: __m512i, mins: __m512i, scales: __m512| {
        let scaled = _mm512_mul_ps(
            _mm512_mul_ps(_mm512_set1_ps(block.scale), scales),
            _mm512_cvtepi32_ps(sums),
        );
        let min = _mm512_mul_ps(
            _mm512_mul_ps(_mm512_set1_ps(block.min), scales),
            _mm512_cvtepi32_ps(mins),
        );
        _mm512_sub_ps(scaled, min)
    };
    rows_of_super_blocks(weights, per_row, activations, out, unpack, apply);
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) fn q6k(
    weights: &[Q6K],
    per_row: usize,
    activations: &SuperBlockActivations,
    out: &mut [f32],
) {
    // Vector v holds values 64v..64v + 64, sub-blocks 4v..4v + 4 (eight pairs each). In half h,
    // low nibbles of `low` give values 128h + 0..64, high nibbles 128h + 64..128; the two top
    // bits come from `high` (32 bytes) at shifts 0, 2, 4, 6 for each quarter. The offset of 32
    // is taken off through the activations' sums: 32 times each sub-block's (one run's) scale.
    let unpack = |block: &Q6K| {
        let scale_bytes: __m128i = pod_read_unaligned(bytes_of(&block.sub_scales));
        let pair_sub_block = _mm256_setr_epi8(
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3,
            3, 3, 3,
        );
        let scale_bytes = _mm256_broadcastsi128_si256(scale_bytes);
        let mut values = [_mm512_setzero_si512(); 4];
        let mut scales = [_mm512_setzero_si512(); 4];
        for half in 0..2 {
            let low: __m512i = pod_read_unaligned(&block.low[64 * half..][..64]);
            let high: __m256i = pod_read_unaligned(&block.high[32 * half..][..32]);
            let high = _mm512_broadcast_i64x4(high);
            for (k, (nibbles, shifts)) in [(low, (0, 2)), (_mm512_srli_epi16::<4>(low), (4, 6))]
                .into_iter()
                .enumerate()
            {
                let v = 2 * half + k;
                let counts = _mm512_inserti64x4::<1>(
                    _mm512_set1_epi16(shifts.0),
                    _mm256_set1_epi16(shifts.1),
                );
                let top = _mm512_and_si512(_mm512_srlv_epi16(high, counts), _mm512_set1_epi8(3));
                let nibbles = _mm512_and_si512(nibbles, _mm512_set1_epi8(0x0F));
                values[v] = _mm512_or_si512(nibbles, _mm512_slli_epi16::<4>(top));
                let index = _mm256_add_epi8(pair_sub_block, _mm256_set1_epi8(4 * v as i8));
                scales[v] = _mm512_cvtepi8_epi16(_mm256_shuffle_epi8(scale_bytes, index));
            }
        }
        let mut run_coefficients = [0; RUN_PAIRS];
        for (pair, scales) in run_coefficients
            .iter_mut()
            .zip(block.sub_scales.chunks_exact(2))
        {
            *pair = coefficient_pair(32 * i16::from(scales[0]), 32 * i16::from(scales[1]));
        }
        Unpacked {
            values,
            scales,
            run_coefficients,
        }
    };
    // `apply_scales` of the sum less the offset's part.
    let apply = |block: &Q6K, sums: __m512i, offsets: __m512i, scales: __m512| {
        let sums = _mm512_cvtepi32_ps(_mm512_sub_epi32(sums, offsets));
        _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(block.scale), scales), sums)
    };
    rows_of_super_blocks(weights, per_row, activations, out, unpack, apply);
}

/// Rows of super-blocks times every token, in tiles of 16 tokens (then 8, 4, 2, 1): `unpack`
/// gives a block's integer part, `apply` its float expression for each token of a tile, from
/// their integer sums, the sums of their runs times the runs' coefficients, and their scales.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
fn rows_of_super_blocks<B>(
    weights: &[B],
    per_row: usize,
    activations: &SuperBlockActivations,
    out: &mut [f32],
    unpack: impl Fn(&B) -> Unpacked,
    apply: impl Fn(&B, __m512i, __m512i, __m512) -> __m512,
) {
    in_tiles!(activations.tokens, |first, T| {
        let tile = Tile {
            weights,
            per_row,
            activations,
            out: &mut *out,
            first,
        };
        tile.run::<T>(&unpack, &apply)
    });
}

impl<B> Tile<'_, B, SuperBlockActivations> {
    /// Computes `T` tokens (at most 16) from `first` on (the caller makes sure there are as
    /// many).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    #[inline]
    fn run<const T: usize>(
        self,
        unpack: &impl Fn(&B) -> Unpacked,
        apply: &impl Fn(&B, __m512i, __m512i, __m512) -> __m512,
    ) {
        let Self {
            weights,
            per_row,
            activations,
            out,
            first,
        } = self;
        let tokens = activations.tokens;
        let tile = (u32::MAX >> (32 - T)) as u16;
        let rows = weights.chunks_exact(per_row);
        for (r, (row, totals)) in rows.zip(out.chunks_exact_mut(tokens)).enumerate() {
            prefetch_row(weights, per_row, r + PREFETCH_ROWS_AHEAD);
            let mut row_totals = _mm512_setzero_ps();
            for (i, block) in row.iter().enumerate() {
                let w = unpack(block);
                let mut lanes = [_mm512_setzero_si512(); 16];
                for (t, lanes) in lanes[..T].iter_mut().enumerate() {
                    let x = bytes_of(&activations.blocks[(first + t) * per_row + i].values);
                    for (k, (values, scales)) in w.values.iter().zip(&w.scales).enumerate() {
                        let x: __m512i = pod_read_unaligned(&x[64 * k..][..64]);
                        let pairs = _mm512_maddubs_epi16(*values, x);
                        *lanes = _mm512_add_epi32(*lanes, _mm512_madd_epi16(pairs, *scales));
                    }
                }
                let sums = if T == 1 {
                    _mm512_zextsi128_si512(_mm_cvtsi32_si128(_mm512_reduce_add_epi32(lanes[0])))
                } else {
                    // Integer sums: any order gives the same.
                    let add = |a: __m512, b: __m512| {
                        let sum = _mm512_add_epi32(_mm512_castps_si512(a), _mm512_castps_si512(b));
                        _mm512_castsi512_ps(sum)
                    };
                    let sums = in_token_order(reduce_16(&bytemuck::cast(lanes), add));
                    _mm512_castps_si512(sums)
                };
                let runs = if T == 1 {
                    // One token: its 16 run sums times the 16 coefficients, in one register.
                    let a = &activations.blocks[first * per_row + i];
                    let sums: __m256i = pod_read_unaligned(bytes_of(&a.sums));
                    let products = _mm256_madd_epi16(sums, bytemuck::cast(w.run_coefficients));
                    let total = _mm512_reduce_add_epi32(_mm512_zextsi256_si512(products));
                    _mm512_zextsi128_si512(_mm_cvtsi32_si128(total))
                } else {
                    let mut runs = _mm512_setzero_si512();
                    for (k, coefficients) in w.run_coefficients.iter().enumerate() {
                        let run_sums =
                            &activations.run_sums[(i * RUN_PAIRS + k) * tokens + first..];
                        // SAFETY: `T` tokens from `first` on exist.
                        let run_sums =
                            unsafe { _mm512_maskz_loadu_epi32(tile, run_sums.as_ptr().cast()) };
                        let part = _mm512_madd_epi16(run_sums, _mm512_set1_epi32(*coefficients));
                        runs = _mm512_add_epi32(runs, part);
                    }
                    runs
                };
                let scales = &activations.scales[i * tokens + first..];
                // SAFETY: as above.
                let scales = unsafe { _mm512_maskz_loadu_ps(tile, scales.as_ptr()) };
                row_totals = _mm512_add_ps(row_totals, apply(block, sums, runs, scales));
            }
            let row_totals: [f32; 16] = bytemuck::cast(row_totals);
            totals[first..][..T].copy_from_slice(&row_totals[..T]);
        }
    }
}
