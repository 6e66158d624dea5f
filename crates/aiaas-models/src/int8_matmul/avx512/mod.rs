//! AVX-512 VNNI kernels for every format's products. `vpdpbusd` multiplies 64 unsigned bytes by
//! 64 signed bytes and sums each run of four into one of 16 lanes: a pair of 32-weight blocks
//! takes one instruction where the portable loop takes dozens. For 32-weight blocks in tiles of
//! tokens the activations are the unsigned operand (quantized here, once per product, lifted by
//! 128, with the weights' share of the lift taken off once per weight pair), so the token loop
//! does no sign handling; a product of one token (a decode step, where unpacking the weights is
//! most of the work) lets the weights be the unsigned operand instead, with no lift (its
//! activations carry each lane's share of the weights' offset). `dot_row`'s lanes are stored
//! interleaved by block (`interleave_blocks`). K-quants take unsigned weights and signed
//! activations. Each kernel
//! computes its format's `WeightBlock::dot_row` arithmetic exactly (integer sums are exact; the
//! float operations are the same, in the same order), so results equal the portable kernel's to
//! the bit, whatever the batch.
//!
//! Each pair of weight blocks is unpacked once and meets a tile of up to 16 tokens, whose running
//! sums stay in registers; the weights of the row two ahead are prefetched.
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

use bytemuck::{bytes_of, pod_read_unaligned};
use half::f16;
use rayon::prelude::*;

use super::blocks::{Block32, BLOCK, LANES, Q4_0, Q4_1, Q5_0, Q8_0};
use super::k_quants::{Q4K, Q6K};
pub use k_quants::SuperBlockActivations;
use k_quants::{q4k, q6k};

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
    q4_0_rows: q4_0(Q4_0, PairedActivations);
    q4_1_rows: q4_1(Q4_1, PairedActivations);
    q5_0_rows: q5_0(Q5_0, PairedActivations);
    q8_0_rows: q8_0(Q8_0, PairedActivations);
    q4k_rows: q4k(Q4K, SuperBlockActivations);
    q6k_rows: q6k(Q6K, SuperBlockActivations);
}

/// A product's activations for the kernels of 32-weight blocks: each token's blocks in pairs
/// (the last one alone if odd), pair after pair and token after token, so that a tile of
/// tokens reads one run of whole registers for each pair.
pub struct PairedActivations {
    tokens: usize,
    /// Both blocks' values plus 128 (a missing second block: zeros plus 128), as unsigned bytes
    /// in the kernels' lane order (`interleave_blocks`): `vpdpbusd`'s unsigned operand, so that
    /// the weights can be the signed one.
    lifted: Vec<__m512i>,
    /// The two blocks' scales (zero for a missing second block): 8 bytes that one broadcast
    /// load spreads over the interleaved lanes.
    scales: Vec<[f32; 2]>,
    /// The two blocks' scaled sums: the minimums' lanes of 8 tokens (lanes 0 and 8 of each
    /// token's sum in `dot_row`) fill one register.
    scaled_sums: Vec<[f32; 2]>,
    /// A product of one token only (a decode step, where each weight pair meets one token and
    /// its unpacking is most of the work): the values themselves, and where each lane's sum
    /// starts so that the weights' unsigned form (`Block32::UNSIGNED_OFFSET` added) can meet
    /// them as they are, without a lift of their own.
    single: Option<SingleToken>,
}

/// See `PairedActivations::single`.
struct SingleToken {
    /// The lifted values less 128, pair after pair.
    values: Vec<__m512i>,
    /// Minus the offset times each lane's four values.
    starts: Vec<__m512i>,
}

/// Pairs of blocks one task quantizes: enough to outweigh handing them to a thread.
const PAIRS_PER_TASK: usize = 256;

