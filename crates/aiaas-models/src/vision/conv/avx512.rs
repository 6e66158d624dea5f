//! The AVX-512 tile of the pointwise convolution: `R` pixels × 32 outputs of sums in registers
//! (two vectors a pixel) while the inputs stream past, each input value broadcast and
//! multiplied into both vectors by one fused multiply-add; then what follows the convolution,
//! applied in registers, and a (masked, for the last outputs) store.
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

    /// One tile; see `tile`.
    #[inline(always)]
    pub fn tile<const R: usize>(self, tile: Tile<'_>, out: &mut [f32], then: Then) {
        // SAFETY: `self` exists only where `detect` found the features the kernel is compiled
        // for.
        unsafe { tile_kernel::<R>(tile, out, then) }
    }
}

/// Writes the tile's outputs into `out` (its `R` rows, from the tile's first pixel).
#[target_feature(enable = "avx512f")]
#[allow(
    clippy::needless_range_loop,
    reason = "indexed loops keep the sums in registers (see below)"
)]
fn tile_kernel<const R: usize>(tile: Tile<'_>, out: &mut [f32], then: Then) {
    let inputs = tile.weights.len();
    assert!(tile.x.len() >= R * inputs);
    let bias: [__m512; 2] = cast(*tile.bias);
    let mut sums = [bias; R];
    // Plain index loops without bounds checks, which LLVM unrolls over the pixels so that the
    // sums stay in registers (with iterators and checks it kept them on the stack).
    for (k, weights) in tile.weights.iter().enumerate() {
        let weights: [__m512; 2] = cast(*weights);
        for r in 0..R {
            // SAFETY: `x` holds `R` rows of `inputs` values (asserted above).
            let value = _mm512_set1_ps(unsafe { *tile.x.get_unchecked(r * inputs + k) });
            sums[r][0] = _mm512_fmadd_ps(value, weights[0], sums[r][0]);
            sums[r][1] = _mm512_fmadd_ps(value, weights[1], sums[r][1]);
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
        for half in 0..2 {
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
    /// `P` neighbouring output pixels × `V` vectors of channels of a depthwise convolution;
    /// see `depthwise_kernel`.
    #[inline(always)]
    pub fn depthwise<const V: usize, const P: usize>(self, run: DepthwiseRun<'_>, out: &mut [f32]) {
        // SAFETY: as in `tile`.
        unsafe { depthwise_kernel::<V, P>(run, out) }
    }
}

/// Channels `start..start + 16·V` of `P` output pixels: `P × V` vectors of sums in registers,
/// each tap's weight vectors loaded once for the `P` pixels, one fused multiply-add per
/// pixel, vector and tap; then ReLU6 and the stores (pixel `p` at `p · channels` in `out`).
#[target_feature(enable = "avx512f")]
#[allow(
    clippy::needless_range_loop,
    reason = "indexed loops keep the sums in registers"
)]
fn depthwise_kernel<const V: usize, const P: usize>(run: DepthwiseRun<'_>, out: &mut [f32]) {
    let DepthwiseRun {
        x,
        weights,
        bias,
        taps,
        step,
        start,
        channels,
    } = run;
    let width = 16 * V;
    assert!(start + width <= channels && bias.len() == channels);
    assert!(out.len() >= (P - 1) * channels + start + width);
    for &(input, weight) in taps {
        assert!(input + (P - 1) * step + start + width <= x.len());
        assert!(weight + start + width <= weights.len());
    }
    let mut sums = [[_mm512_setzero_ps(); V]; P];
    for v in 0..V {
        // SAFETY: inside `bias` (asserted above).
        let b = unsafe { _mm512_loadu_ps(bias.as_ptr().add(start + 16 * v)) };
        for p in 0..P {
            sums[p][v] = b;
        }
    }
    for &(input, weight) in taps {
        // SAFETY: these pointers, and the ones read below from them, stay inside `weights`
        // and `x` (asserted above for every tap).
        let (weights, inputs) = unsafe {
            (
                weights.as_ptr().add(weight + start),
                x.as_ptr().add(input + start),
            )
        };
        for v in 0..V {
            // SAFETY: see above.
            let w = unsafe { _mm512_loadu_ps(weights.add(16 * v)) };
            for p in 0..P {
                // SAFETY: see above.
                let i = unsafe { _mm512_loadu_ps(inputs.add(p * step + 16 * v)) };
                sums[p][v] = _mm512_fmadd_ps(i, w, sums[p][v]);
            }
        }
    }
    let (zero, six) = (_mm512_setzero_ps(), _mm512_set1_ps(6.0));
    for p in 0..P {
        for v in 0..V {
            let sum = _mm512_min_ps(_mm512_max_ps(sums[p][v], zero), six);
            let at = p * channels + start + 16 * v;
            // SAFETY: inside `out` (asserted above).
            unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(at), sum) };
        }
    }
}
