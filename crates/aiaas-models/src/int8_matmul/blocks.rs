//! Formats of 32 weights a block (Q4_0, Q4_1, Q5_0, Q8_0) and their activations, ggml's Q8_1
//! (Q8_0 plus the scaled sum that a Q4_1 block's minimum multiplies).

use half::f16;

use super::{ActivationBlock, WeightBlock};

const BLOCK: usize = 32;

/// 32 activations quantized to 8 bits.
pub struct Q8Activations {
    scale: f32,
    /// The scale times the sum of the values.
    scaled_sum: f32,
    values: [i8; BLOCK],
}

impl ActivationBlock for Q8Activations {
    const SIZE: usize = BLOCK;

    /// ggml's `quantize_row_q8_1` as candle's CPU path computes it: values scaled so the
    /// largest magnitude is 127 and rounded; the scale in f16, the scaled sum as the f16 product
    /// of the f16 sum and that scale. (Q8_0 is the same without the sum.) This, rather than
    /// llama.cpp's AVX2 variant (`127 / max`, ties to even, the sum times the f32 scale), is
    /// what reproduces llama.cpp's reference outputs token for token (tests/reference).
    fn quantize(x: &[f32]) -> Self {
        let max = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = max / 127.0;
        let inverse = if scale != 0.0 { 1.0 / scale } else { 0.0 };
        let mut values = [0i8; BLOCK];
        let mut sum = 0i32;
        for (q, v) in values.iter_mut().zip(x) {
            *q = (v * inverse).round() as i8;
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
    nibbles: [u8; BLOCK / 2],
}

/// Q4_1: `scale · q + min` with q in 0..16.
pub struct Q4_1 {
    scale: f32,
    min: f32,
    nibbles: [u8; BLOCK / 2],
}

/// Q5_0: `scale · (q - 16)` with q in 0..32: four bits in the nibbles, the fifth in `high_bits`.
pub struct Q5_0 {
    scale: f32,
    /// Bit j: the fifth bit of value j.
    high_bits: u32,
    nibbles: [u8; BLOCK / 2],
}

/// Q8_0: `scale · q` with q in -128..128.
pub struct Q8_0 {
    scale: f32,
    values: [i8; BLOCK],
}

fn half(bytes: &[u8]) -> f32 {
    f16::from_le_bytes([bytes[0], bytes[1]]).to_f32()
}

fn nibbles(bytes: &[u8]) -> [u8; BLOCK / 2] {
    bytes.try_into().expect("16 bytes by the block layout")
}

/// The integer dot product of 32 4-bit values (`nibbles`, each minus `offset`) with the
/// activations.
#[inline(always)]
fn nibble_dot(nibbles: &[u8; BLOCK / 2], offset: i32, a: &Q8Activations) -> i32 {
    let mut sum = 0i32;
    for (j, byte) in nibbles.iter().enumerate() {
        let low = i32::from(byte & 0x0F) - offset;
        let high = i32::from(byte >> 4) - offset;
        sum += low * i32::from(a.values[j]) + high * i32::from(a.values[j + BLOCK / 2]);
    }
    sum
}

impl WeightBlock for Q4_0 {
    const BYTES: usize = 2 + BLOCK / 2;
    type Activations = Q8Activations;

    fn read(bytes: &[u8]) -> Self {
        Self {
            scale: half(&bytes[0..2]),
            nibbles: nibbles(&bytes[2..]),
        }
    }

    #[inline(always)]
    fn dot(&self, a: &Q8Activations) -> f32 {
        nibble_dot(&self.nibbles, 8, a) as f32 * self.scale * a.scale
    }

    fn dequantize(&self, out: &mut [f32]) {
        for (j, byte) in self.nibbles.iter().enumerate() {
            out[j] = (i32::from(byte & 0x0F) - 8) as f32 * self.scale;
            out[j + BLOCK / 2] = (i32::from(byte >> 4) - 8) as f32 * self.scale;
        }
    }
}

impl WeightBlock for Q4_1 {
    const BYTES: usize = 4 + BLOCK / 2;
    type Activations = Q8Activations;

    fn read(bytes: &[u8]) -> Self {
        Self {
            scale: half(&bytes[0..2]),
            min: half(&bytes[2..4]),
            nibbles: nibbles(&bytes[4..]),
        }
    }

    #[inline(always)]
    fn dot(&self, a: &Q8Activations) -> f32 {
        let sum = nibble_dot(&self.nibbles, 0, a);
        sum as f32 * self.scale * a.scale + self.min * a.scaled_sum
    }

    fn dequantize(&self, out: &mut [f32]) {
        for (j, byte) in self.nibbles.iter().enumerate() {
            out[j] = f32::from(byte & 0x0F) * self.scale + self.min;
            out[j + BLOCK / 2] = f32::from(byte >> 4) * self.scale + self.min;
        }
    }
}

impl WeightBlock for Q5_0 {
    const BYTES: usize = 2 + 4 + BLOCK / 2;
    type Activations = Q8Activations;

    fn read(bytes: &[u8]) -> Self {
        Self {
            scale: half(&bytes[0..2]),
            high_bits: u32::from_le_bytes(bytes[2..6].try_into().expect("4 bytes")),
            nibbles: nibbles(&bytes[6..]),
        }
    }

    #[inline(always)]
    fn dot(&self, a: &Q8Activations) -> f32 {
        let mut sum = 0i32;
        for j in 0..BLOCK / 2 {
            let fifth = |bit: usize| (((self.high_bits >> bit) & 1) << 4) as i32;
            let low = (i32::from(self.nibbles[j] & 0x0F) | fifth(j)) - 16;
            let high = (i32::from(self.nibbles[j] >> 4) | fifth(j + BLOCK / 2)) - 16;
            sum += low * i32::from(a.values[j]) + high * i32::from(a.values[j + BLOCK / 2]);
        }
        sum as f32 * self.scale * a.scale
    }

    fn dequantize(&self, out: &mut [f32]) {
        for (j, out) in out.iter_mut().enumerate() {
            let nibble = if j < BLOCK / 2 {
                self.nibbles[j] & 0x0F
            } else {
                self.nibbles[j - BLOCK / 2] >> 4
            };
            let fifth = ((self.high_bits >> j) & 1) << 4;
            *out = ((i32::from(nibble) | fifth as i32) - 16) as f32 * self.scale;
        }
    }
}

impl WeightBlock for Q8_0 {
    const BYTES: usize = 2 + BLOCK;
    type Activations = Q8Activations;

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

    #[inline(always)]
    fn dot(&self, a: &Q8Activations) -> f32 {
        let mut sum = 0i32;
        for (w, x) in self.values.iter().zip(&a.values) {
            sum += i32::from(*w) * i32::from(*x);
        }
        sum as f32 * (self.scale * a.scale)
    }

    fn dequantize(&self, out: &mut [f32]) {
        for (out, q) in out.iter_mut().zip(&self.values) {
            *out = f32::from(*q) * self.scale;
        }
    }
}
