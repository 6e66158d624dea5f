//! Formats of 32 weights a block (Q4_0, Q4_1, Q5_0, Q8_0) and their activations, ggml's Q8_1
//! (Q8_0 plus the scaled sum that a Q4_1 block's minimum multiplies), and the lane-wise
//! arithmetic of their products (`dot_row`) that every kernel computes to the bit.

use half::f16;

use crate::fast_math;

#[cfg(target_arch = "x86_64")]
use super::avx512::{Avx512, PairedActivations};
use super::{ActivationBlock, WeightBlock};

/// Float lanes of a row's running sum: a 512-bit register of f32.
pub(super) const LANES: usize = 16;

pub(super) const BLOCK: usize = 32;

/// 32 activations quantized to 8 bits.
pub struct Q8Activations {
    pub(super) scale: f32,
    /// The scale times the sum of the values.
    pub(super) scaled_sum: f32,
    pub(super) values: [i8; BLOCK],
}

impl ActivationBlock for Q8Activations {
    const SIZE: usize = BLOCK;

    /// ggml's `quantize_row_q8_1` as candle's CPU path computes it: values scaled so the
    /// largest magnitude is 127 and rounded; the scale in f16, the scaled sum as the f16 product
    /// of the f16 sum and that scale. (Q8_0 is the same without the sum.) This, rather than
    /// llama.cpp's AVX2 variant (`127 / max`, ties to even, the sum times the f32 scale), is
    /// what reproduces llama.cpp's reference outputs token for token (tests/reference).
    #[inline(always)]
    fn quantize(x: &[f32]) -> Self {
        let max = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = max / 127.0;
        let inverse = if scale != 0.0 { 1.0 / scale } else { 0.0 };
        let mut values = [0i8; BLOCK];
        let mut sum = 0i32;
        for (q, v) in values.iter_mut().zip(x) {
            *q = fast_math::round(v * inverse) as i8;
            sum += i32::from(*q);
        }
        let scale = f16::from_f32(scale);
        Self {
            scale: scale.to_f32(),
            scaled_sum: (f16::from_f32(sum as f32) * scale).to_f32(),
            values,
        }
    }
}

/// Q4_0: `scale · (q - 8)` with q in 0..16.
pub struct Q4_0 {
    scale: f32,
    /// Value j in the low nibble of byte j, value j + 16 in its high nibble.
    pub(super) nibbles: [u8; BLOCK / 2],
}

/// Q4_1: `scale · q + min` with q in 0..16.
pub struct Q4_1 {
    scale: f32,
    min: f32,
    pub(super) nibbles: [u8; BLOCK / 2],
}

/// Q5_0: `scale · (q - 16)` with q in 0..32: four bits in the nibbles, the fifth in `high_bits`.
pub struct Q5_0 {
    scale: f32,
    /// Bit j: the fifth bit of value j.
    pub(super) high_bits: u32,
    pub(super) nibbles: [u8; BLOCK / 2],
}

/// Q8_0: `scale · q` with q in -128..128.
pub struct Q8_0 {
    scale: f32,
    pub(super) values: [i8; BLOCK],
}

fn half(bytes: &[u8]) -> f32 {
    f16::from_le_bytes([bytes[0], bytes[1]]).to_f32()
}

fn nibbles(bytes: &[u8]) -> [u8; BLOCK / 2] {
    bytes.try_into().expect("16 bytes by the block layout")
}

/// 32 values from 4-bit nibbles (value j low in byte j, value j + 16 high), each minus
/// `offset`, plus 16 for value j where bit j of `fifth_bits` is set.
fn unpack_nibbles(nibbles: &[u8; BLOCK / 2], fifth_bits: u32, offset: i8) -> [i8; BLOCK] {
    let mut values = [0i8; BLOCK];
    for (j, value) in values.iter_mut().enumerate() {
        let byte = nibbles[j % (BLOCK / 2)];
        let nibble = if j < BLOCK / 2 {
            byte & 0x0F
        } else {
            byte >> 4
        };
        let fifth = ((fifth_bits >> j) & 1) as u8;
        *value = (nibble | (fifth << 4)) as i8 - offset;
    }
    values
}

