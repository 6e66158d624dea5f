//! AVX2 kernel for K-quant super-blocks in groups of 16 rows (`k_quants::SuperGroup`): each
//! half of a group's super-block is unpacked once, into 64 registers of four unsigned values a
//! row, and meets every token of the product, a few at a time. Per run of 16 values, broadcast
//! `vpmaddubsw` products are added in 16 bits (as many as cannot pass 2¹⁵), then one
//! `vpmaddwd` by the run's sub-block scale both widens and scales them; the activations' run
//! sums meet the Q4_K minimums (or the Q6_K scales, for the offset of 32) in eight more. Then
//! `super_dot`'s float expression, one vector operation each, added into the token's sums.

use std::arch::x86_64::*;

use bytemuck::{bytes_of, pod_read_unaligned};

use super::super::k_quants::{Q8KActivations, SuperFormat, SuperGroup, RUN, RUNS, SUPER};
use super::super::row_groups::GROUP_ROWS;
use super::{floats, half_of, pairs, HALF_ROWS};

/// Registers of four values a row in a super-block.
const QUADS: usize = SUPER / 4;

/// Half of a group's super-block in registers.
struct HalfSuperRegisters {
    /// Register k, lane r: row r's values 4k to 4k + 3, unsigned.
    quads: [__m256i; QUADS],
    /// Each run's sub-block scale, per row, in both 16-bit halves of the row's lane.
    run_scales: [__m256i; RUNS],
    /// What the activations' run sums meet, two runs to a lane in 16-bit halves: the Q4_K
    /// minimums, or the Q6_K scales (whose products, times the offset, come off the integer
    /// sum).
    run_pairs: [__m256i; RUNS / 2],
    scales: __m256,
    mins: __m256,
}

/// The first eight bytes of `bytes` in the low half of a register.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn eight_bytes(bytes: &[u8]) -> __m128i {
    _mm_cvtsi64_si128(i64::from_le_bytes(pod_read_unaligned(&bytes[..8])))
}

impl<const HIGH_REGISTERS: usize, const SUB_BLOCKS: usize, const SUB_MINS: usize>
    SuperGroup<HIGH_REGISTERS, SUB_BLOCKS, SUB_MINS>
{
    /// Rows `8 · half` to `8 · half + 7`.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn unpack_half(&self, half: usize) -> HalfSuperRegisters {
        let four_bits = _mm256_set1_epi8(0x0F);
        let mut quads = [_mm256_setzero_si256(); QUADS];
        for (k, quad) in quads.iter_mut().enumerate() {
            let nibbles = half_of(&self.nibbles[k % 32], half);
            let nibbles = if k < 32 {
                nibbles
            } else {
                _mm256_srli_epi16::<4>(nibbles)
            };
            *quad = _mm256_and_si256(nibbles, four_bits);
            if HIGH_REGISTERS > 0 {
                let high = half_of(&self.high_bits[k % 16], half);
                let shift = _mm_cvtsi32_si128(2 * (k / 16) as i32);
                let high = _mm256_and_si256(_mm256_srl_epi16(high, shift), _mm256_set1_epi8(3));
                *quad = _mm256_or_si256(*quad, _mm256_slli_epi16::<4>(high));
            }
        }
        let runs_a_sub_block = RUNS / SUB_BLOCKS;
        let rows = HALF_ROWS * half..HALF_ROWS * (half + 1);
        let mut scales_32 = [_mm256_setzero_si256(); RUNS];
        for (j, scale) in scales_32.iter_mut().enumerate() {
            let bytes = bytes_of(&self.sub_scales[j / runs_a_sub_block]);
            *scale = _mm256_cvtepi8_epi32(eight_bytes(&bytes[rows.clone()]));
        }
        let mut run_pairs = [_mm256_setzero_si256(); RUNS / 2];
        for (p, pair) in run_pairs.iter_mut().enumerate() {
            *pair = if SUB_MINS > 0 {
                // Runs 2p and 2p + 1 are sub-block p: its minimum twice.
                let min = _mm256_cvtepu8_epi32(eight_bytes(&self.sub_mins[p][rows.clone()]));
                pairs(min, min)
            } else {
                pairs(scales_32[2 * p], scales_32[2 * p + 1])
            };
        }
        let mut run_scales = [_mm256_setzero_si256(); RUNS];
        for (scale, scale_32) in run_scales.iter_mut().zip(scales_32) {
            *scale = pairs(scale_32, scale_32);
        }
        HalfSuperRegisters {
            quads,
            run_scales,
            run_pairs,
            scales: floats(&self.scales[rows.clone()]),
            mins: floats(&self.mins[rows]),
        }
    }
}

/// Tokens a tile: each unpacked register meets as many before the next is loaded.
const TILE: usize = 4;