impl PairedActivations {
    /// `x` (tokens of `cols` values) quantized as `Q8Activations::quantize` does each block,
    /// shared out among the threads, for weights whose unsigned form adds `offset`.
    pub fn quantize(cpu: Avx512, x: &[f32], cols: usize, offset: u8) -> Self {
        let tokens = x.len() / cols;
        let per_token = (cols / BLOCK).div_ceil(2);
        let mut lifted = vec![bytemuck::Zeroable::zeroed(); tokens * per_token];
        let mut scales = vec![[0f32; 2]; tokens * per_token];
        let mut scaled_sums = vec![[0f32; 2]; tokens * per_token];
        let task = (PAIRS_PER_TASK.div_ceil(tokens.max(1)) * tokens).max(1);
        lifted
            .par_chunks_mut(task)
            .zip(scales.par_chunks_mut(task))
            .zip(scaled_sums.par_chunks_mut(task))
            .enumerate()
            .for_each(|(n, ((lifted, scales), sums))| {
                let pairs = lifted.iter_mut().zip(scales).zip(sums);
                for (i, ((lifted, scales), sums)) in pairs.enumerate() {
                    let (p, t) = ((n * task + i) / tokens, (n * task + i) % tokens);
                    let token = &x[t * cols..][..cols];
                    let values = &token[2 * BLOCK * p..token.len().min(2 * BLOCK * (p + 1))];
                    (*lifted, *scales, *sums) = cpu.quantize_pair(values);
                }
            });
        let single = (tokens == 1).then(|| cpu.single_token(&lifted, offset));
        Self {
            tokens,
            lifted,
            scales,
            scaled_sums,
            single,
        }
    }
}

impl Avx512 {
    fn single_token(self, lifted: &[__m512i], offset: u8) -> SingleToken {
        // SAFETY: `self` exists only where `detect` found the features.
        unsafe { single_token(lifted, offset) }
    }

    fn quantize_pair(self, x: &[f32]) -> (__m512i, [f32; 2], [f32; 2]) {
        // SAFETY: `self` exists only where `detect` found the features.
        unsafe { quantize_pair(x) }
    }
}

/// One or two blocks of a token's values (`x`) lifted by 128 in the kernels' lane order, with
/// their scales and scaled sums, as `Q8Activations::quantize` computes each block.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn quantize_pair(x: &[f32]) -> (__m512i, [f32; 2], [f32; 2]) {
    // Missing values are zeros: 128 once lifted.
    let mut lifted = [_mm_set1_epi8(-128); 4];
    let mut scales = [0f32; 2];
    let mut scaled_sums = [0f32; 2];
    for (half, x) in x.chunks_exact(BLOCK).enumerate() {
        let low: __m512 = pod_read_unaligned(bytemuck::cast_slice(&x[..16]));
        let high: __m512 = pod_read_unaligned(bytemuck::cast_slice(&x[16..]));
        let max = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(low), _mm512_abs_ps(high)));
        let step = max / 127.0;
        let inverse = _mm512_set1_ps(if step != 0.0 { 1.0 / step } else { 0.0 });
        let low = round_halves_away(_mm512_mul_ps(low, inverse));
        let high = round_halves_away(_mm512_mul_ps(high, inverse));
        let sum = _mm512_reduce_add_epi32(_mm512_add_epi32(low, high));
        let flip = _mm_set1_epi8(-128);
        lifted[2 * half] = _mm_xor_si128(_mm512_cvtepi32_epi8(low), flip);
        lifted[2 * half + 1] = _mm_xor_si128(_mm512_cvtepi32_epi8(high), flip);
        let step = f16::from_f32(step);
        scales[half] = step.to_f32();
        scaled_sums[half] = (f16::from_f32(sum as f32) * step).to_f32();
    }
    (
        interleave_blocks(bytemuck::cast(lifted)),
        scales,
        scaled_sums,
    )
}

/// One token's lifted pairs as `SingleToken`, for weights whose unsigned form adds `offset`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn single_token(lifted: &[__m512i], offset: u8) -> SingleToken {
    let mut values = Vec::with_capacity(lifted.len());
    let mut starts = Vec::with_capacity(lifted.len());
    for pair in lifted {
        let pair = _mm512_xor_si512(*pair, _mm512_set1_epi8(-128));
        let fours = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(1), pair);
        values.push(pair);
        starts.push(_mm512_mullo_epi32(
            fours,
            _mm512_set1_epi32(-i32::from(offset)),
        ));
    }
    SingleToken { values, starts }
}

