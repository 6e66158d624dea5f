//! The decoder's element-wise and row-wise steps on plain f32 rows (token after token, each
//! `width` values): norms, rotary positions, residual sums and the gated activations, shared
//! out among the threads when there is enough work.
//!
//! Each computes exactly what candle's ops compute (the same expressions in the same order,
//! libm's `exp` and `tanh`), so the outputs stay the ones that were checked against llama.cpp;
//! they just skip the tensors' copies and run on every core.

use std::sync::OnceLock;

use half::f16;
use rayon::prelude::*;

/// Values one task takes at least: below this, handing work to another thread costs more
/// than it saves (a decode step's rows stay on the calling thread).
const VALUES_PER_TASK: usize = 1 << 14;

/// Tasks of whole rows of `width` values, at least `VALUES_PER_TASK` values each.
fn rows_per_task(width: usize) -> usize {
    VALUES_PER_TASK.div_ceil(width.max(1))
}

/// RMS norm of each row of `x` (rows of `weight.len()` values), scaled by `weight`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let mut out = x.to_vec();
    rms_norm_in_place(&mut out, weight, eps);
    out
}

/// `rms_norm` in place.
pub fn rms_norm_in_place(x: &mut [f32], weight: &[f32], eps: f32) {
    let width = weight.len();
    x.par_chunks_mut(width)
        .with_min_len(rows_per_task(width))
        .for_each(|row| {
            let m = root_mean_square(row, eps);
            for (v, w) in row.iter_mut().zip(weight) {
                *v = *v / m * w;
            }
        });
}

fn root_mean_square(x: &[f32], eps: f32) -> f32 {
    let squares: f32 = x.iter().map(|v| v * v).sum();
    (squares / x.len() as f32 + eps).sqrt()
}

/// `x += y`, value by value.
pub fn add(x: &mut [f32], y: &[f32]) {
    x.par_chunks_mut(VALUES_PER_TASK)
        .zip(y.par_chunks(VALUES_PER_TASK))
        .for_each(|(x, y)| {
            for (x, y) in x.iter_mut().zip(y) {
                *x += y;
            }
        });
}

/// `bias` added to every row of `x`.
pub fn add_bias(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    }
}

/// Every value times `scale` (Gemma's embeddings), as candle's affine map computes it.
pub fn scale(x: &mut [f32], scale: f32) {
    for v in x.iter_mut() {
        *v = *v * scale + 0.0;
    }
}

/// Values rounded to f16 and back: what meets llama.cpp's f16 KV cache.
pub fn round_f16(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v = f16::from_f32(*v).to_f32();
    }
}

/// The gated MLP's activation.
#[derive(Debug, Clone, Copy)]
pub enum Activation {
    /// SiLU, as candle computes it.
    Silu,
    /// GELU as ggml computes it (`GGML_GELU_FP16`): the input rounded to f16, the tanh
    /// approximation's result rounded to f16 (ggml looks it up in a table of f16 results), and
    /// the input passed through unchanged from 10 up (zero from -10 down). Matching it keeps
    /// Gemma's greedy outputs equal to llama.cpp's.
    GeluF16,
}

/// The gated MLP's activation: `gate = activation(gate) * up`, value by value.
pub fn gate(gate: &mut [f32], up: &[f32], activation: Activation) {
    match activation {
        Activation::Silu => gate_with(gate, up, silu),
        Activation::GeluF16 => {
            let table = gelu_table();
            gate_with(gate, up, |x| gelu_f16(table, x));
        }
    }
}

/// `gate` with the activation inlined into the loop.
fn gate_with(gate: &mut [f32], up: &[f32], activation: impl Fn(f32) -> f32 + Sync) {
    gate.par_chunks_mut(VALUES_PER_TASK)
        .zip(up.par_chunks(VALUES_PER_TASK))
        .for_each(|(gate, up)| {
            for (g, u) in gate.iter_mut().zip(up) {
                *g = activation(*g) * u;
            }
        });
}

/// SiLU, as candle computes it.
fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// GELU's tanh approximation, in f32 as ggml computes it.
fn gelu_tanh(v: f32) -> f32 {
    const SQRT_TWO_OVER_PI: f32 = 0.797_884_6;
    0.5 * v * (1.0 + f32::tanh(SQRT_TWO_OVER_PI * v * (1.0 + 0.044715 * v * v)))
}

/// Inputs an f16 can hold, by their bits.
const F16_VALUES: usize = 1 << 16;

/// `Activation::GeluF16` of `x`, looked up in `gelu_table` by the bits of `x` rounded to f16
/// (a lookup instead of a `tanh`: the activation was a quarter of Gemma's prefill).
fn gelu_f16(table: &[f32; F16_VALUES], x: f32) -> f32 {
    if x >= 10.0 {
        return x;
    }
    if x <= -10.0 {
        return 0.0;
    }
    table[usize::from(f16::from_f32(x).to_bits())]
}

/// Each f16 input's GELU rounded to f16, by the input's bits (ggml's `ggml_table_gelu_f16`),
/// computed once.
fn gelu_table() -> &'static [f32; F16_VALUES] {
    static TABLE: OnceLock<Box<[f32; F16_VALUES]>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let table: Vec<f32> = (0..=u16::MAX)
            .map(|bits| f16::from_f32(gelu_tanh(f16::from_bits(bits).to_f32())).to_f32())
            .collect();
        table.try_into().expect("one value for every 16 bits")
    })
}

