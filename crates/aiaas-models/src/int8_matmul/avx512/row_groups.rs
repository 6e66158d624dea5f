//! The AVX-512 VNNI kernel of matrices in groups of 16 rows (`row_groups`): each block of a
//! group is unpacked once into eight registers of four unsigned weights a row, which meet a tile
//! of up to 16 tokens; each token's four activations go to all 16 rows in one broadcast
//! `vpdpbusd`, and after the block's eight each lane holds its row's exact integer sum (started
//! from minus the weights' offset times the activations' sum, which takes the unsigned form's
//! share off). Then, per block and token, `dot_row`'s float steps, one vector operation each.

use std::arch::x86_64::*;

use bytemuck::pod_read_unaligned;
use half::f16;

use super::super::blocks::{Block32, BLOCK};
use super::super::row_groups::{ByteGroup, NibbleGroup, GROUP_ROWS};
use super::super::simd::TokenBlocks;
use super::{floats, round_halves_away};

/// A group's block in registers: the unsigned weights (register k, lane r: row r's values 4k to
/// 4k + 3), the scales and the minimums (zeros for formats without).
pub struct BlockRegisters {
    quads: [__m512i; 8],
    scales: __m512,
    mins: __m512,
}

/// A group layout's unpacking into registers.
pub trait Unpack {
    /// # Safety
    /// Only on a CPU with AVX-512 F, BW and VNNI.
    unsafe fn unpack(&self) -> BlockRegisters;
}

impl<const FIFTH_WORDS: usize, const MINS: usize> Unpack for NibbleGroup<FIFTH_WORDS, MINS> {
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    #[inline]
    unsafe fn unpack(&self) -> BlockRegisters {
        let four_bits = _mm512_set1_epi8(0x0F);
        let mut quads = [_mm512_setzero_si512(); 8];
        for (k, nibbles) in self.nibbles.iter().enumerate() {
            let nibbles: __m512i = pod_read_unaligned(nibbles);
            quads[k] = _mm512_and_si512(nibbles, four_bits);
            quads[k + 4] = _mm512_and_si512(_mm512_srli_epi16::<4>(nibbles), four_bits);
        }
        for (quad, fifth_bits) in quads.iter_mut().zip(&self.fifth_bits) {
            *quad = _mm512_mask_add_epi8(*quad, *fifth_bits, *quad, _mm512_set1_epi8(16));
        }
        let mins = if MINS > 0 {
            floats(&self.mins)
        } else {
            _mm512_setzero_ps()
        };
        BlockRegisters {
            quads,
            scales: floats(&self.scales),
            mins,
        }
    }
}

impl Unpack for ByteGroup {
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    #[inline]
    unsafe fn unpack(&self) -> BlockRegisters {
        let mut quads = [_mm512_setzero_si512(); 8];
        for (quad, values) in quads.iter_mut().zip(&self.values) {
            *quad = pod_read_unaligned(values);
        }
        BlockRegisters {
            quads,
            scales: floats(&self.scales),
            mins: _mm512_setzero_ps(),
        }
    }
}

/// A block of 32 values quantized as `Q8Activations::quantize` does: the values four to a word,
/// the scale, the scaled sum and the sum.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub fn quantize_block(x: &[f32]) -> ([i32; BLOCK / 4], f32, f32, i32) {
    let low: __m512 = pod_read_unaligned(bytemuck::cast_slice(&x[..16]));
    let high: __m512 = pod_read_unaligned(bytemuck::cast_slice(&x[16..BLOCK]));
    let max = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(low), _mm512_abs_ps(high)));
    let step = max / 127.0;
    let inverse = _mm512_set1_ps(if step != 0.0 { 1.0 / step } else { 0.0 });
    let low = round_halves_away(_mm512_mul_ps(low, inverse));
    let high = round_halves_away(_mm512_mul_ps(high, inverse));
    let sum = _mm512_reduce_add_epi32(_mm512_add_epi32(low, high));
    let bytes = [_mm512_cvtepi32_epi8(low), _mm512_cvtepi32_epi8(high)];
    let step = f16::from_f32(step);
    let scaled_sum = (f16::from_f32(sum as f32) * step).to_f32();
    (bytemuck::cast(bytes), step.to_f32(), scaled_sum, sum)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub fn group_rows<B: Block32>(
    groups: &[B::Group],
    per_row: usize,
    activations: &TokenBlocks,
    out: &mut [f32],
) {
    let tokens = activations.tokens;
    let groups = groups.chunks_exact(per_row);
    for (group, out) in groups.zip(out.chunks_exact_mut(GROUP_ROWS * tokens)) {
        in_tiles!(tokens, [16, 8, 4, 2], |first, T| {
            let out = &mut out[first * GROUP_ROWS..][..T * GROUP_ROWS];
            tile::<B, T>(group, activations, first, out)
        });
    }
}

/// One group's blocks times tokens `first` to `first + T` (at most 16; the caller makes sure
/// there are as many), whose sums stay in registers while each block, unpacked once, meets
/// them all.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
fn tile<B: Block32, const T: usize>(
    group: &[B::Group],
    activations: &TokenBlocks,
    first: usize,
    out: &mut [f32],
) {
    let mut sums = [_mm512_setzero_ps(); T];
    for (b, block) in group.iter().enumerate() {
        // SAFETY: this function is compiled for the features `unpack` needs.
        let weights = unsafe { block.unpack() };
        let run = b * activations.tokens + first..b * activations.tokens + first + T;
        let tile = activations.values[run.clone()].iter();
        let tile = tile.zip(&activations.starts[run.clone()]);
        let tile = tile.zip(&activations.scales[run.clone()]);
        let tile = tile.zip(&activations.scaled_sums[run]);
        for (sum, (((values, start), scale), scaled_sum)) in sums.iter_mut().zip(tile) {
            let mut integers = _mm512_set1_epi32(*start);
            for (quad, values) in weights.quads.iter().zip(values) {
                integers = _mm512_dpbusd_epi32(integers, *quad, _mm512_set1_epi32(*values));
            }
            let scale = _mm512_mul_ps(weights.scales, _mm512_set1_ps(*scale));
            *sum = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(integers), *sum);
            if B::HAS_MIN {
                *sum = _mm512_fmadd_ps(weights.mins, _mm512_set1_ps(*scaled_sum), *sum);
            }
        }
    }
    for (sum, out) in sums.into_iter().zip(out.chunks_exact_mut(GROUP_ROWS)) {
        let sum: [f32; GROUP_ROWS] = bytemuck::cast(sum);
        out.copy_from_slice(&sum);
    }
}
