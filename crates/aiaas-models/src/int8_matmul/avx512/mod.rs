//! AVX-512 VNNI kernels for every format's products. `vpdpbusd` multiplies 64 unsigned bytes by
//! 64 signed bytes and sums each run of four into one of 16 lanes. Matrices of 32-weight blocks
//! go through `row_groups` (16 rows in the lanes); K-quants through `k_quants` (unsigned
//! weights, signed activations, a tile of tokens' lanes reduced together). Each kernel computes
//! its format's portable arithmetic exactly (integer sums are exact; the float operations are
//! the same, in the same order), so results equal the portable kernel's to the bit, whatever
//! the batch.
//!
//! The kernels are `#[target_feature]` functions, undefined behaviour on a CPU without those
//! instructions: `Avx512` is a token that only `detect` creates, after checking, and its methods
//! are the kernels' only callers. Those calls and masked loads are the module's `unsafe`.
//!
//! No closure here goes to `Option::map` and its kin: closures carry the target features, and
//! the std functions, compiled without them, cannot inline them (a call per block pair; measured
//! 2× slower).
#![allow(unsafe_code)]

use std::arch::x86_64::*;

use super::k_quants::{Q4K, Q6K};
pub use k_quants::SuperBlockActivations;
use k_quants::{q4k, q6k};
pub use row_groups::{TokenBlocks, Unpack};

/// Runs `$run` over `$tokens` tokens in tiles of 16 (then 8, 4, 2, 1): `$run` sees the tile's
/// first token as `$first` and its size as the constant `$size` (registers are sized by it).
macro_rules! in_tiles {
    ($tokens:expr, |$first:ident, $size:ident| $run:expr) => {{
        let tokens = $tokens;
        let mut $first = 0;
        while $first < tokens {
            $first += match tokens - $first {
                16.. => {
                    const $size: usize = 16;
                    $run;
                    $size
                }
                8.. => {
                    const $size: usize = 8;
                    $run;
                    $size
                }
                4.. => {
                    const $size: usize = 4;
                    $run;
                    $size
                }
                2.. => {
                    const $size: usize = 2;
                    $run;
                    $size
                }
                _ => {
                    const $size: usize = 1;
                    $run;
                    $size
                }
            };
        }
    }};
}

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

/// A safe method of the token for each kernel.
macro_rules! entry_points {
    ($($method:ident: $kernel:ident($block:ty, $activations:ty);)*) => {
        impl Avx512 {
            $(
                pub fn $method(
                    self,
                    weights: &[$block],
                    per_row: usize,
                    activations: &$activations,
                    out: &mut [f32],
                ) {
                    // SAFETY: `self` exists only where `detect` found the features the kernel
                    // is compiled for.
                    unsafe { $kernel(weights, per_row, activations, out) }
                }
            )*
        }
    };
}

entry_points! {
    q4k_rows: q4k(Q4K, SuperBlockActivations);
    q6k_rows: q6k(Q6K, SuperBlockActivations);
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

/// Tokens `first..` of a product of rows of weight blocks `B` with activations `A`.
struct Tile<'a, B, A> {
    weights: &'a [B],
    per_row: usize,
    activations: &'a A,
    out: &'a mut [f32],
    first: usize,
}

/// How far ahead of the row being computed its successors' weights are fetched into the cache,
/// to hide the memory's latency when a single token makes each row quick work (measured on
/// SmolLM2's decode: 2 rows best, 4 a little slower, 8 much slower).
const PREFETCH_ROWS_AHEAD: usize = 2;

/// Asks for row `row` of `weights` (if there is one) to be brought into the L1 cache.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
fn prefetch_row<B>(weights: &[B], per_row: usize, row: usize) {
    if let Some(blocks) = weights.get(row * per_row..(row + 1) * per_row) {
        let start = blocks.as_ptr().cast::<i8>();
        for offset in (0..size_of_val(blocks)).step_by(64) {
            _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(offset));
        }
    }
}

/// `sum_lanes` of 16 tokens' lanes at once, each by the same additions in the same order
/// (`add`: floats, or integers seen as floats, whose order does not matter): lane 4L + k holds
/// token 2L + k for k < 2 and token 8 + 2L + k - 2 for k ≥ 2 (`in_token_order`).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
fn reduce_16(lanes: &[__m512; 16], add: impl Fn(__m512, __m512) -> __m512) -> __m512 {
    // Neighbouring lanes (dot_row's lanes i and i + 8): 128-bit lane L of vector j holds sums
    // 2L and 2L + 1 of token 2j, then of token 2j + 1.
    let pairs: [__m512; 8] = std::array::from_fn(|j| {
        let (a, b) = (lanes[2 * j], lanes[2 * j + 1]);
        add(
            _mm512_shuffle_ps::<0b10_00_10_00>(a, b),
            _mm512_shuffle_ps::<0b11_01_11_01>(a, b),
        )
    });
    // Sums i and i + 4: 128-bit lanes 0 and 2 take sums 0 and 1 of the two vectors' tokens,
    // lanes 1 and 3 sums 2 and 3.
    let fours: [__m512; 4] = std::array::from_fn(|j| {
        let (a, b) = (pairs[2 * j], pairs[2 * j + 1]);
        add(
            _mm512_shuffle_f32x4::<0b01_00_01_00>(a, b),
            _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b),
        )
    });
    // Sums i and i + 2: 128-bit lane L holds sums 0 and 1 of tokens 8j + 2L and 8j + 2L + 1.
    let twos: [__m512; 2] = std::array::from_fn(|j| {
        let (a, b) = (fours[2 * j], fours[2 * j + 1]);
        add(
            _mm512_shuffle_f32x4::<0b10_00_10_00>(a, b),
            _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b),
        )
    });
    let (a, b) = (twos[0], twos[1]);
    add(
        _mm512_shuffle_ps::<0b10_00_10_00>(a, b),
        _mm512_shuffle_ps::<0b11_01_11_01>(a, b),
    )
}

/// `reduce_16`'s order to tokens 0 to 15.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
fn in_token_order(sums: __m512) -> __m512 {
    let lane_of_token = _mm512_setr_epi32(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15);
    _mm512_permutexvar_ps(lane_of_token, sums)
}
