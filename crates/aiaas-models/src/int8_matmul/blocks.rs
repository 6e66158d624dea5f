//! Formats of 32 weights a block (Q4_0, Q4_1, Q5_0, Q8_0) and their activations, ggml's Q8_1
//! (Q8_0 plus the scaled sum that a Q4_1 block's minimum multiplies), and the arithmetic of
//! their products (`dot_row`) that every kernel computes to the bit. Matrices of them are kept
//! in groups of rows (`row_groups`).

use half::f16;

use crate::fast_math;

use super::row_groups::{ByteGroup, NibbleGroup, RowGroup, GROUP_ROWS};
use super::ActivationBlock;
#[cfg(target_arch = "x86_64")]
use super::{avx2, avx512};

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

/// A little-endian f16 as f32.
pub(super) fn half(bytes: &[u8]) -> f32 {
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
pub trait Block32: Sized + Send + Sync + 'static {
    const BYTES: usize;
    /// Whether blocks add a minimum (`scale · q + min`).
    const HAS_MIN: bool = false;
    /// What the unsigned form of the weights, which `row_groups` keeps, adds to the block's
    /// integers.
    const UNSIGNED_OFFSET: u8;
    /// How 16 rows' blocks are kept side by side (`row_groups`).
    #[cfg(target_arch = "x86_64")]
    type Group: RowGroup + avx512::Unpack + avx2::Unpack;
    #[cfg(not(target_arch = "x86_64"))]
    type Group: RowGroup;
    fn read(bytes: &[u8]) -> Self;
    /// The block's integers in activation order (the weights over the scale).
    fn values(&self) -> [i8; BLOCK];
    fn scale(&self) -> f32;
    fn min(&self) -> f32 {
        0.0
    }
}

/// A block as the portable kernel reads it back from its group.
pub(super) struct PortableBlock {
    pub values: [i8; BLOCK],
    pub scale: f32,
    pub min: f32,
}

impl PortableBlock {
    /// As ggml's `dequantize_row`: `q · scale`, plus the minimum where there is one.
    pub fn dequantize(&self, has_min: bool, out: &mut [f32]) {
        for (out, q) in out.iter_mut().zip(self.values) {
            *out = f32::from(q) * self.scale;
            if has_min {
                *out += self.min;
            }
        }
    }
}

/// One row times one token, block after block as ggml's reference `vec_dot` sums: the exact
/// integer sum of the block's products, times the product of the block's and the activations'
/// scales, added in one fused multiply-add; then, for formats with minimums, the minimum times
/// the activations' scaled sum, likewise. An exact integer sum a block is what lets the SIMD
/// kernel convert and scale once per 32 products instead of once per 4.
#[inline(always)]
pub(super) fn dot_row(
    weights: &[PortableBlock],
    activations: &[Q8Activations],
    has_min: bool,
) -> f32 {
    let mut total = 0f32;
    for (w, a) in weights.iter().zip(activations) {
        // Whole arrays, so that the compiler vectorizes the products and their sum.
        let mut products = [0i32; BLOCK];
        for ((p, w), x) in products.iter_mut().zip(w.values).zip(a.values) {
            *p = i32::from(w) * i32::from(x);
        }
        let sum: i32 = products.iter().sum();
        total = (w.scale * a.scale).mul_add(sum as f32, total);
        if has_min {
            total = w.min.mul_add(a.scaled_sum, total);
        }
    }
    total
}

impl Block32 for Q4_0 {
    const BYTES: usize = 2 + BLOCK / 2;
    const UNSIGNED_OFFSET: u8 = 8;
    type Group = NibbleGroup<0, 0>;

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
}

impl Block32 for Q4_1 {
    const BYTES: usize = 4 + BLOCK / 2;
    const HAS_MIN: bool = true;
    const UNSIGNED_OFFSET: u8 = 0;
    type Group = NibbleGroup<0, { GROUP_ROWS }>;

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
}

impl Block32 for Q5_0 {
    const BYTES: usize = 2 + 4 + BLOCK / 2;
    const UNSIGNED_OFFSET: u8 = 16;
    type Group = NibbleGroup<8, 0>;

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
}

impl Block32 for Q8_0 {
    const BYTES: usize = 2 + BLOCK;
    const UNSIGNED_OFFSET: u8 = 128;
    type Group = ByteGroup;

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
}