/// How a head's values pair up for the rotation: llama's GGUF weights are permuted for
/// neighbouring pairs; Qwen2 and Gemma 3 rotate the first half against the second.
#[derive(Debug, Clone, Copy)]
pub enum RotaryLayout {
    Interleaved,
    Halves,
}

/// Cosine and sine tables for `t` positions, `half` angles each (a head's dimension over two).
pub struct Rotary {
    cos: Vec<f32>,
    sin: Vec<f32>,
    half: usize,
}

impl Rotary {
    /// Positions `pos..pos + t`, computed as ggml does (f32, with the angle step raised to a
    /// power once) so that results track llama.cpp closely.
    pub fn new(pos: usize, t: usize, head_dim: usize, base: f32) -> Self {
        let half = head_dim / 2;
        let step = base.powf(-2.0 / head_dim as f32);
        let mut cos = Vec::with_capacity(t * half);
        let mut sin = Vec::with_capacity(t * half);
        for p in pos..pos + t {
            let mut theta = p as f32;
            for _ in 0..half {
                cos.push(theta.cos());
                sin.push(theta.sin());
                theta *= step;
            }
        }
        Self { cos, sin, half }
    }

    /// Rotates every head of `x` (the table's `t` rows, each of heads of `2 * half` values).
    pub fn apply(&self, x: &mut [f32], layout: RotaryLayout) {
        let dim = 2 * self.half;
        let t = self.cos.len() / self.half.max(1);
        let row = x.len() / t.max(1);
        for (i, tokens_row) in x.chunks_exact_mut(row).enumerate() {
            let cos = &self.cos[i * self.half..][..self.half];
            let sin = &self.sin[i * self.half..][..self.half];
            for head in tokens_row.chunks_exact_mut(dim) {
                match layout {
                    RotaryLayout::Interleaved => {
                        for ((pair, c), s) in head.chunks_exact_mut(2).zip(cos).zip(sin) {
                            let (a, b) = (pair[0], pair[1]);
                            pair[0] = a * c - b * s;
                            pair[1] = a * s + b * c;
                        }
                    }
                    RotaryLayout::Halves => {
                        let (first, second) = head.split_at_mut(self.half);
                        for (((a, b), c), s) in first.iter_mut().zip(second).zip(cos).zip(sin) {
                            let (x1, x2) = (*a, *b);
                            *a = x1 * c - x2 * s;
                            *b = x1 * s + x2 * c;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rotations_turn_each_pair_by_its_angle() {
        // One position, one head of four values: angles 1 and 1·10000^-0.5 = 0.01.
        let rotary = Rotary::new(1, 1, 4, 10_000.0);
        let mut halves = [1.0, 2.0, 0.0, 0.0];
        rotary.apply(&mut halves, RotaryLayout::Halves);
        let expected = [
            1f32.cos(),
            2.0 * 0.01f32.cos(),
            1f32.sin(),
            2.0 * 0.01f32.sin(),
        ];
        for (got, want) in halves.iter().zip(expected) {
            assert!((got - want).abs() < 1e-6, "{halves:?} vs {expected:?}");
        }
        let mut pairs = [1.0, 0.0, 2.0, 0.0];
        rotary.apply(&mut pairs, RotaryLayout::Interleaved);
        let expected = [
            1f32.cos(),
            1f32.sin(),
            2.0 * 0.01f32.cos(),
            2.0 * 0.01f32.sin(),
        ];
        for (got, want) in pairs.iter().zip(expected) {
            assert!((got - want).abs() < 1e-6, "{pairs:?} vs {expected:?}");
        }
    }

    #[test]
    fn rms_norm_scales_each_row_to_unit_root_mean_square() {
        let x = [3.0, 4.0, 1.0, 1.0];
        let normed = rms_norm(&x, &[1.0, 2.0], 0.0);
        let m = (12.5f32).sqrt();
        assert_eq!(normed, [3.0 / m, 4.0 / m * 2.0, 1.0, 2.0]);
        let mut in_place = x;
        rms_norm_in_place(&mut in_place, &[1.0, 2.0], 0.0);
        assert_eq!(in_place.as_slice(), normed.as_slice());
    }

    #[test]
    fn gelu_passes_large_inputs_and_zeroes_very_negative_ones() {
        let table = gelu_table();
        assert_eq!(gelu_f16(table, 12.345), 12.345);
        assert_eq!(gelu_f16(table, -10.0), 0.0);
        assert!((gelu_f16(table, 1.0) - 0.8413).abs() < 1e-3);
        assert_eq!(silu(0.0), 0.0);
    }

    /// The table gives what ggml's steps give: the input rounded to f16, the tanh
    /// approximation, its result rounded to f16; for inputs across (-10, 10).
    #[test]
    fn gelu_looked_up_equals_gelu_computed() {
        let table = gelu_table();
        for i in -99_999..100_000 {
            let x = i as f32 * 1e-4 + 0.123_456 * (i % 7) as f32 * 1e-5;
            let v = f16::from_f32(x).to_f32();
            let computed = f16::from_f32(gelu_tanh(v)).to_f32();
            assert_eq!(gelu_f16(table, x).to_bits(), computed.to_bits(), "{x}");
        }
    }
}
