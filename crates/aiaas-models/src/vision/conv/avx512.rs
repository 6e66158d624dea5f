//! The AVX-512 tile of the pointwise convolution: `R` pixels × 32 outputs of sums in registers
//! (two vectors a pixel; one for a layer's last 16 outputs or fewer) while the inputs stream
//! past, each input value broadcast and multiplied into each vector by one fused multiply-add;
//! then what follows the convolution, applied in registers, and a (masked, for the last
//! outputs) store.
//!
//! The kernel is a `#[target_feature]` function, undefined behaviour on a CPU without those
//! instructions: `Avx512` is a token only `detect` creates, after checking, and its method is
//! the kernel's only caller. That and the masked loads and stores, checked against the slices'
//! lengths first, are this module's `unsafe`.
#![allow(unsafe_code)]

use std::arch::x86_64::*;

use bytemuck::cast;

use super::{DepthwiseRun, Then, Tile, GROUP};

/// Proof that this CPU has AVX-512 F.
#[derive(Clone, Copy)]
pub struct Avx512(());

impl Avx512 {
    pub fn detect() -> Option<Self> {
        is_x86_feature_detected!("avx512f").then_some(Self(()))
    }

    /// One tile; see `tile_kernel`. A group of at most 16 outputs (the last of a layer whose
    /// outputs are not a multiple of 32) takes one vector of sums a pixel instead of two.
    #[inline(always)]
    pub fn tile<const R: usize>(self, tile: Tile<'_>, out: &mut [f32], then: Then) {
        // SAFETY: `self` exists only where `detect` found the features the kernel is compiled
        // for.
        unsafe {
            if tile.columns <= 16 {
                tile_kernel::<R, 1>(tile, out, then)
            } else {
                tile_kernel::<R, 2>(tile, out, then)
            }
        }
    }
}

/// Writes the tile's outputs into `out` (its `R` rows, from the tile's first pixel), `N` (1 or
/// 2) vectors of the group's outputs a pixel.
#[target_feature(enable = "avx512f")]
#[allow(
    clippy::needless_range_loop,
    reason = "indexed loops keep the sums in registers (see below)"
)]
fn tile_kernel<const R: usize, const N: usize>(tile: Tile<'_>, out: &mut [f32], then: Then) {
    let inputs = tile.weights.len();
    assert!(tile.x.len() >= R * inputs);
    assert!(N == 2 || tile.columns <= 16 * N);
    let bias: [__m512; 2] = cast(*tile.bias);
    let pixel: [__m512; N] = std::array::from_fn(|half| bias[half]);
    let mut sums = [pixel; R];
    // Plain index loops without bounds checks, which LLVM unrolls over the pixels so that the
    // sums stay in registers (with iterators and checks it kept them on the stack).
    for (k, weights) in tile.weights.iter().enumerate() {
        let weights: [__m512; 2] = cast(*weights);
        for r in 0..R {
            // SAFETY: `x` holds `R` rows of `inputs` values (asserted above).
            let value = _mm512_set1_ps(unsafe { *tile.x.get_unchecked(r * inputs + k) });
            for half in 0..N {
                sums[r][half] = _mm512_fmadd_ps(value, weights[half], sums[r][half]);
            }
        }
    }
    let (columns, outputs) = (tile.columns, tile.outputs);
    assert!(columns <= GROUP && tile.first_column + columns <= outputs);
    assert!(out.len() >= (R - 1) * outputs + tile.first_column + columns);
    // The lanes of each vector inside the group's `columns`.
    let masks: [__mmask16; 2] = [0, 1].map(|half| {
        let lanes = columns.saturating_sub(16 * half).min(16);
        ((1u32 << lanes) - 1) as __mmask16
    });
    // Indexed loops again: a reference to `sums` would keep a copy of them on the stack.
    for r in 0..R {
        let start = r * outputs + tile.first_column;
        let global = (tile.first_pixel + r) * outputs + tile.first_column;
        for half in 0..N {
            let (mut sum, mask) = (sums[r][half], masks[half]);
            if mask == 0 {
                continue;
            }
            match then {
                Then::Relu6 => {
                    sum =
                        _mm512_min_ps(_mm512_max_ps(sum, _mm512_setzero_ps()), _mm512_set1_ps(6.0));
                }
                Then::Nothing => {}
                Then::Add(residual) => {
                    assert!(residual.len() >= global + columns);
                    // SAFETY: the lanes the mask loads are inside `residual` (checked above).
                    let r = unsafe {
                        _mm512_maskz_loadu_ps(mask, residual[global + 16 * half..].as_ptr())
                    };
                    sum = _mm512_add_ps(sum, r);
                }
            }
            // SAFETY: the lanes the mask stores are inside `out` (checked above).
            unsafe { _mm512_mask_storeu_ps(out[start + 16 * half..].as_mut_ptr(), mask, sum) };
        }
    }
}

