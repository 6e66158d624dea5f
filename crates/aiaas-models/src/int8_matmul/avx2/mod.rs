//! AVX2 kernels for every format's products, for CPUs without AVX-512 VNNI (most laptops, AMD
//! before Zen 4). There is no byte dot product: `vpmaddubsw` multiplies unsigned bytes by
//! signed ones and adds each pair into a 16-bit lane (saturating), `vpmaddwd` adds pairs of
//! those into 32-bit lanes. A group of 16 rows (`row_groups`) is two halves of eight lanes, a
//! row a lane, computed one after the other; a token's four activations go to all eight rows
//! at once, broadcast. Formats whose unsigned values are small add several `vpmaddubsw` in 16
//! bits before widening (as many as cannot overflow); Q8_0 moves its weights' signs onto the
//! activations (ggml's trick), so that no pair saturates. Integer sums are exact and the float
//! operations those of the portable kernel, in its order: results equal it to the bit.
//!
//! As in `avx512`, the kernels are `#[target_feature]` functions whose only caller is
//! `simd::Simd`, holding an `Avx2` token that only `detect` creates, after checking; those calls
//! and `Unpack`'s are the `unsafe`. No closure goes to std helpers (see `avx512`).
#![allow(unsafe_code)]

use std::arch::x86_64::*;

use bytemuck::pod_read_unaligned;
use half::f16;

pub use k_quants::super_groups;
pub use row_groups::{group_rows, quantize_block, Unpack};

mod k_quants;
mod row_groups;

/// Rows of a group in one register of 32-bit lanes.
const HALF_ROWS: usize = 8;

/// Proof that this CPU has AVX2, FMA and F16C.
#[derive(Clone, Copy)]
pub struct Avx2(());

impl Avx2 {
    pub fn detect() -> Option<Self> {
        let found = is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c");
        found.then_some(Self(()))
    }
}

/// Eight half-precision values (the first eight of `halves`) as floats.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn floats(halves: &[f16]) -> __m256 {
    _mm256_cvtph_ps(pod_read_unaligned(bytemuck::cast_slice(
        &halves[..HALF_ROWS],
    )))
}

/// The 32 bytes of a register of byte lanes that hold half `half` of a group's rows.
#[inline]
fn half_of(register: &[u8; 64], half: usize) -> __m256i {
    pod_read_unaligned(&register[32 * half..][..32])
}

/// Each 32-bit lane's two 16-bit halves added (`vpmaddwd` by ones).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn widened(pairs: __m256i) -> __m256i {
    _mm256_madd_epi16(pairs, _mm256_set1_epi16(1))
}

/// Two 32-bit lanes' low 16 bits in one lane, the first low.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn pairs(first: __m256i, second: __m256i) -> __m256i {
    let low = _mm256_and_si256(first, _mm256_set1_epi32(0xFFFF));
    _mm256_or_si256(low, _mm256_slli_epi32::<16>(second))
}
