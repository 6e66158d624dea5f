//! AVX-512 kernel for K-quant super-blocks in groups of 16 rows (`k_quants::SuperGroup`): each
//! super-block of a group is unpacked once, into 64 registers of four unsigned values a row,
//! and meets every token of the product, a few at a time. Per run of 16 values, four broadcast
//! `vpdpbusd` leave each row's exact integer sum in its lane, which one `vpmulld` scales by the
//! run's sub-block scale; the activations' run sums meet the Q4_K minimums (or the Q6_K scales,
//! for the offset of 32) in eight `vpdpwssd` of 16-bit pairs. Then `super_dot`'s float
//! expression, one vector operation each, added into the token's 16 sums.

use std::arch::x86_64::*;

use bytemuck::{bytes_of, pod_read_unaligned};

use super::super::k_quants::{Q8KActivations, SuperFormat, SuperGroup, RUN, RUNS, SUPER};
use super::super::row_groups::GROUP_ROWS;
use super::floats;

/// Registers of four values a row in a super-block.
const QUADS: usize = SUPER / 4;

/// A group's super-block in registers.
struct SuperBlockRegisters {
    /// Register k, lane r: row r's values 4k to 4k + 3, unsigned.
    quads: [__m512i; QUADS],
    /// Each run's sub-block scale, per row.
    run_scales: [__m512i; RUNS],
    /// What the activations' run sums meet, two runs to a lane in 16-bit halves: the Q4_K
    /// minimums, or the Q6_K scales (whose products, times the offset, come off the integer
    /// sum).
    run_pairs: [__m512i; RUNS / 2],
    scales: __m512,
    mins: __m512,
}

/// Two 32-bit lanes' low 16 bits in one lane, the first low.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
fn pairs(first: __m512i, second: __m512i) -> __m512i {
    let low = _mm512_and_si512(first, _mm512_set1_epi32(0xFFFF));
    _mm512_or_si512(low, _mm512_slli_epi32::<16>(second))
}

impl<const HIGH_REGISTERS: usize, const SUB_BLOCKS: usize, const SUB_MINS: usize>
    SuperGroup<HIGH_REGISTERS, SUB_BLOCKS, SUB_MINS>
{
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    #[inline]
    fn unpack(&self) -> SuperBlockRegisters {
        let four_bits = _mm512_set1_epi8(0x0F);
        let mut quads = [_mm512_setzero_si512(); QUADS];
        for (k, quad) in quads.iter_mut().enumerate() {
            let nibbles: __m512i = pod_read_unaligned(&self.nibbles[k % 32]);
            let nibbles = if k < 32 {
                nibbles
            } else {
                _mm512_srli_epi16::<4>(nibbles)
            };
            *quad = _mm512_and_si512(nibbles, four_bits);
            if HIGH_REGISTERS > 0 {
                let high: __m512i = pod_read_unaligned(&self.high_bits[k % 16]);
                let shift = _mm_cvtsi32_si128(2 * (k / 16) as i32);
                let high = _mm512_and_si512(_mm512_srl_epi16(high, shift), _mm512_set1_epi8(3));
                *quad = _mm512_or_si512(*quad, _mm512_slli_epi16::<4>(high));
            }
        }
        let runs_a_sub_block = RUNS / SUB_BLOCKS;
        let mut run_scales = [_mm512_setzero_si512(); RUNS];
        for (j, scale) in run_scales.iter_mut().enumerate() {
            let bytes = bytes_of(&self.sub_scales[j / runs_a_sub_block]);
            *scale = _mm512_cvtepi8_epi32(pod_read_unaligned(bytes));
        }
        let mut run_pairs = [_mm512_setzero_si512(); RUNS / 2];
        for (p, pair) in run_pairs.iter_mut().enumerate() {
            *pair = if SUB_MINS > 0 {
                // Runs 2p and 2p + 1 are sub-block p: its minimum twice.
                let min = _mm512_cvtepu8_epi32(pod_read_unaligned(&self.sub_mins[p]));
                pairs(min, min)
            } else {
                pairs(run_scales[2 * p], run_scales[2 * p + 1])
            };
        }
        SuperBlockRegisters {
            quads,
            run_scales,
            run_pairs,
            scales: floats(&self.scales),
            mins: floats(&self.mins),
        }
    }
}