impl Avx512 {
    /// The channels that whole vectors hold of `P` neighbouring output pixels of a depthwise
    /// convolution (see `depthwise_kernel`); returns how many.
    #[inline(always)]
    pub fn depthwise<const P: usize>(self, run: DepthwiseRun<'_>, out: &mut [f32]) -> usize {
        // SAFETY: as in `tile`.
        unsafe { depthwise_kernel::<P>(run, out) }
    }

    /// The same for a stride-1 run inside the image of a `K`×`K` filter (see
    /// `sliding_kernel`).
    #[inline(always)]
    pub fn depthwise_sliding<const P: usize, const K: usize>(
        self,
        run: DepthwiseRun<'_>,
        out: &mut [f32],
    ) -> usize {
        // SAFETY: as in `tile`.
        unsafe { sliding_kernel::<P, K>(run, out) }
    }
}

/// A stride-1 run of `P` pixels whose taps are the whole `K`×`K` grid (rows of `K` neighbouring
/// inputs), one vector of channels at a time: along each row of taps, each input vector is
/// loaded once and serves every pixel whose window holds it (up to `K`), and the row's `K`
/// weight vectors and `P + K − 1` input vectors stay in registers. Per vector of outputs,
/// `P + K − 1` input loads per row of taps instead of `P · K`. Each pixel's sum takes the taps
/// in the same order as `depthwise_block`'s, so the results are the same to the bit.
#[target_feature(enable = "avx512f")]
#[allow(
    clippy::needless_range_loop,
    reason = "indexed loops keep the sums in registers"
)]
fn sliding_kernel<const P: usize, const K: usize>(run: DepthwiseRun<'_>, out: &mut [f32]) -> usize {
    const MAX_COLUMNS: usize = 16;
    const { assert!(P + K - 1 <= MAX_COLUMNS) };
    let channels = run.bias.len();
    let vector_channels = channels / 16 * 16;
    assert!(run.step == channels && run.taps.len() == K * K);
    assert!(out.len() >= (P - 1) * channels + vector_channels);
    for row in run.taps.chunks_exact(K) {
        let (input, weight) = row[0];
        for (kx, &tap) in row.iter().enumerate() {
            assert!(tap == (input + kx * channels, weight + kx * channels));
        }
        assert!(input + (P + K - 1) * channels <= run.x.len());
        assert!(weight + K * channels <= run.weights.len());
    }
    let (zero, six) = (_mm512_setzero_ps(), _mm512_set1_ps(6.0));
    for start in (0..vector_channels).step_by(16) {
        // SAFETY (each load and store): inside the slices, checked above for every row of
        // taps, column and pixel.
        let mut sums = [unsafe { _mm512_loadu_ps(run.bias.as_ptr().add(start)) }; P];
        for row in run.taps.chunks_exact(K) {
            let (input, weight) = row[0];
            let (inputs, weights) = unsafe {
                (
                    run.x.as_ptr().add(input + start),
                    run.weights.as_ptr().add(weight + start),
                )
            };
            let w: [__m512; K] =
                std::array::from_fn(|kx| unsafe { _mm512_loadu_ps(weights.add(kx * channels)) });
            // The row's `P + K − 1` input columns (constant bounds, so that the loops unroll
            // and everything stays in registers); pixel p's tap kx reads column p + kx.
            let mut columns = [_mm512_setzero_ps(); MAX_COLUMNS];
            for column in 0..P + K - 1 {
                columns[column] = unsafe { _mm512_loadu_ps(inputs.add(column * channels)) };
            }
            for kx in 0..K {
                for p in 0..P {
                    sums[p] = _mm512_fmadd_ps(columns[p + kx], w[kx], sums[p]);
                }
            }
        }
        for p in 0..P {
            let sum = _mm512_min_ps(_mm512_max_ps(sums[p], zero), six);
            unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(p * channels + start), sum) };
        }
    }
    vector_channels
}