/// What a format of 32-weight blocks tells the shared arithmetic.
pub(super) trait Block32: Sized + Send + Sync {
    const BYTES: usize;
    /// Whether blocks add a minimum (`scale · q + min`).
    const HAS_MIN: bool = false;
    /// What the AVX-512 kernels' unsigned form of the weights adds to the block's integers.
    const UNSIGNED_OFFSET: u8;
    fn read(bytes: &[u8]) -> Self;
    /// The block's integers in activation order (the weights over the scale).
    fn values(&self) -> [i8; BLOCK];
    fn scale(&self) -> f32;
    fn min(&self) -> f32 {
        0.0
    }
    #[cfg(target_arch = "x86_64")]
    fn avx512_rows(
        cpu: Avx512,
        weights: &[Self],
        per_row: usize,
        activations: &PairedActivations,
        out: &mut [f32],
    );
}

impl<B: Block32> WeightBlock for B {
    const BYTES: usize = B::BYTES;
    type Activations = Q8Activations;

    fn read(bytes: &[u8]) -> Self {
        B::read(bytes)
    }

    /// As ggml's `dequantize_row`: `q · scale`, plus the minimum where there is one.
    fn dequantize(&self, out: &mut [f32]) {
        for (out, q) in out.iter_mut().zip(self.values()) {
            *out = f32::from(q) * self.scale();
            if B::HAS_MIN {
                *out += self.min();
            }
        }
    }

    #[inline(always)]
    fn dot_row(weights: &[Self], activations: &[Q8Activations]) -> f32 {
        dot_row(weights, activations)
    }

    #[cfg(target_arch = "x86_64")]
    type Avx512Activations = PairedActivations;

    #[cfg(target_arch = "x86_64")]
    fn avx512_activations(cpu: Avx512, x: &[f32], cols: usize) -> PairedActivations {
        PairedActivations::quantize(cpu, x, cols, B::UNSIGNED_OFFSET)
    }

    #[cfg(target_arch = "x86_64")]
    fn avx512_rows(
        cpu: Avx512,
        weights: &[Self],
        per_row: usize,
        activations: &PairedActivations,
        out: &mut [f32],
    ) {
        B::avx512_rows(cpu, weights, per_row, activations, out);
    }
}

/// One row times one token, in 16 float lanes over pairs of blocks, as ggml's SIMD kernels
/// sum. Lane l of pair p takes block 2p + l / 8: its values 4(l mod 8) to 4(l mod 8) + 3 meet
/// their activations in an exact integer sum, which the lane adds times the product of the
/// block's and the activations' scales in one fused multiply-add. A lone last block pairs with
/// an empty one (zero weights, activations, scales and minimum). Minimums times the
/// activations' scaled sums accumulate likewise in lanes of their own: lane 0 for the first
/// block of each pair, lane 8 for the second. Each set of lanes is then summed pairwise
/// (`sum_lanes`).
#[inline(always)]
pub(super) fn dot_row<B: Block32>(weights: &[B], activations: &[Q8Activations]) -> f32 {
    let mut lanes = [0f32; LANES];
    let mut min_lanes = [0f32; LANES];
    for (w, a) in weights.chunks(2).zip(activations.chunks(2)) {
        for (half, lanes) in lanes.chunks_exact_mut(LANES / 2).enumerate() {
            let min_lane = &mut min_lanes[half * LANES / 2];
            let (Some(w), Some(a)) = (w.get(half), a.get(half)) else {
                for lane in lanes {
                    *lane = 0f32.mul_add(0.0, *lane);
                }
                if B::HAS_MIN {
                    *min_lane = 0f32.mul_add(0.0, *min_lane);
                }
                continue;
            };
            let scale = w.scale() * a.scale;
            // Whole arrays, so that the compiler vectorizes the products and the sums of four.
            let mut products = [0i32; BLOCK];
            for ((p, w), x) in products.iter_mut().zip(w.values()).zip(a.values) {
                *p = i32::from(w) * i32::from(x);
            }
            for (lane, four) in lanes.iter_mut().zip(products.chunks_exact(4)) {
                let sum = four[0] + four[1] + four[2] + four[3];
                *lane = (sum as f32).mul_add(scale, *lane);
            }
            if B::HAS_MIN {
                *min_lane = w.min().mul_add(a.scaled_sum, *min_lane);
            }
        }
    }
    let mut total = sum_lanes(&lanes);
    if B::HAS_MIN {
        total += sum_lanes(&min_lanes);
    }
    total
}

