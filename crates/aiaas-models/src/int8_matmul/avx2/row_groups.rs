//! The AVX2 kernel of 32-weight blocks in groups of 16 rows (`row_groups`): each half of a
//! group's block is unpacked once into eight registers of four weights a row, which meet a
//! tile of tokens; per token, eight broadcast `vpmaddubsw` and the widening to 32 bits leave
//! each row's exact integer sum in its lane (started from minus the weights' offset times the
//! activations' sum, for the unsigned forms). Then, per block and token, `dot_row`'s float
//! steps, one vector operation each.

use std::arch::x86_64::*;

use super::super::blocks::{Block32, Q8Activations, BLOCK};
use super::super::row_groups::{ByteGroup, NibbleGroup, GROUP_ROWS};
use super::super::simd::TokenBlocks;
use super::super::ActivationBlock;
use super::{floats, half_of, widened, HALF_ROWS};

/// Half of a group's block in registers: the weights (register k, lane r: row r's values 4k to
/// 4k + 3), the scales and the minimums (zeros for formats without).
pub struct HalfRegisters {
    quads: [__m256i; BLOCK / 4],
    scales: __m256,
    mins: __m256,
}

/// A group layout's unpacking into registers, and its integer sums.
pub trait Unpack {
    /// Whether the registers hold the weights signed (the offset taken off) rather than in
    /// the unsigned form: their sums then start from zero.
    const SIGNED: bool;

    /// Rows `8 · half` to `8 · half + 7`.
    ///
    /// # Safety
    /// Only on a CPU with AVX2, FMA and F16C.
    unsafe fn unpack(&self, half: usize) -> HalfRegisters;

    /// Each row's exact integer sum of its weights times a token's block `values` (four a
    /// word), from `start`.
    ///
    /// # Safety
    /// Only on a CPU with AVX2, FMA and F16C.
    unsafe fn integer_sums(
        weights: &HalfRegisters,
        values: &[i32; BLOCK / 4],
        start: i32,
    ) -> __m256i;
}

/// The integer sums of unsigned weights, `vpmaddubsw` products added `in_16_bits` at a time
/// before widening: as many as their 16-bit sums cannot overflow.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn unsigned_sums(
    quads: &[__m256i; BLOCK / 4],
    values: &[i32; BLOCK / 4],
    start: i32,
    in_16_bits: usize,
) -> __m256i {
    debug_assert_eq!(quads.len() % in_16_bits, 0);
    let mut integers = _mm256_set1_epi32(start);
    for (quads, values) in quads
        .chunks_exact(in_16_bits)
        .zip(values.chunks_exact(in_16_bits))
    {
        let mut pairs = _mm256_setzero_si256();
        for (quad, values) in quads.iter().zip(values) {
            let products = _mm256_maddubs_epi16(*quad, _mm256_set1_epi32(*values));
            pairs = _mm256_add_epi16(pairs, products);
        }
        integers = _mm256_add_epi32(integers, widened(pairs));
    }
    integers
}

impl<const FIFTH_WORDS: usize, const MINS: usize> Unpack for NibbleGroup<FIFTH_WORDS, MINS> {
    const SIGNED: bool = false;

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn unpack(&self, half: usize) -> HalfRegisters {
        let four_bits = _mm256_set1_epi8(0x0F);
        let mut quads = [_mm256_setzero_si256(); BLOCK / 4];
        for (k, nibbles) in self.nibbles.iter().enumerate() {
            let nibbles = half_of(nibbles, half);
            quads[k] = _mm256_and_si256(nibbles, four_bits);
            quads[k + 4] = _mm256_and_si256(_mm256_srli_epi16::<4>(nibbles), four_bits);
        }
        for (quad, fifth_bits) in quads.iter_mut().zip(&self.fifth_bits) {
            let bits = (fifth_bits >> (32 * half)) as u32;
            *quad = _mm256_add_epi8(
                *quad,
                _mm256_and_si256(bytes_set(bits), _mm256_set1_epi8(16)),
            );
        }
        let mins = if MINS > 0 {
            floats(&self.mins[HALF_ROWS * half..])
        } else {
            _mm256_setzero_ps()
        };
        HalfRegisters {
            quads,
            scales: floats(&self.scales[HALF_ROWS * half..]),
            mins,
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn integer_sums(
        weights: &HalfRegisters,
        values: &[i32; BLOCK / 4],
        start: i32,
    ) -> __m256i {
        // Products of values below 16 (32 with fifth bits) and activations of magnitude 128 or
        // less: eight (four) sums of pairs stay below 2¹⁵.
        let in_16_bits = if FIFTH_WORDS > 0 { 4 } else { 8 };
        unsigned_sums(&weights.quads, values, start, in_16_bits)
    }
}

/// All ones in byte j where bit j of `bits` is set, else zeros.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn bytes_set(bits: u32) -> __m256i {
    // Byte j takes byte j / 8 of the bits (each 128-bit half has all four), then its bit j % 8.
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(bits as i32),
        _mm256_setr_epi64x(
            0,
            0x0101_0101_0101_0101,
            0x0202_0202_0202_0202,
            0x0303_0303_0303_0303,
        ),
    );
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201_u64 as i64);
    _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit)
}