/// Output pixel `p` of the run at `p · channels` in `out`. Every read and write is checked
/// against the slices once for the run; then blocks of four vectors of channels (and one block
/// of the vectors left) go through `depthwise_block`.
#[target_feature(enable = "avx512f")]
fn depthwise_kernel<const P: usize>(run: DepthwiseRun<'_>, out: &mut [f32]) -> usize {
    let channels = run.bias.len();
    let vector_channels = channels / 16 * 16;
    assert!(out.len() >= (P - 1) * channels + vector_channels);
    for &(input, weight) in run.taps {
        assert!(input + (P - 1) * run.step + channels <= run.x.len());
        assert!(weight + channels <= run.weights.len());
    }
    let mut start = 0;
    // SAFETY (each block): its channels lie inside `vector_channels`, checked above.
    while start + 64 <= vector_channels {
        unsafe { depthwise_block::<4, P>(&run, start, out) };
        start += 64;
    }
    match (vector_channels - start) / 16 {
        3 => unsafe { depthwise_block::<3, P>(&run, start, out) },
        2 => unsafe { depthwise_block::<2, P>(&run, start, out) },
        1 => unsafe { depthwise_block::<1, P>(&run, start, out) },
        _ => {}
    }
    vector_channels
}

/// Channels `start..start + 16·V` of the run's `P` pixels: `P × V` vectors of sums in
/// registers, each tap's weight vectors loaded once for the `P` pixels, one fused multiply-add
/// per pixel, vector and tap; then ReLU6 and the stores.
///
/// # Safety
/// `depthwise_kernel`'s checks hold for these channels: every tap's inputs for the `P` pixels
/// and its weights, the biases, and the pixels' outputs lie inside their slices.
#[target_feature(enable = "avx512f")]
#[inline]
#[allow(
    clippy::needless_range_loop,
    reason = "indexed loops keep the sums in registers"
)]
unsafe fn depthwise_block<const V: usize, const P: usize>(
    run: &DepthwiseRun<'_>,
    start: usize,
    out: &mut [f32],
) {
    let channels = run.bias.len();
    let mut sums = [[_mm512_setzero_ps(); V]; P];
    for v in 0..V {
        // SAFETY: inside `bias` (the caller's contract).
        let b = unsafe { _mm512_loadu_ps(run.bias.as_ptr().add(start + 16 * v)) };
        for p in 0..P {
            sums[p][v] = b;
        }
    }
    for &(input, weight) in run.taps {
        // SAFETY (this and the reads below): inside `weights` and `x` (the caller's contract).
        let (weights, inputs) = unsafe {
            (
                run.weights.as_ptr().add(weight + start),
                run.x.as_ptr().add(input + start),
            )
        };
        for v in 0..V {
            let w = unsafe { _mm512_loadu_ps(weights.add(16 * v)) };
            for p in 0..P {
                let i = unsafe { _mm512_loadu_ps(inputs.add(p * run.step + 16 * v)) };
                sums[p][v] = _mm512_fmadd_ps(i, w, sums[p][v]);
            }
        }
    }
    let (zero, six) = (_mm512_setzero_ps(), _mm512_set1_ps(6.0));
    for p in 0..P {
        for v in 0..V {
            let sum = _mm512_min_ps(_mm512_max_ps(sums[p][v], zero), six);
            // SAFETY: inside `out` (the caller's contract).
            unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(p * channels + start + 16 * v), sum) };
        }
    }
}