#[target_feature(enable = "avx2,fma,f16c")]
pub fn super_groups<F: SuperFormat, const HIGH: usize, const SUBS: usize, const MINS: usize>(
    groups: &[SuperGroup<HIGH, SUBS, MINS>],
    per_row: usize,
    activations: &[Q8KActivations],
    out: &mut [f32],
) {
    let tokens = activations.len() / per_row;
    let groups = groups.chunks_exact(per_row);
    for (group, out) in groups.zip(out.chunks_exact_mut(GROUP_ROWS * tokens)) {
        for half in 0..GROUP_ROWS / HALF_ROWS {
            for (b, block) in group.iter().enumerate() {
                let weights = block.unpack_half(half);
                let whole_tiles = tokens / TILE * TILE;
                for first in (0..whole_tiles).step_by(TILE) {
                    tile_part::<F, TILE>(&weights, activations, per_row, (b, half), first, out);
                }
                for t in whole_tiles..tokens {
                    tile_part::<F, 1>(&weights, activations, per_row, (b, half), t, out);
                }
            }
        }
    }
}

/// Super-block `b`'s share of tokens `first..first + T`, rows of half `half`, added into `out`
/// (the group's, token after token); the first super-block's shares are added to zero, as the
/// portable sum starts, so `out` need not be cleared.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn tile_part<F: SuperFormat, const T: usize>(
    weights: &HalfSuperRegisters,
    activations: &[Q8KActivations],
    per_row: usize,
    (b, half): (usize, usize),
    first: usize,
    out: &mut [f32],
) {
    let mut tokens = [&activations[0]; T];
    let mut quads: [&[[u8; 4]; QUADS]; T] = [bytemuck::cast_ref(&activations[0].values); T];
    for (t, (token, quads)) in tokens.iter_mut().zip(&mut quads).enumerate() {
        *token = &activations[(first + t) * per_row + b];
        *quads = bytemuck::cast_ref(&token.values);
    }
    // Products of values below 2^BITS and activations of magnitude 128 or less, added in 16
    // bits as many at a time as cannot pass 2¹⁵ (Q4_K: a run's four, Q6_K: two).
    let largest_pair = 2 * 128 * ((1 << F::BITS) - 1);
    let in_16_bits = (i16::MAX as usize / largest_pair).min(RUN / 4);
    let parts_a_run = RUN / 4 / in_16_bits;
    let mut sums = [_mm256_setzero_si256(); T];
    for (p, part) in weights.quads.chunks_exact(in_16_bits).enumerate() {
        let run_scale = weights.run_scales[p / parts_a_run];
        for (sum, quads) in sums.iter_mut().zip(quads) {
            let mut pairs = _mm256_setzero_si256();
            for (weights, values) in part.iter().zip(&quads[p * in_16_bits..]) {
                let values = _mm256_set1_epi32(i32::from_le_bytes(*values));
                pairs = _mm256_add_epi16(pairs, _mm256_maddubs_epi16(*weights, values));
            }
            *sum = _mm256_add_epi32(*sum, _mm256_madd_epi16(pairs, run_scale));
        }
    }
    for (t, (sum, a)) in sums.into_iter().zip(tokens).enumerate() {
        let run_sums: &[[u8; 4]; RUNS / 2] = bytemuck::cast_ref(&a.sums);
        let mut paired = _mm256_setzero_si256();
        for (pair, sums) in weights.run_pairs.iter().zip(run_sums) {
            let sums = _mm256_set1_epi32(i32::from_le_bytes(*sums));
            let products = _mm256_madd_epi16(*pair, sums);
            paired = _mm256_add_epi32(paired, products);
        }
        let scale = _mm256_set1_ps(a.scale);
        let part = if F::HAS_MIN {
            let sum = _mm256_mul_ps(
                _mm256_mul_ps(weights.scales, scale),
                _mm256_cvtepi32_ps(sum),
            );
            let mins = _mm256_mul_ps(
                _mm256_mul_ps(weights.mins, scale),
                _mm256_cvtepi32_ps(paired),
            );
            _mm256_sub_ps(sum, mins)
        } else {
            // The offset times the scaled run sums comes off.
            let offset = _mm256_set1_epi32(i32::from(F::OFFSET));
            let sum = _mm256_sub_epi32(sum, _mm256_mullo_epi32(paired, offset));
            _mm256_mul_ps(
                _mm256_mul_ps(weights.scales, scale),
                _mm256_cvtepi32_ps(sum),
            )
        };
        let out = &mut out[(first + t) * GROUP_ROWS + HALF_ROWS * half..][..HALF_ROWS];
        let total: __m256 = if b == 0 {
            _mm256_setzero_ps()
        } else {
            pod_read_unaligned(bytemuck::cast_slice(out))
        };
        let total: [f32; HALF_ROWS] = bytemuck::cast(_mm256_add_ps(total, part));
        out.copy_from_slice(&total);
    }
}
