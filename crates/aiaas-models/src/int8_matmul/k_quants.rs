//! K-quants: super-blocks of 256 weights in sub-blocks with their own scales (Q4_K, Q6_K),
//! against activations quantized to ggml's Q8_K, kept in groups of 16 rows (`row_groups`).
//! Integer sums are exact; the scales apply once per super-block, as in ggml's reference
//! `ggml_vec_dot_q{4,6}_K_q8_K`.

use half::f16;

use super::blocks::half;
use super::row_groups::{nibble_slot, GroupedFormat, GROUP_ROWS};
#[cfg(target_arch = "x86_64")]
use super::simd::Simd;
use super::{quantize_tokens, ActivationBlock};
use crate::fast_math;

pub(super) const SUPER: usize = 256;
/// Values whose sum each activation block keeps.
pub(super) const RUN: usize = 16;

/// 256 activations quantized to 8 bits (ggml's Q8_K), with the sums of each run of 16.
pub struct Q8KActivations {
    pub(super) scale: f32,
    pub(super) values: [i8; SUPER],
    pub(super) sums: [i16; SUPER / RUN],
}

impl ActivationBlock for Q8KActivations {
    const SIZE: usize = SUPER;

    /// ggml's `quantize_row_q8_K_ref`: the value of largest magnitude becomes -127 (the scale
    /// keeps its sign), the others are rounded and clamped; the scale stays f32.
    #[inline(always)]
    fn quantize(x: &[f32]) -> Self {
        let (mut max, mut amax) = (0f32, 0f32);
        for &v in x {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let mut values = [0i8; SUPER];
        let mut sums = [0i16; SUPER / RUN];
        if amax == 0.0 {
            return Self {
                scale: 0.0,
                values,
                sums,
            };
        }
        let inverse = -127.0 / max;
        for (q, v) in values.iter_mut().zip(x) {
            *q = fast_math::round(inverse * v).clamp(-128.0, 127.0) as i8;
        }
        for (sum, run) in sums.iter_mut().zip(values.chunks_exact(16)) {
            *sum = run.iter().map(|&q| i16::from(q)).sum();
        }
        Self {
            scale: 1.0 / inverse,
            values,
            sums,
        }
    }
}

/// Runs of 16 in a super-block: the finest sub-blocks (Q6_K's; a Q4_K sub-block is two).
pub(super) const RUNS: usize = SUPER / RUN;

/// A row's super-block as the portable kernel reads it back from its group.
pub struct SuperRow {
    /// The values in their unsigned form (the format's offset added).
    values: [u8; SUPER],
    /// Each run's sub-block scale and minimum (zeros for formats without).
    run_scales: [i32; RUNS],
    run_mins: [i32; RUNS],
    scale: f32,
    min: f32,
}

/// What a K-quant format tells the shared arithmetic. A format has minimums or an offset, not
/// both: the SIMD kernels' run pairs hold one or the other.
pub trait SuperFormat: Sized {
    /// What the unsigned form adds to the values.
    const OFFSET: u8;
    /// Bits a value takes in the unsigned form.
    const BITS: u32;
    /// Whether blocks subtract minimums (`scale · sᵢ · q - min · mᵢ`).
    const HAS_MIN: bool;
    fn read(bytes: &[u8]) -> Self;
    /// The block as a group packs it (the values in their unsigned form).
    fn row(&self) -> SuperRow;
}

/// One row's super-block times a token's, as ggml's reference `vec_dot` computes it: the exact
/// integer sum of each run's products (less the offset times the run's activation sum) times
/// the run's scale, then `scale · activations' scale · that`, less `min · activations' scale ·
/// the minimums times the run sums`.
#[inline(always)]
fn super_dot<F: SuperFormat>(w: &SuperRow, a: &Q8KActivations) -> f32 {
    let mut sum = 0i32;
    let runs = w.values.chunks_exact(RUN).zip(a.values.chunks_exact(RUN));
    for ((values, activations), scale) in runs.zip(w.run_scales) {
        let mut dot = 0i32;
        for (q, x) in values.iter().zip(activations) {
            dot += (i32::from(*q) - i32::from(F::OFFSET)) * i32::from(*x);
        }
        sum += scale * dot;
    }
    let mut part = w.scale * a.scale * sum as f32;
    if F::HAS_MIN {
        let mins: i32 = a
            .sums
            .iter()
            .zip(w.run_mins)
            .map(|(s, m)| i32::from(*s) * m)
            .sum();
        part -= w.min * a.scale * mins as f32;
    }
    part
}

/// Q4_K and Q6_K in groups of 16 rows: the low four bits of every value, and Q6_K's top two.
/// Register k's byte 4r + i (k < 32): row r's value 4k + i in the low nibble, 128 + 4k + i in
/// the high one; Q6_K's `high_bits` register n's byte 4r + i: the top bits of row r's values
/// 4k + i for k = n, n + 16, n + 32, n + 48, at bits 0-1, 2-3, 4-5 and 6-7.
#[derive(Clone, Copy)]
pub struct SuperGroup<const HIGH_REGISTERS: usize, const SUB_BLOCKS: usize, const SUB_MINS: usize> {
    pub(super) nibbles: [[u8; 64]; 32],
    pub(super) high_bits: [[u8; 64]; HIGH_REGISTERS],
    /// Sub-block s's scale (and minimum) of row r at [s][r]. Q4_K's 6-bit scales fit the signed
    /// bytes as they are.
    pub(super) sub_scales: [[i8; GROUP_ROWS]; SUB_BLOCKS],
    pub(super) sub_mins: [[u8; GROUP_ROWS]; SUB_MINS],
    pub(super) scales: [f16; GROUP_ROWS],
    /// Zeros for Q6_K (32 of its 3,392 bytes).
    pub(super) mins: [f16; GROUP_ROWS],
}

/// Q4_K: 8 sub-blocks of 32 with 6-bit scales and minimums.
pub type Q4KGroup = SuperGroup<0, 8, 8>;
/// Q6_K: 16 sub-blocks of 16 with signed 8-bit scales, six bits a value.
pub type Q6KGroup = SuperGroup<16, 16, 0>;

impl<const HIGH_REGISTERS: usize, const SUB_BLOCKS: usize, const SUB_MINS: usize>
    SuperGroup<HIGH_REGISTERS, SUB_BLOCKS, SUB_MINS>
{
    /// 16 rows' blocks (rows past the matrix: `None`, zeros).
    fn pack(rows: &[Option<SuperRow>; GROUP_ROWS]) -> Self {
        let mut group = Self {
            nibbles: [[0; 64]; 32],
            high_bits: [[0; 64]; HIGH_REGISTERS],
            sub_scales: [[0; GROUP_ROWS]; SUB_BLOCKS],
            sub_mins: [[0; GROUP_ROWS]; SUB_MINS],
            scales: [f16::ZERO; GROUP_ROWS],
            mins: [f16::ZERO; GROUP_ROWS],
        };
        for (r, row) in rows.iter().enumerate() {
            let Some(row) = row else { continue };
            for (v, value) in row.values.iter().enumerate() {
                let (quad, byte) = (v / 4, 4 * r + v % 4);
                let (register, shift) = nibble_slot(quad, 32);
                group.nibbles[register][byte] |= (value & 0x0F) << shift;
                if HIGH_REGISTERS > 0 {
                    group.high_bits[quad % 16][byte] |= (value >> 4) << (2 * (quad / 16));
                }
            }
            let runs_a_sub_block = RUNS / SUB_BLOCKS;
            for s in 0..SUB_BLOCKS {
                group.sub_scales[s][r] = row.run_scales[s * runs_a_sub_block] as i8;
            }
            for s in 0..SUB_MINS {
                group.sub_mins[s][r] = row.run_mins[s * runs_a_sub_block] as u8;
            }
            group.scales[r] = f16::from_f32(row.scale);
            group.mins[r] = f16::from_f32(row.min);
        }
        group
    }

    /// Row `row`'s block.
    fn row(&self, row: usize) -> SuperRow {
        let values = std::array::from_fn(|v| {
            let (quad, byte) = (v / 4, 4 * row + v % 4);
            let (register, shift) = nibble_slot(quad, 32);
            let low = (self.nibbles[register][byte] >> shift) & 0x0F;
            let high = if HIGH_REGISTERS > 0 {
                (self.high_bits[quad % 16][byte] >> (2 * (quad / 16))) & 3
            } else {
                0
            };
            low | (high << 4)
        });
        let runs_a_sub_block = RUNS / SUB_BLOCKS;
        SuperRow {
            values,
            run_scales: std::array::from_fn(|j| {
                i32::from(self.sub_scales[j / runs_a_sub_block][row])
            }),
            run_mins: std::array::from_fn(|j| {
                if SUB_MINS > 0 {
                    i32::from(self.sub_mins[j / runs_a_sub_block][row])
                } else {
                    0
                }
            }),
            scale: self.scales[row].to_f32(),
            min: self.mins[row].to_f32(),
        }
    }
}

/// Q4_K: eight sub-blocks of 32, value `scale · sᵢ · q - min · mᵢ` with q in 0..16 and 6-bit
/// sub-block scales sᵢ and minimums mᵢ.
pub struct Q4K {
    scale: f32,
    min: f32,
    sub_scales: [u8; 8],
    sub_mins: [u8; 8],
    /// Byte j of run r (32 bytes): value 64r + j in the low nibble, 64r + 32 + j in the high.
    nibbles: [u8; SUPER / 2],
}

impl Q4K {
    /// ggml's `get_scale_min_k4`: eight 6-bit scales and eight 6-bit minimums in 12 bytes.
    fn unpack_scales(packed: &[u8]) -> ([u8; 8], [u8; 8]) {
        let (mut scales, mut mins) = ([0u8; 8], [0u8; 8]);
        for j in 0..8 {
            if j < 4 {
                scales[j] = packed[j] & 63;
                mins[j] = packed[j + 4] & 63;
            } else {
                scales[j] = (packed[j + 4] & 0x0F) | ((packed[j - 4] >> 6) << 4);
                mins[j] = (packed[j + 4] >> 4) | ((packed[j] >> 6) << 4);
            }
        }
        (scales, mins)
    }
}

impl SuperFormat for Q4K {
    const OFFSET: u8 = 0;
    const BITS: u32 = 4;
    const HAS_MIN: bool = true;