impl Unpack for ByteGroup {
    const SIGNED: bool = true;

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn unpack(&self, half: usize) -> HalfRegisters {
        // The unsigned form less 128: the format's own signed bytes.
        let offset = _mm256_set1_epi8(i8::MIN);
        let mut quads = [_mm256_setzero_si256(); BLOCK / 4];
        for (quad, values) in quads.iter_mut().zip(&self.values) {
            *quad = _mm256_xor_si256(half_of(values, half), offset);
        }
        HalfRegisters {
            quads,
            scales: floats(&self.scales[HALF_ROWS * half..]),
            mins: _mm256_setzero_ps(),
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn integer_sums(
        weights: &HalfRegisters,
        values: &[i32; BLOCK / 4],
        start: i32,
    ) -> __m256i {
        // |w| · (x with w's sign) = w · x, and |w| ≤ 128 fits the unsigned operand: each pair
        // of products stays within 2 · 128 · 127 < 2¹⁵. (An activation of -128, whose sign
        // `vpsignb` cannot turn, comes only from a block too small for its f16 scale, which is
        // then zero: the product is zero whatever the integers.)
        let mut integers = _mm256_set1_epi32(start);
        for (quad, values) in weights.quads.iter().zip(values) {
            let signed = _mm256_sign_epi8(_mm256_set1_epi32(*values), *quad);
            let products = _mm256_maddubs_epi16(_mm256_abs_epi8(*quad), signed);
            integers = _mm256_add_epi32(integers, widened(products));
        }
        integers
    }
}

/// A block of 32 values quantized by `Q8Activations::quantize`, compiled for AVX2: the values
/// four to a word, the scale, the scaled sum and the sum.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn quantize_block(x: &[f32]) -> ([i32; BLOCK / 4], f32, f32, i32) {
    let block = Q8Activations::quantize(x);
    let mut sum = 0;
    for value in block.values {
        sum += i32::from(value);
    }
    (
        bytemuck::cast(block.values),
        block.scale,
        block.scaled_sum,
        sum,
    )
}

#[target_feature(enable = "avx2,fma,f16c")]
pub fn group_rows<B: Block32>(
    groups: &[B::Group],
    per_row: usize,
    activations: &TokenBlocks,
    out: &mut [f32],
) {
    let tokens = activations.tokens;
    let groups = groups.chunks_exact(per_row);
    for (group, out) in groups.zip(out.chunks_exact_mut(GROUP_ROWS * tokens)) {
        for half in 0..GROUP_ROWS / HALF_ROWS {
            in_tiles!(tokens, [4, 2], |first, T| {
                tile::<B, T>(group, half, activations, first, out)
            });
        }
    }
}

/// Half `half` of one group's blocks times tokens `first` to `first + T` (the caller makes
/// sure there are as many), whose sums stay in registers while each block, unpacked once,
/// meets them all; into `out` (the group's, token after token).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn tile<B: Block32, const T: usize>(
    group: &[B::Group],
    half: usize,
    activations: &TokenBlocks,
    first: usize,
    out: &mut [f32],
) {
    let mut sums = [_mm256_setzero_ps(); T];
    for (b, block) in group.iter().enumerate() {
        // SAFETY: this function is compiled for the features `Unpack` needs.
        let weights = unsafe { block.unpack(half) };
        let run = b * activations.tokens + first..b * activations.tokens + first + T;
        let tile = activations.values[run.clone()].iter();
        let tile = tile.zip(&activations.starts[run.clone()]);
        let tile = tile.zip(&activations.scales[run.clone()]);
        let tile = tile.zip(&activations.scaled_sums[run]);
        for (sum, (((values, start), scale), scaled_sum)) in sums.iter_mut().zip(tile) {
            // SAFETY: as `unpack`.
            let integers = unsafe { B::Group::integer_sums(&weights, values, *start) };
            let scale = _mm256_mul_ps(weights.scales, _mm256_set1_ps(*scale));
            *sum = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(integers), *sum);
            if B::HAS_MIN {
                *sum = _mm256_fmadd_ps(weights.mins, _mm256_set1_ps(*scaled_sum), *sum);
            }
        }
    }
    for (t, sum) in sums.into_iter().enumerate() {
        let sum: [f32; HALF_ROWS] = bytemuck::cast(sum);
        out[(first + t) * GROUP_ROWS + HALF_ROWS * half..][..HALF_ROWS].copy_from_slice(&sum);
    }
}
