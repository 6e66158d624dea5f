//! AVX-512 VNNI kernels for every format's products. `vpdpbusd` multiplies 64 unsigned bytes by
//! 64 signed bytes and sums each run of four into one of 16 lanes. Matrices are kept in groups
//! of 16 rows, a row a lane, and a token's four activations go to all of them at once, broadcast:
//! `row_groups` for 32-weight blocks, `k_quants` for K-quant super-blocks. Each kernel computes
//! its format's portable arithmetic exactly (integer sums are exact; the float operations are
//! the same, in the same order), so results equal the portable kernel's to the bit, whatever
//! the batch.
//!
//! The kernels are `#[target_feature]` functions, undefined behaviour on a CPU without those
//! instructions: `Avx512` is a token that only `detect` creates, after checking, and
//! `simd::Simd`, which holds it, is the kernels' only caller. Those calls, and the calls of
//! `Unpack::unpack` (a trait method cannot be a safe `#[target_feature]` function), are the
//! `unsafe`.
//!
//! No closure here goes to `Option::map`, `array::map` and their kin: closures carry the target
//! features, and the std functions, compiled without them, cannot inline them (a call per block;
//! measured 2× slower).
#![allow(unsafe_code)]

use std::arch::x86_64::*;

use bytemuck::pod_read_unaligned;
use half::f16;

pub use k_quants::super_groups;
pub use row_groups::{group_rows, quantize_block, Unpack};

mod k_quants;
mod row_groups;

/// Proof that this CPU has AVX-512 F, BW and VNNI.
#[derive(Clone, Copy)]
pub struct Avx512(());

impl Avx512 {
    pub fn detect() -> Option<Self> {
        let found = is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni");
        found.then_some(Self(()))
    }
}

/// 16 half-precision values (the first 16 of `halves`) as floats.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
fn floats(halves: &[f16]) -> __m512 {
    _mm512_cvtph_ps(pod_read_unaligned(bytemuck::cast_slice(&halves[..16])))
}

/// `fast_math::round` of each lane (halves away from zero), as integers.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
fn round_halves_away(x: __m512) -> __m512i {
    let whole = _mm512_roundscale_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(x);
    let half_or_more = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(
        _mm512_abs_ps(_mm512_sub_ps(x, whole)),
        _mm512_set1_ps(0.5),
    );
    let sign = _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(i32::MIN));
    let one = _mm512_castsi512_ps(_mm512_or_si512(
        sign,
        _mm512_castps_si512(_mm512_set1_ps(1.0)),
    ));
    _mm512_cvttps_epi32(_mm512_mask_add_ps(whole, half_or_more, whole, one))
}