    fn read(bytes: &[u8]) -> Self {
        let (sub_scales, sub_mins) = Self::unpack_scales(&bytes[4..16]);
        Self {
            scale: half(&bytes[0..2]),
            min: half(&bytes[2..4]),
            sub_scales,
            sub_mins,
            nibbles: bytes[16..]
                .try_into()
                .expect("128 bytes by the block layout"),
        }
    }

    fn row(&self) -> SuperRow {
        SuperRow {
            values: std::array::from_fn(|v| {
                let (run, j) = (v / 64, v % 64);
                let byte = self.nibbles[32 * run + j % 32];
                if j < 32 {
                    byte & 0x0F
                } else {
                    byte >> 4
                }
            }),
            run_scales: std::array::from_fn(|j| i32::from(self.sub_scales[j / 2])),
            run_mins: std::array::from_fn(|j| i32::from(self.sub_mins[j / 2])),
            scale: self.scale,
            min: self.min,
        }
    }
}

/// Q6_K: sixteen sub-blocks of 16, value `scale · sᵢ · (q - 32)` with q in 0..64 (four bits
/// in `low`, two in `high`) and signed 8-bit sub-block scales sᵢ.
pub struct Q6K {
    scale: f32,
    /// Each half (128 values) keeps, for l in 0..32, four values: l and l + 64 in the low and
    /// high nibbles of `low[l]`, l + 32 and l + 96 in those of `low[l + 32]`, with their two top
    /// bits in `high[l]` (bits 0-1, 4-5, 2-3, 6-7 respectively).
    low: [u8; SUPER / 2],
    high: [u8; SUPER / 4],
    sub_scales: [i8; SUPER / 16],
}

impl SuperFormat for Q6K {
    const OFFSET: u8 = 32;
    const BITS: u32 = 6;
    const HAS_MIN: bool = false;