/// A pair of blocks (the first's 32 bytes, then the second's) in the kernels' lane order: each
/// block's runs of four bytes alternating, so that `dot_row`'s lane l (block l / 8, run l mod 8)
/// is lane 2(l mod 8) + l / 8 here. A pair's two scales then fill the lanes as one 8-byte
/// broadcast, which a load does by itself.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
fn interleave_blocks(pair: __m512i) -> __m512i {
    let order = _mm512_setr_epi32(0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
    _mm512_permutexvar_epi32(order, pair)
}

/// `pair` repeated over the lanes: the first value in the even ones, the second in the odd.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
fn broadcast_pair(pair: [f32; 2]) -> __m512 {
    _mm512_castpd_ps(_mm512_set1_pd(bytemuck::cast(pair)))
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

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn q4_0(weights: &[Q4_0], per_row: usize, activations: &PairedActivations, out: &mut [f32]) {
    let unpack = |a: &Q4_0, b: Option<&Q4_0>| nibbles_to_lanes(nibble_pair(a, b));
    rows_of_pairs(weights, per_row, activations, out, unpack);
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn q4_1(weights: &[Q4_1], per_row: usize, activations: &PairedActivations, out: &mut [f32]) {
    let unpack = |a: &Q4_1, b: Option<&Q4_1>| nibbles_to_lanes(nibble_pair(a, b));
    rows_of_pairs(weights, per_row, activations, out, unpack);
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn q5_0(weights: &[Q5_0], per_row: usize, activations: &PairedActivations, out: &mut [f32]) {
    let unpack = |a: &Q5_0, b: Option<&Q5_0>| {
        let b_bits = if let Some(b) = b { b.high_bits } else { 0 };
        // The fifth bits in `nibble_pair`'s order: a's low 16, b's low 16, a's high, b's high.
        let low = (a.high_bits & 0xFFFF) | (b_bits << 16);
        let high = (a.high_bits >> 16) | (b_bits & 0xFFFF_0000);
        let fifth_bits = u64::from(low) | (u64::from(high) << 32);
        let values = nibble_pair(a, b);
        let sixteen = _mm512_set1_epi8(16);
        nibbles_to_lanes(_mm512_mask_add_epi8(values, fifth_bits, values, sixteen))
    };
    rows_of_pairs(weights, per_row, activations, out, unpack);
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn q8_0(weights: &[Q8_0], per_row: usize, activations: &PairedActivations, out: &mut [f32]) {
    let unpack = |a: &Q8_0, b: Option<&Q8_0>| {
        let b = if let Some(b) = b {
            bytes_of(&b.values)
        } else {
            &[0; 32]
        };
        let values = halves(bytes_of(&a.values), b);
        interleave_blocks(_mm512_xor_si512(values, _mm512_set1_epi8(-128)))
    };
    rows_of_pairs(weights, per_row, activations, out, unpack);
}

/// Rows of 32-weight blocks times every token, as `blocks::dot_row` computes each: `unpack`
/// gives two blocks' weights (the second may be missing: any values) in their unsigned form
/// (`Block32::UNSIGNED_OFFSET` added) as 64 bytes in the kernels' lane order
/// (`interleave_blocks`). Tokens go in tiles of 16 (then 8, 4, 2, 1), whose running sums stay in
/// registers while each pair of weight blocks, unpacked once, meets all of them.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
fn rows_of_pairs<B: Block32>(
    weights: &[B],
    per_row: usize,
    activations: &PairedActivations,
    out: &mut [f32],
    unpack: impl Fn(&B, Option<&B>) -> __m512i,
) {
    if let Some(single) = &activations.single {
        return single_token_rows(weights, per_row, activations, single, out, unpack);
    }
    in_tiles!(activations.tokens, |first, T| {
        let tile = Tile {
            weights,
            per_row,
            activations,
            out: &mut *out,
            first,
        };
        tile.run::<T>(&unpack)
    });
}

/// Weights in their unsigned form (`offset` added) as signed bytes: the offset taken off.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
fn signed(values: __m512i, offset: u8) -> __m512i {
    if offset == 0 {
        return values;
    }
    _mm512_sub_epi8(values, _mm512_set1_epi8(offset as i8))
}

/// `rows_of_pairs` for one token: the weights in their unsigned form meet the token's values
/// as they are (`SingleToken`), the scales and minimums as in a tile of one.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
fn single_token_rows<B: Block32>(
    weights: &[B],
    per_row: usize,
    activations: &PairedActivations,
    single: &SingleToken,
    out: &mut [f32],
    unpack: impl Fn(&B, Option<&B>) -> __m512i,
) {
    let rows = weights.chunks_exact(per_row);
    for (r, (row, total)) in rows.zip(out.iter_mut()).enumerate() {
        prefetch_row(weights, per_row, r + PREFETCH_ROWS_AHEAD);
        let mut lanes = _mm512_setzero_ps();
        let mut min_lanes = _mm512_setzero_ps();
        let pairs = single
            .values
            .iter()
            .zip(&single.starts)
            .zip(&activations.scales);
        let pairs = pairs.zip(&activations.scaled_sums);
        for (blocks, (((x, start), a_scales), scaled_sums)) in row.chunks(2).zip(pairs) {
            let (w, v) = (&blocks[0], blocks.get(1));
            let start = if B::UNSIGNED_OFFSET == 0 {
                _mm512_setzero_si512()
            } else {
                *start
            };
            let sums = _mm512_dpbusd_epi32(start, unpack(w, v), *x);
            let (v_scale, v_min) = match v {
                Some(v) => (v.scale(), v.min()),
                None => (0.0, 0.0),
            };
            let scale = _mm512_mul_ps(
                broadcast_pair([w.scale(), v_scale]),
                broadcast_pair(*a_scales),
            );
            lanes = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), scale, lanes);
            if B::HAS_MIN {
                let mins = broadcast_pair([w.min(), v_min]);
                min_lanes = _mm512_fmadd_ps(mins, broadcast_pair(*scaled_sums), min_lanes);
            }
        }
        *total = sum_lanes(lanes);
        if B::HAS_MIN {
            let [even, odd, ..]: [f32; LANES] = bytemuck::cast(min_lanes);
            // As in a tile: `blocks::sum_lanes` of lanes zero but for 0 and 8.
            *total += (even + odd) + 0.0;
        }
    }
}

/// Tokens `first..` of a product of rows of weight blocks `B` with activations `A`.
struct Tile<'a, B, A> {
    weights: &'a [B],
    per_row: usize,
    activations: &'a A,
    out: &'a mut [f32],
    first: usize,
}

impl<B: Block32> Tile<'_, B, PairedActivations> {
    /// Computes `T` tokens (at most 16) from `first` on (the caller makes sure there are as
    /// many).
    ///
    /// The activations come lifted by 128 (`PairedActivations::lifted`), so one `vpdpbusd`
    /// started from minus 128 times the weights' lane sums gives each lane's exact integer sum;
    /// the scale products and the fused multiply-adds are `dot_row`'s, one vector operation
    /// each. The minimums' lanes 0 and 8 of 8 tokens share one register (lanes 2t and 2t + 1).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    #[inline]
    fn run<const T: usize>(self, unpack: &impl Fn(&B, Option<&B>) -> __m512i) {
        let Self {
            weights,
            per_row,
            activations,
            out,
            first,
        } = self;
        let tokens = activations.tokens;
        // Registers of minimums' lanes: 8 tokens a register.
        let min_registers = T.div_ceil(LANES / 2);
        let last_lanes: u16 = u16::MAX >> (LANES - 2 * (T - LANES / 2 * (min_registers - 1)));
        let rows = weights.chunks_exact(per_row);
        for (r, (row, totals)) in rows.zip(out.chunks_exact_mut(tokens)).enumerate() {
            prefetch_row(weights, per_row, r + PREFETCH_ROWS_AHEAD);
            let mut lanes = [_mm512_setzero_ps(); T];
            let mut min_lanes = [_mm512_setzero_ps(); 2];
            for (p, blocks) in row.chunks(2).enumerate() {
                let (w, v) = (&blocks[0], blocks.get(1));
                let values = signed(unpack(w, v), B::UNSIGNED_OFFSET);
                let lift =
                    _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(-128), values);
                let start = _mm512_sub_epi32(_mm512_setzero_si512(), lift);
                let (v_scale, v_min) = match v {
                    Some(v) => (v.scale(), v.min()),
                    None => (0.0, 0.0),
                };
                let scales = broadcast_pair([w.scale(), v_scale]);
                let tile = p * tokens + first..p * tokens + first + T;
                let pairs = activations.lifted[tile.clone()].iter();
                for (t, (lifted, a_scales)) in pairs.zip(&activations.scales[tile]).enumerate() {
                    let sums = _mm512_dpbusd_epi32(start, *lifted, values);
                    let scale = _mm512_mul_ps(scales, broadcast_pair(*a_scales));
                    lanes[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), scale, lanes[t]);
                }
                if B::HAS_MIN {
                    let mins = broadcast_pair([w.min(), v_min]);
                    for (m, min_lanes) in min_lanes[..min_registers].iter_mut().enumerate() {
                        let first = first + LANES / 2 * m;
                        let sums = activations.scaled_sums[p * tokens + first..].as_ptr();
                        let lanes = if m + 1 == min_registers {
                            last_lanes
                        } else {
                            u16::MAX
                        };
                        // SAFETY: `T` pairs of sums from `first` on exist (`T` tokens do).
                        let sums = unsafe { _mm512_maskz_loadu_ps(lanes, sums.cast()) };
                        *min_lanes = _mm512_fmadd_ps(mins, sums, *min_lanes);
                    }
                }
            }
            let totals = &mut totals[first..][..T];
            if T >= LANES / 2 {
                // The same sums, the tile's tokens at once (tokens past `T` are zeros, dropped).
                let mut sixteen = [_mm512_setzero_ps(); LANES];
                sixteen[..T].copy_from_slice(&lanes);
                let mut sums = reduce_16(&sixteen, |a, b| _mm512_add_ps(a, b));
                if B::HAS_MIN {
                    let mins = min_sums_of_16(min_lanes[0], min_lanes[1]);
                    sums = _mm512_add_ps(sums, mins);
                }
                let sums: [f32; LANES] = bytemuck::cast(in_token_order(sums));
                totals.copy_from_slice(&sums[..T]);
                continue;
            }
            let min_lanes: [[f32; 2]; LANES] = bytemuck::cast(min_lanes);
            for ((total, lanes), [even, odd]) in totals.iter_mut().zip(lanes).zip(min_lanes) {
                *total = sum_lanes(lanes);
                if B::HAS_MIN {
                    // `blocks::sum_lanes` of lanes that are zero but for 0 and 8: their sum,
                    // plus zero (which turns -0 into +0).
                    *total += (even + odd) + 0.0;
                }
            }
        }
    }
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