/// Tokens a tile: each unpacked register meets as many before the next is loaded.
const TILE: usize = 4;

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub fn super_groups<F: SuperFormat, const HIGH: usize, const SUBS: usize, const MINS: usize>(
    groups: &[SuperGroup<HIGH, SUBS, MINS>],
    per_row: usize,
    activations: &[Q8KActivations],
    out: &mut [f32],
) {
    let tokens = activations.len() / per_row;
    let groups = groups.chunks_exact(per_row);
    for (group, out) in groups.zip(out.chunks_exact_mut(GROUP_ROWS * tokens)) {
        for (b, block) in group.iter().enumerate() {
            let weights = block.unpack();
            let whole_tiles = tokens / TILE * TILE;
            for first in (0..whole_tiles).step_by(TILE) {
                let out = &mut out[first * GROUP_ROWS..][..TILE * GROUP_ROWS];
                tile_part::<F, TILE>(&weights, activations, per_row, b, first, out);
            }
            for t in whole_tiles..tokens {
                let out = &mut out[t * GROUP_ROWS..][..GROUP_ROWS];
                tile_part::<F, 1>(&weights, activations, per_row, b, t, out);
            }
        }
    }
}

/// Super-block `b`'s share of tokens `first..first + T`, 16 rows each, added into `out` (token
/// after token); the first super-block's shares are added to zero, as the portable sum starts,
/// so `out` need not be cleared.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
fn tile_part<F: SuperFormat, const T: usize>(
    weights: &SuperBlockRegisters,
    activations: &[Q8KActivations],
    per_row: usize,
    b: usize,
    first: usize,
    out: &mut [f32],
) {
    let mut tokens = [&activations[0]; T];
    let mut quads: [&[[u8; 4]; QUADS]; T] = [bytemuck::cast_ref(&activations[0].values); T];
    for (t, (token, quads)) in tokens.iter_mut().zip(&mut quads).enumerate() {
        *token = &activations[(first + t) * per_row + b];
        *quads = bytemuck::cast_ref(&token.values);
    }
    let mut sums = [_mm512_setzero_si512(); T];
    for (j, run_scale) in weights.run_scales.iter().enumerate() {
        let mut dots = [_mm512_setzero_si512(); T];
        for k in RUN / 4 * j..RUN / 4 * (j + 1) {
            for (dot, quads) in dots.iter_mut().zip(quads) {
                let values = _mm512_set1_epi32(i32::from_le_bytes(quads[k]));
                *dot = _mm512_dpbusd_epi32(*dot, weights.quads[k], values);
            }
        }
        for (sum, dot) in sums.iter_mut().zip(dots) {
            *sum = _mm512_add_epi32(*sum, _mm512_mullo_epi32(dot, *run_scale));
        }
    }
    for ((sum, a), out) in sums
        .into_iter()
        .zip(tokens)
        .zip(out.chunks_exact_mut(GROUP_ROWS))
    {
        let run_sums: &[[u8; 4]; RUNS / 2] = bytemuck::cast_ref(&a.sums);
        let mut paired = _mm512_setzero_si512();
        for (pair, sums) in weights.run_pairs.iter().zip(run_sums) {
            let sums = _mm512_set1_epi32(i32::from_le_bytes(*sums));
            paired = _mm512_dpwssd_epi32(paired, *pair, sums);
        }
        let scale = _mm512_set1_ps(a.scale);
        let part = if F::HAS_MIN {
            let sum = _mm512_mul_ps(
                _mm512_mul_ps(weights.scales, scale),
                _mm512_cvtepi32_ps(sum),
            );
            let mins = _mm512_mul_ps(
                _mm512_mul_ps(weights.mins, scale),
                _mm512_cvtepi32_ps(paired),
            );
            _mm512_sub_ps(sum, mins)
        } else {
            // The offset times the scaled run sums comes off.
            let offset = _mm512_set1_epi32(i32::from(F::OFFSET));
            let sum = _mm512_sub_epi32(sum, _mm512_mullo_epi32(paired, offset));
            _mm512_mul_ps(
                _mm512_mul_ps(weights.scales, scale),
                _mm512_cvtepi32_ps(sum),
            )
        };
        let total: __m512 = if b == 0 {
            _mm512_setzero_ps()
        } else {
            pod_read_unaligned(bytemuck::cast_slice(out))
        };
        let total: [f32; GROUP_ROWS] = bytemuck::cast(_mm512_add_ps(total, part));
        out.copy_from_slice(&total);
    }
}