    fn read(bytes: &[u8]) -> Self {
        let mut sub_scales = [0i8; SUPER / 16];
        for (s, b) in sub_scales.iter_mut().zip(&bytes[192..208]) {
            *s = *b as i8;
        }
        Self {
            scale: half(&bytes[208..210]),
            low: bytes[0..128]
                .try_into()
                .expect("128 bytes by the block layout"),
            high: bytes[128..192]
                .try_into()
                .expect("64 bytes by the block layout"),
            sub_scales,
        }
    }

    fn row(&self) -> SuperRow {
        SuperRow {
            values: std::array::from_fn(|v| {
                let (half, k, l) = (v / 128, v % 128 / 32, v % 32);
                let low = &self.low[64 * half..];
                let h = self.high[32 * half + l];
                let nibble = match k {
                    0 => low[l] & 0x0F,
                    1 => low[l + 32] & 0x0F,
                    2 => low[l] >> 4,
                    _ => low[l + 32] >> 4,
                };
                nibble | (((h >> (2 * k)) & 3) << 4)
            }),
            run_scales: self.sub_scales.map(i32::from),
            run_mins: [0; RUNS],
            scale: self.scale,
            min: 0.0,
        }
    }
}

/// A K-quant's `GroupedFormat`: `$format` (a `SuperFormat`) kept as `$group`.
macro_rules! grouped_k_quant {
    ($format:ty, $group:ty, $bytes:expr) => {
        impl GroupedFormat for $format {
            const WEIGHTS: usize = SUPER;
            const BYTES: usize = $bytes;
            type Group = $group;
            type Activations = Q8KActivations;

            fn pack(
                bytes: &[u8],
                rows: usize,
                per_row: usize,
                group: usize,
                block: usize,
            ) -> $group {
                let blocks = std::array::from_fn(|r| {
                    let row = group * GROUP_ROWS + r;
                    let start = (row * per_row + block) * Self::BYTES;
                    (row < rows).then(|| Self::read(&bytes[start..start + Self::BYTES]).row())
                });
                <$group>::pack(&blocks)
            }

            #[inline(always)]
            fn portable_row(
                blocks: &[$group],
                row: usize,
                activations: &[Q8KActivations],
                out: &mut [f32],
            ) {
                let weights: Vec<SuperRow> = blocks.iter().map(|g| g.row(row)).collect();
                for (token, activations) in activations.chunks_exact(blocks.len()).enumerate() {
                    let mut total = 0f32;
                    for (w, a) in weights.iter().zip(activations) {
                        total += super_dot::<Self>(w, a);
                    }
                    out[token * GROUP_ROWS + row] = total;
                }
            }

            fn dequantize_row(blocks: &[$group], row: usize, out: &mut [f32]) {
                for (block, out) in blocks.iter().zip(out.chunks_exact_mut(SUPER)) {
                    dequantize::<Self>(&block.row(row), out);
                }
            }

            #[cfg(target_arch = "x86_64")]
            type SimdActivations = Vec<Q8KActivations>;

            #[cfg(target_arch = "x86_64")]
            fn simd_activations(_: Simd, x: &[f32], cols: usize) -> Vec<Q8KActivations> {
                quantize_tokens(x, cols)
            }

            #[cfg(target_arch = "x86_64")]
            fn simd_groups(
                cpu: Simd,
                groups: &[$group],
                per_row: usize,
                activations: &Vec<Q8KActivations>,
                out: &mut [f32],
            ) {
                cpu.super_groups::<Self, _, _, _>(groups, per_row, activations, out);
            }
        }
    };
}

grouped_k_quant!(Q4K, Q4KGroup, 2 + 2 + 12 + SUPER / 2);
grouped_k_quant!(Q6K, Q6KGroup, SUPER / 2 + SUPER / 4 + SUPER / 16 + 2);

/// A row's super-block as f32, as ggml's `dequantize_row_q{4,6}_K` computes it: `scale · sᵢ`
/// times the value, less `min · mᵢ` where there are minimums.
fn dequantize<F: SuperFormat>(w: &SuperRow, out: &mut [f32]) {
    let runs = w.values.chunks_exact(RUN).zip(out.chunks_exact_mut(RUN));
    for (j, (values, out)) in runs.enumerate() {
        let scale = w.scale * w.run_scales[j] as f32;
        let min = w.min * w.run_mins[j] as f32;
        for (out, q) in out.iter_mut().zip(values) {
            let value = (i16::from(*q) - i16::from(F::OFFSET)) as f32;
            *out = if F::HAS_MIN {
                scale * value - min
            } else {
                scale * value
            };
        }
    }
}
