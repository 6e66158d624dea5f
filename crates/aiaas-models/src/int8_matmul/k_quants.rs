//! K-quants: super-blocks of 256 weights in sub-blocks with their own scales (Q4_K, Q6_K),
//! against activations quantized to ggml's Q8_K. Integer sums are exact; the scales apply once
//! per super-block, as in ggml's reference `ggml_vec_dot_q{4,6}_K_q8_K`.

use half::f16;

use crate::fast_math;

#[cfg(target_arch = "x86_64")]
use super::avx512::{Avx512, SuperBlockActivations};
use super::{ActivationBlock, WeightBlock};

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

/// What the K-quant formats share: an exact integer dot product with a super-block of
/// activations, and the float expression that turns it into the block's share of the row.
pub(super) trait SuperBlock {
    fn integer_dot(&self, activations: &Q8KActivations) -> i32;
    fn apply_scales(&self, integer_dot: i32, activations: &Q8KActivations) -> f32;
}

/// K-quant products: exact integer sums, then one float expression a super-block, added block
/// after block, as ggml's reference `vec_dot` computes them; every kernel does the same.
#[inline(always)]
fn sequential_dot_row<B: SuperBlock>(weights: &[B], activations: &[Q8KActivations]) -> f32 {
    let mut total = 0f32;
    for (w, a) in weights.iter().zip(activations) {
        total += w.apply_scales(w.integer_dot(a), a);
    }
    total
}

fn half(bytes: &[u8]) -> f32 {
    f16::from_le_bytes([bytes[0], bytes[1]]).to_f32()
}

/// Q4_K: eight sub-blocks of 32, value `scale · sᵢ · q - min · mᵢ` with q in 0..16 and 6-bit
/// sub-block scales sᵢ and minimums mᵢ.
pub struct Q4K {
    pub(super) scale: f32,
    pub(super) min: f32,
    pub(super) sub_scales: [u8; 8],
    pub(super) sub_mins: [u8; 8],
    /// Byte j of run r (32 bytes): value 64r + j in the low nibble, 64r + 32 + j in the high.
    pub(super) nibbles: [u8; SUPER / 2],
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

impl SuperBlock for Q4K {
    #[inline(always)]
    fn integer_dot(&self, a: &Q8KActivations) -> i32 {
        let mut sum = 0i32;
        for run in 0..4 {
            let nibbles = &self.nibbles[32 * run..32 * run + 32];
            let acts = &a.values[64 * run..64 * run + 64];
            let (mut low, mut high) = (0i32, 0i32);
            for j in 0..32 {
                low += i32::from(nibbles[j] & 0x0F) * i32::from(acts[j]);
                high += i32::from(nibbles[j] >> 4) * i32::from(acts[32 + j]);
            }
            sum += i32::from(self.sub_scales[2 * run]) * low
                + i32::from(self.sub_scales[2 * run + 1]) * high;
        }
        sum
    }

    /// Also subtracts the minimums, whose integer part needs only the activations' run sums.
    #[inline(always)]
    fn apply_scales(&self, sum: i32, a: &Q8KActivations) -> f32 {
        let mut mins = 0i32;
        for (j, s) in a.sums.iter().enumerate() {
            mins += i32::from(*s) * i32::from(self.sub_mins[j / 2]);
        }
        self.scale * a.scale * sum as f32 - self.min * a.scale * mins as f32
    }
}

impl WeightBlock for Q4K {
    const BYTES: usize = 2 + 2 + 12 + SUPER / 2;
    type Activations = Q8KActivations;

    #[cfg(target_arch = "x86_64")]
    type Avx512Activations = SuperBlockActivations;

    #[cfg(target_arch = "x86_64")]
    fn avx512_activations(_: Avx512, x: &[f32], cols: usize) -> SuperBlockActivations {
        SuperBlockActivations::quantize(x, cols)
    }

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

    fn dot_row(weights: &[Self], activations: &[Q8KActivations]) -> f32 {
        sequential_dot_row(weights, activations)
    }

    #[cfg(target_arch = "x86_64")]
    fn avx512_rows(
        cpu: Avx512,
        w: &[Self],
        per_row: usize,
        a: &SuperBlockActivations,
        out: &mut [f32],
    ) {
        cpu.q4k_rows(w, per_row, a, out);
    }

