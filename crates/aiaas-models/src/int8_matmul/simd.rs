//! What the x86 SIMD kernels share: which of them runs (`Simd`: AVX-512 VNNI where the CPU has
//! it, else AVX2; its token is the proof that calls of its `#[target_feature]` functions are
//! sound), and the 32-weight formats' activations as both read them (`TokenBlocks`).

#![allow(unsafe_code)]

use std::sync::OnceLock;

use rayon::prelude::*;

use super::avx2::{self, Avx2, Unpack as _};
use super::avx512::{self, Avx512};
use super::blocks::{Block32, BLOCK};
use super::k_quants::{Q8KActivations, SuperFormat, SuperGroup};

/// A SIMD kernel this CPU runs.
#[derive(Clone, Copy)]
pub enum Simd {
    Avx512(Avx512),
    Avx2(Avx2),
}

/// Names the widest kernel the products may use (`avx512`, `avx2`, `portable`), to measure one
/// against another or to step around one; unset: the widest the CPU has.
const KERNEL_VARIABLE: &str = "AIAAS_INT8_KERNEL";

impl Simd {
    /// The widest kernel this CPU has, within `AIAAS_INT8_KERNEL`; `None`: the portable one.
    pub fn detect() -> Option<Self> {
        static CHOSEN: OnceLock<Option<Simd>> = OnceLock::new();
        *CHOSEN.get_or_init(|| {
            let widest = std::env::var(KERNEL_VARIABLE).unwrap_or_default();
            let (avx512, avx2) = match widest.to_ascii_lowercase().as_str() {
                "" | "avx512" => (Avx512::detect(), Avx2::detect()),
                "avx2" => (None, Avx2::detect()),
                "portable" => (None, None),
                _ => {
                    tracing::warn!(
                        value = %widest,
                        "{KERNEL_VARIABLE} is not one of avx512, avx2, portable: ignored"
                    );
                    (Avx512::detect(), Avx2::detect())
                }
            };
            let chosen = avx512.map(Self::Avx512).or(avx2.map(Self::Avx2));
            let name = chosen.map_or("portable", Self::name);
            tracing::info!(kernel = name, "quantized matrix products");
            chosen
        })
    }

    /// Each kernel that this CPU has, widest first.
    #[cfg(test)]
    pub fn every() -> Vec<Self> {
        let avx512 = Avx512::detect().map(Self::Avx512);
        avx512
            .into_iter()
            .chain(Avx2::detect().map(Self::Avx2))
            .collect()
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Avx512(_) => "AVX-512 VNNI",
            Self::Avx2(_) => "AVX2",
        }
    }

    /// What the kernel's integer sums of format `B` take off for the weights' offset: the
    /// format's unsigned offset, or nothing where the kernel's registers hold them signed.
    fn offset<B: Block32>(self) -> u8 {
        match self {
            Self::Avx2(_) if B::Group::SIGNED => 0,
            _ => B::UNSIGNED_OFFSET,
        }
    }

    fn quantize_block(self, x: &[f32]) -> ([i32; BLOCK / 4], f32, f32, i32) {
        // SAFETY: each token exists only where its `detect` found the kernel's features.
        unsafe {
            match self {
                Self::Avx512(_) => avx512::quantize_block(x),
                Self::Avx2(_) => avx2::quantize_block(x),
            }
        }
    }

    /// Groups of 32-weight blocks (`per_row` each) times every token into `out`: group after
    /// group, token after token, 16 rows each.
    pub fn group_rows<B: Block32>(
        self,
        groups: &[B::Group],
        per_row: usize,
        activations: &TokenBlocks,
        out: &mut [f32],
    ) {
        // SAFETY: as in `quantize_block`.
        unsafe {
            match self {
                Self::Avx512(_) => avx512::group_rows::<B>(groups, per_row, activations, out),
                Self::Avx2(_) => avx2::group_rows::<B>(groups, per_row, activations, out),
            }
        }
    }

    /// `group_rows` for groups of K-quant super-blocks of format `F`.
    pub fn super_groups<F: SuperFormat, const HIGH: usize, const SUBS: usize, const MINS: usize>(
        self,
        groups: &[SuperGroup<HIGH, SUBS, MINS>],
        per_row: usize,
        activations: &[Q8KActivations],
        out: &mut [f32],
    ) {
        let kernel = match self {
            Self::Avx512(_) => avx512::super_groups::<F, HIGH, SUBS, MINS>,
            Self::Avx2(_) => avx2::super_groups::<F, HIGH, SUBS, MINS>,
        };
        // SAFETY: as in `quantize_block`.
        unsafe { kernel(groups, per_row, activations, out) }
    }
}

/// A product's tokens quantized for a SIMD kernel, block by block as `Q8Activations::quantize`
/// does, block after block and token after token (token t's block b at `b · tokens + t`): a
/// tile's tokens of one block are one run, checked once rather than token by token.
pub struct TokenBlocks {
    pub(super) tokens: usize,
    /// Each block's values as signed bytes, four to a word: the broadcast operand.
    pub(super) values: Vec<[i32; BLOCK / 4]>,
    pub(super) scales: Vec<f32>,
    /// Minus the weights' offset times the sum of the block's values: where the integer sum of
    /// the unsigned weights' products starts.
    pub(super) starts: Vec<i32>,
    pub(super) scaled_sums: Vec<f32>,
}

/// Blocks one task quantizes: enough to outweigh handing them to a thread.
const BLOCKS_PER_TASK: usize = 256;

impl TokenBlocks {
    /// `x` (tokens of `cols` values) quantized for `cpu`'s kernel of format `B`, shared out
    /// among the threads.
    pub fn quantize<B: Block32>(cpu: Simd, x: &[f32], cols: usize) -> Self {
        let offset = i32::from(cpu.offset::<B>());
        let blocks = x.len() / BLOCK;
        let tokens = x.len() / cols;
        let per_token = cols / BLOCK;
        let mut values = vec![[0i32; BLOCK / 4]; blocks];
        let mut scales = vec![0f32; blocks];
        let mut starts = vec![0i32; blocks];
        let mut scaled_sums = vec![0f32; blocks];
        values
            .par_chunks_mut(BLOCKS_PER_TASK)
            .zip(scales.par_chunks_mut(BLOCKS_PER_TASK))
            .zip(starts.par_chunks_mut(BLOCKS_PER_TASK))
            .zip(scaled_sums.par_chunks_mut(BLOCKS_PER_TASK))
            .enumerate()
            .for_each(|(task, (((values, scales), starts), sums))| {
                let blocks = values.iter_mut().zip(scales).zip(starts).zip(sums);
                for (i, (((values, scale), start), scaled_sum)) in blocks.enumerate() {
                    let (b, t) = (
                        (task * BLOCKS_PER_TASK + i) / tokens,
                        (task * BLOCKS_PER_TASK + i) % tokens,
                    );
                    let x = &x[(t * per_token + b) * BLOCK..][..BLOCK];
                    let sum;
                    (*values, *scale, *scaled_sum, sum) = cpu.quantize_block(x);
                    *start = -offset * sum;
                }
            });
        Self {
            tokens,
            values,
            scales,
            starts,
            scaled_sums,
        }
    }
}