/// `blocks::sum_lanes` of `dot_row`'s lanes, here interleaved (`interleave_blocks`): lanes i and
/// i + 8 added (here 2i and 2i + 1), then i and i + 4, i and i + 2, the last two.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
fn sum_lanes(lanes: __m512) -> f32 {
    // Sum i at 2i.
    let sixteen = _mm512_add_ps(lanes, _mm512_permute_ps::<0b10_11_00_01>(lanes));
    let high = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(sixteen)));
    let eight = _mm256_add_ps(_mm512_castps512_ps256(sixteen), high);
    let four = _mm_add_ps(
        _mm256_castps256_ps128(eight),
        _mm256_extractf128_ps::<1>(eight),
    );
    _mm_cvtss_f32(_mm_add_ss(four, _mm_movehl_ps(four, four)))
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

/// The minimums' part of 16 tokens (registers of 8 tokens, lanes 2t and 2t + 1), as a tile of
/// fewer tokens adds it, in `reduce_16`'s order.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
fn min_sums_of_16(first: __m512, second: __m512) -> __m512 {
    let sums = _mm512_add_ps(
        _mm512_shuffle_ps::<0b10_00_10_00>(first, second),
        _mm512_shuffle_ps::<0b11_01_11_01>(first, second),
    );
    _mm512_add_ps(sums, _mm512_setzero_ps())
}

