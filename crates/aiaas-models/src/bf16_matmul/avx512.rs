//! The AVX-512 BF16 tile: `vdpbf16ps` multiplies 16 lanes of bf16 pairs and adds both products
//! to 16 f32 sums, the second value's first. (For CPUs with AVX-512 BF16 but no AMX; about the
//! f32 FMA rate on this machine.)
//!
//! The kernel is a `#[target_feature]` function, undefined behaviour on a CPU without those
//! instructions: `Avx512Bf16` is a token only `detect` creates, after checking, and its method is
//! the kernel's only caller. This is the module's only `unsafe`.
#![allow(unsafe_code)]

use std::arch::x86_64::*;

use bytemuck::cast;

use super::{GroupSums, PairOfPanels, GROUP_PANELS, LANES, TILE_ROWS};

/// Proof that this CPU has AVX-512 F and BF16.
#[derive(Clone, Copy)]
pub struct Avx512Bf16(());

impl Avx512Bf16 {
    pub fn detect() -> Option<Self> {
        let found = is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16");
        found.then_some(Self(()))
    }

    pub fn tile(self, weights: &[PairOfPanels], rows: &[u32], out: &mut [GroupSums]) {
        // SAFETY: `self` exists only where `detect` found the features the kernel is compiled
        // for.
        unsafe { tile(weights, rows, out) }
    }
}

/// Rows whose sums stay in registers together: 8 rows × 2 panels take 16 of the 32.
const REGISTER_ROWS: usize = 8;

#[target_feature(enable = "avx512f,avx512bf16")]
fn tile(weights: &[PairOfPanels], rows: &[u32], out: &mut [GroupSums]) {
    let pairs = weights.len();
    assert!(rows.len() == TILE_ROWS * pairs && out.len() == TILE_ROWS);
    for (rows, out) in rows
        .chunks_exact(REGISTER_ROWS * pairs)
        .zip(out.chunks_exact_mut(REGISTER_ROWS))
    {
        rows_in_registers(weights, rows, out);
    }
}

#[target_feature(enable = "avx512f,avx512bf16")]
fn rows_in_registers(weights: &[PairOfPanels], rows: &[u32], out: &mut [GroupSums]) {
    let pairs = weights.len();
    let mut sums = [[_mm512_setzero_ps(); GROUP_PANELS]; REGISTER_ROWS];
    for (k, entry) in weights.iter().enumerate() {
        let panels: [__m512bh; GROUP_PANELS] = entry.map(|panel| cast(panel.0));
        for (row, sums) in sums.iter_mut().enumerate() {
            let activations: __m512bh = cast(_mm512_set1_epi32(rows[row * pairs + k] as i32));
            for (sum, &panel) in sums.iter_mut().zip(&panels) {
                *sum = _mm512_dpbf16_ps(*sum, panel, activations);
            }
        }
    }
    for (out, sums) in out.iter_mut().zip(&sums) {
        for (columns, &sum) in out.0.chunks_exact_mut(LANES).zip(sums) {
            columns.copy_from_slice(&cast::<__m512, [f32; LANES]>(sum));
        }
    }
}
