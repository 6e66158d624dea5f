//! The pieces of encoder-style layers that BERT and Whisper share: dense layers on bf16
//! weights, layer normalization, and row-wise passes shared out among the threads.

use rayon::prelude::*;

use crate::bf16_matmul::Bf16Matrix;
use crate::fast_math::{self, vectorized};

/// A dense layer: bf16 weights (see `bf16_matmul`) and an f32 bias.
pub struct Dense {
    weights: Bf16Matrix,
    pub bias: Vec<f32>,
}

impl Dense {
    /// `weights` holds `bias.len()` rows (outputs) of `inputs` values.
    pub fn new(weights: &[f32], bias: Vec<f32>, inputs: usize) -> Self {
        Self {
            weights: Bf16Matrix::new(weights, bias.len(), inputs),
            bias,
        }
    }

    /// `x · Wᵀ` for `rows` rows; the bias is left to the caller's pass over each row.
    pub fn product(&self, x: &[f32], rows: usize) -> Vec<f32> {
        self.weights.product(x, rows)
    }

    /// `x · Wᵀ + b` for `rows` rows.
    pub fn forward(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let mut out = self.product(x, rows);
        each_row(&mut out, self.bias.len(), |_, row| add(row, &self.bias));
        out
    }

    /// `x += input · Wᵀ + b` for `rows` rows: a residual connection.
    pub fn add_product(&self, x: &mut [f32], input: &[f32], rows: usize) {
        let out = self.product(input, rows);
        let width = self.outputs();
        each_row(x, width, |i, row| {
            add(row, &out[i * width..][..width]);
            add(row, &self.bias);
        });
    }

    pub fn outputs(&self) -> usize {
        self.weights.outputs()
    }

    pub fn parameter_count(&self) -> usize {
        self.weights.outputs() * self.weights.inputs() + self.bias.len()
    }
}

pub struct Norm {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub eps: f32,
}

impl Norm {
    /// Layer normalization of one row, in place.
    #[inline(always)]
    pub fn apply(&self, row: &mut [f32]) {
        let width = row.len() as f32;
        let mean = fast_math::sum(row) / width;
        let mut deviations = 0f32;
        for v in row.iter_mut() {
            *v -= mean;
            deviations += *v * *v;
        }
        let scale = 1.0 / (deviations / width + self.eps).sqrt();
        for ((v, w), b) in row.iter_mut().zip(&self.weight).zip(&self.bias) {
            *v = *v * scale * w + b;
        }
    }

    /// Every `width`-wide row of `x` normalized, into a new buffer.
    pub fn rows(&self, x: &[f32]) -> Vec<f32> {
        let mut out = x.to_vec();
        each_row(&mut out, self.weight.len(), |_, row| self.apply(row));
        out
    }

    pub fn parameter_count(&self) -> usize {
        self.weight.len() + self.bias.len()
    }
}

/// Rows per task of the row-wise passes: small batches run in one task.
const ROWS_PER_TASK: usize = 32;

/// `f(row_index, row)` for every `width`-wide row of `values`, rows shared out among the
/// threads, each compiled for the CPU's widest SIMD.
pub fn each_row(values: &mut [f32], width: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    values
        .par_chunks_mut(width * ROWS_PER_TASK)
        .enumerate()
        .for_each(|(task, rows)| {
            vectorized(
                #[inline(always)]
                || {
                    for (i, row) in rows.chunks_exact_mut(width).enumerate() {
                        f(task * ROWS_PER_TASK + i, row);
                    }
                },
            )
        });
}

/// GELU (exact) of every value, in rows of `width`.
pub fn gelu_rows(values: &mut [f32], width: usize) {
    each_row(values, width, |_, row| {
        for v in row.iter_mut() {
            *v = fast_math::gelu(*v);
        }
    });
}

#[inline(always)]
pub fn add(row: &mut [f32], other: &[f32]) {
    for (v, o) in row.iter_mut().zip(other) {
        *v += o;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_norm_centres_and_scales_a_row() {
        let norm = Norm {
            weight: vec![2.0; 4],
            bias: vec![1.0; 4],
            eps: 0.0,
        };
        // Mean 2.5, variance 1.25.
        let mut row = [1.0, 2.0, 3.0, 4.0];
        norm.apply(&mut row);
        let expected = [1.0, 2.0, 3.0, 4.0].map(|v: f32| (v - 2.5) / 1.25f32.sqrt() * 2.0 + 1.0);
        for (a, b) in row.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }
}