/// `reduce_16`'s order to tokens 0 to 15.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
fn in_token_order(sums: __m512) -> __m512 {
    let lane_of_token = _mm512_setr_epi32(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15);
    _mm512_permutexvar_ps(lane_of_token, sums)
}

/// Formats whose low four bits a value sit in 16 bytes of nibbles: value j low in byte j, value
/// j + 16 high.
trait Nibbles {
    fn nibbles(&self) -> &[u8; 16];
}

impl Nibbles for Q4_0 {
    fn nibbles(&self) -> &[u8; 16] {
        &self.nibbles
    }
}

impl Nibbles for Q4_1 {
    fn nibbles(&self) -> &[u8; 16] {
        &self.nibbles
    }
}

impl Nibbles for Q5_0 {
    fn nibbles(&self) -> &[u8; 16] {
        &self.nibbles
    }
}

/// Two blocks' nibbles as 64 values, in 128-bit lanes: block `a`'s values 0-15, `b`'s 0-15,
/// `a`'s 16-31, `b`'s 16-31 (`b`'s zeros if there is none).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
fn nibble_pair<B: Nibbles>(a: &B, b: Option<&B>) -> __m512i {
    let b = match b {
        Some(b) => b.nibbles(),
        None => &[0; 16],
    };
    let both = _mm256_set_m128i(pod_read_unaligned(b), pod_read_unaligned(a.nibbles()));
    let all = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(both), _mm256_srli_epi16::<4>(both));
    _mm512_and_si512(all, _mm512_set1_epi8(0x0F))
}

/// `nibble_pair`'s order to the kernels' lane order (`interleave_blocks`), in one permutation.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
fn nibbles_to_lanes(values: __m512i) -> __m512i {
    let order = _mm512_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15);
    _mm512_permutexvar_epi32(order, values)
}

/// 32 bytes from each slice, `low` then `high`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
fn halves(low: &[u8], high: &[u8]) -> __m512i {
    let low: __m256i = pod_read_unaligned(low);
    let high: __m256i = pod_read_unaligned(high);
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(low), high)
}