    fn dequantize(&self, out: &mut [f32]) {
        for run in 0..4 {
            let nibbles = &self.nibbles[32 * run..32 * run + 32];
            for (half, shift) in [(0, 0), (1, 4)] {
                let sub = 2 * run + half;
                let scale = self.scale * f32::from(self.sub_scales[sub]);
                let min = self.min * f32::from(self.sub_mins[sub]);
                for (out, byte) in out[32 * sub..32 * sub + 32].iter_mut().zip(nibbles) {
                    *out = scale * f32::from((byte >> shift) & 0x0F) - min;
                }
            }
        }
    }
}

/// Q6_K: sixteen sub-blocks of 16, value `scale · sᵢ · (q - 32)` with q in 0..64 (four bits
/// in `low`, two in `high`) and signed 8-bit sub-block scales sᵢ.
pub struct Q6K {
    pub(super) scale: f32,
    pub(super) low: [u8; SUPER / 2],
    pub(super) high: [u8; SUPER / 4],
    pub(super) sub_scales: [i8; SUPER / 16],
}

impl SuperBlock for Q6K {
    /// Each half (128 values) keeps, for l in 0..32, four values: l and l + 64 in the low and
    /// high nibbles of `low[l]`, l + 32 and l + 96 in those of `low[l + 32]`, with their two top
    /// bits in `high[l]` (bits 0-1, 4-5, 2-3, 6-7 respectively).
    #[inline(always)]
    fn integer_dot(&self, a: &Q8KActivations) -> i32 {
        let mut sum = 0i32;
        for half in 0..2 {
            let low = &self.low[64 * half..64 * half + 64];
            let high = &self.high[32 * half..32 * half + 32];
            let acts = &a.values[128 * half..128 * half + 128];
            let scales = &self.sub_scales[8 * half..8 * half + 8];
            for group in 0..2 {
                let mut parts = [0i32; 4];
                for l in 16 * group..16 * group + 16 {
                    let h = i32::from(high[l]);
                    let q = [
                        (i32::from(low[l] & 0x0F) | ((h & 3) << 4)) - 32,
                        (i32::from(low[l + 32] & 0x0F) | (((h >> 2) & 3) << 4)) - 32,
                        (i32::from(low[l] >> 4) | (((h >> 4) & 3) << 4)) - 32,
                        (i32::from(low[l + 32] >> 4) | (((h >> 6) & 3) << 4)) - 32,
                    ];
                    for (k, part) in parts.iter_mut().enumerate() {
                        *part += q[k] * i32::from(acts[l + 32 * k]);
                    }
                }
                for (k, part) in parts.iter().enumerate() {
                    sum += i32::from(scales[group + 2 * k]) * part;
                }
            }
        }
        sum
    }

    #[inline(always)]
    fn apply_scales(&self, sum: i32, a: &Q8KActivations) -> f32 {
        self.scale * a.scale * sum as f32
    }
}

impl WeightBlock for Q6K {
    const BYTES: usize = SUPER / 2 + SUPER / 4 + SUPER / 16 + 2;
    type Activations = Q8KActivations;

    #[cfg(target_arch = "x86_64")]
    type Avx512Activations = SuperBlockActivations;

    #[cfg(target_arch = "x86_64")]
    fn avx512_activations(_: Avx512, x: &[f32], cols: usize) -> SuperBlockActivations {
        SuperBlockActivations::quantize(x, cols)
    }

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

    fn dot_row(weights: &[Self], activations: &[Q8KActivations]) -> f32 {
        sequential_dot_row(weights, activations)
    }

    #[cfg(target_arch = "x86_64")]
    fn avx512_rows(
        cpu: Avx512,
        w: &[Self],
        per_row: usize,
        a: &SuperBlockActivations,
        out: &mut [f32],
    ) {
        cpu.q6k_rows(w, per_row, a, out);
    }

    fn dequantize(&self, out: &mut [f32]) {
        for half in 0..2 {
            let low = &self.low[64 * half..64 * half + 64];
            let high = &self.high[32 * half..32 * half + 32];
            let scales = &self.sub_scales[8 * half..8 * half + 8];
            let out = &mut out[128 * half..128 * half + 128];
            for l in 0..32 {
                let h = high[l];
                let q = [
                    (low[l] & 0x0F) | ((h & 3) << 4),
                    (low[l + 32] & 0x0F) | (((h >> 2) & 3) << 4),
                    (low[l] >> 4) | (((h >> 4) & 3) << 4),
                    (low[l + 32] >> 4) | (((h >> 6) & 3) << 4),
                ];
                for (k, q) in q.into_iter().enumerate() {
                    let value = f32::from(q as i8 - 32);
                    out[l + 32 * k] = self.scale * f32::from(scales[l / 16 + 2 * k]) * value;
                }
            }
        }
    }
}