/// Lanes i and i + 8 added, then i and i + 4 of those, then i and i + 2, then the two left.
#[inline(always)]
pub(super) fn sum_lanes(lanes: &[f32; LANES]) -> f32 {
    let mut width = LANES;
    let mut sums = *lanes;
    while width > 1 {
        width /= 2;
        for i in 0..width {
            sums[i] += sums[i + width];
        }
    }
    sums[0]
}

impl Block32 for Q4_0 {
    const BYTES: usize = 2 + BLOCK / 2;
    const UNSIGNED_OFFSET: u8 = 8;

    fn read(bytes: &[u8]) -> Self {
        Self {
            scale: half(&bytes[0..2]),
            nibbles: nibbles(&bytes[2..]),
        }
    }

    fn values(&self) -> [i8; BLOCK] {
        unpack_nibbles(&self.nibbles, 0, 8)
    }

    fn scale(&self) -> f32 {
        self.scale
    }

    #[cfg(target_arch = "x86_64")]
    fn avx512_rows(
        cpu: Avx512,
        w: &[Self],
        per_row: usize,
        a: &PairedActivations,
        out: &mut [f32],
    ) {
        cpu.q4_0_rows(w, per_row, a, out);
    }
}

impl Block32 for Q4_1 {
    const BYTES: usize = 4 + BLOCK / 2;
    const HAS_MIN: bool = true;
    const UNSIGNED_OFFSET: u8 = 0;

    fn read(bytes: &[u8]) -> Self {
        Self {
            scale: half(&bytes[0..2]),
            min: half(&bytes[2..4]),
            nibbles: nibbles(&bytes[4..]),
        }
    }

    fn values(&self) -> [i8; BLOCK] {
        unpack_nibbles(&self.nibbles, 0, 0)
    }

    fn scale(&self) -> f32 {
        self.scale
    }

    fn min(&self) -> f32 {
        self.min
    }

    #[cfg(target_arch = "x86_64")]
    fn avx512_rows(
        cpu: Avx512,
        w: &[Self],
        per_row: usize,
        a: &PairedActivations,
        out: &mut [f32],
    ) {
        cpu.q4_1_rows(w, per_row, a, out);
    }
}

impl Block32 for Q5_0 {
    const BYTES: usize = 2 + 4 + BLOCK / 2;
    const UNSIGNED_OFFSET: u8 = 16;

    fn read(bytes: &[u8]) -> Self {
        Self {
            scale: half(&bytes[0..2]),
            high_bits: u32::from_le_bytes(bytes[2..6].try_into().expect("4 bytes")),
            nibbles: nibbles(&bytes[6..]),
        }
    }

    fn values(&self) -> [i8; BLOCK] {
        unpack_nibbles(&self.nibbles, self.high_bits, 16)
    }

    fn scale(&self) -> f32 {
        self.scale
    }

    #[cfg(target_arch = "x86_64")]
    fn avx512_rows(
        cpu: Avx512,
        w: &[Self],
        per_row: usize,
        a: &PairedActivations,
        out: &mut [f32],
    ) {
        cpu.q5_0_rows(w, per_row, a, out);
    }
}

impl Block32 for Q8_0 {
    const BYTES: usize = 2 + BLOCK;
    const UNSIGNED_OFFSET: u8 = 128;

    fn read(bytes: &[u8]) -> Self {
        let mut values = [0i8; BLOCK];
        for (v, b) in values.iter_mut().zip(&bytes[2..]) {
            *v = *b as i8;
        }
        Self {
            scale: half(&bytes[0..2]),
            values,
        }
    }

    fn values(&self) -> [i8; BLOCK] {
        self.values
    }

    fn scale(&self) -> f32 {
        self.scale
    }

    #[cfg(target_arch = "x86_64")]
    fn avx512_rows(
        cpu: Avx512,
        w: &[Self],
        per_row: usize,
        a: &PairedActivations,
        out: &mut [f32],
    ) {
        cpu.q8_0_rows(w, per_row, a, out);
    }
}
