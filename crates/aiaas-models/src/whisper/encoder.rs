//! Whisper's audio encoder: two convolutions (the second halving the frame rate), positions,
//! then pre-norm transformer layers.

use rayon::prelude::*;

use crate::bf16_matmul::Bf16Matrix;
use crate::ctranslate2::Ct2Model;
use crate::dense::{add, each_row, gelu_rows, Dense, Norm};
use crate::fast_math::{self, vectorized};
use crate::{ModelError, Result};

use super::mel::MEL_BINS;
use super::Variables;

/// Mel frames in one window (30 s).
pub const WINDOW_FRAMES: usize = 3000;
/// Encoder outputs per window: one per two frames.
pub const OUTPUTS: usize = WINDOW_FRAMES / 2;
/// Each convolution sees a frame and its two neighbours.
const KERNEL: usize = 3;

struct Layer {
    attention_norm: Norm,
    qkv: Dense,
    attention_out: Dense,
    ffn_norm: Norm,
    up: Dense,
    down: Dense,
}

pub struct Encoder {
    conv1: Dense,
    conv2: Dense,
    /// `OUTPUTS × width`.
    positions: Vec<f32>,
    layers: Vec<Layer>,
    norm: Norm,
    heads: usize,
    pub width: usize,
}

impl Encoder {
    pub fn load(model: &Ct2Model) -> Result<Self> {
        let v = Variables(model);
        let mel_bins = model.get("encoder/conv1/weight", 3)?.dims[1];
        if mel_bins != MEL_BINS {
            // large-v3 and its distillations hear 128 mel bins.
            return Err(ModelError::UnsupportedArchitecture(format!(
                "whisper with {mel_bins} mel bins (supported: {MEL_BINS})"
            )));
        }
        let conv1 = v.convolution("encoder/conv1")?;
        let width = conv1.outputs();
        let conv2 = v.convolution("encoder/conv2")?;
        let positions = v.values("encoder/position_encodings/encodings", 2)?;
        if positions.len() != OUTPUTS * width || conv2.outputs() != width {
            return Err(ModelError::Format("encoder sizes disagree".into()));
        }
        let layers = (0..v.layer_count("encoder"))
            .map(|i| {
                let p = format!("encoder/layer_{i}");
                Ok(Layer {
                    attention_norm: v.norm(&format!("{p}/self_attention/layer_norm"))?,
                    qkv: v.dense(&format!("{p}/self_attention/linear_0"))?,
                    attention_out: v.dense(&format!("{p}/self_attention/linear_1"))?,
                    ffn_norm: v.norm(&format!("{p}/ffn/layer_norm"))?,
                    up: v.dense(&format!("{p}/ffn/linear_0"))?,
                    down: v.dense(&format!("{p}/ffn/linear_1"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            conv1,
            conv2,
            positions,
            layers,
            norm: v.norm("encoder/layer_norm")?,
            heads: v.heads("encoder", width)?,
            width,
        })
    }

    /// One window of mel frames (bin-major, `MEL_BINS × WINDOW_FRAMES`) to `OUTPUTS` vectors.
    pub fn forward(&self, mel: &[f32]) -> Result<Vec<f32>> {
        debug_assert_eq!(mel.len(), MEL_BINS * WINDOW_FRAMES);
        // The mel bins of each frame's neighbourhood, bin by bin, as conv1's weights are laid out.
        let windows = neighbourhoods(WINDOW_FRAMES, MEL_BINS, 1, |frame, bin| {
            mel[bin * WINDOW_FRAMES + frame]
        });
        let mut x = self.conv1.forward(&windows, WINDOW_FRAMES);
        gelu_rows(&mut x, self.width);
        let windows = neighbourhoods(OUTPUTS, self.width, 2, |frame, channel| {
            x[frame * self.width + channel]
        });
        let mut x = self.conv2.forward(&windows, OUTPUTS);
        each_row(&mut x, self.width, |i, row| {
            for v in row.iter_mut() {
                *v = fast_math::gelu(*v);
            }
            add(row, &self.positions[i * self.width..][..self.width]);
        });
        for layer in &self.layers {
            x = self.layer(layer, x)?;
        }
        each_row(&mut x, self.width, |_, row| self.norm.apply(row));
        Ok(x)
    }

    fn layer(&self, layer: &Layer, mut x: Vec<f32>) -> Result<Vec<f32>> {
        let qkv = layer.qkv.forward(&layer.attention_norm.rows(&x), OUTPUTS);
        let context = attention(&qkv, OUTPUTS, self.heads);
        layer.attention_out.add_product(&mut x, &context, OUTPUTS);
        let mut inner = layer.up.forward(&layer.ffn_norm.rows(&x), OUTPUTS);
        gelu_rows(&mut inner, layer.up.outputs());
        layer.down.add_product(&mut x, &inner, OUTPUTS);
        Ok(x)
    }

    pub fn parameter_count(&self) -> usize {
        let layers: usize = (self.layers.iter())
            .map(|l| {
                [&l.qkv, &l.attention_out, &l.up, &l.down]
                    .iter()
                    .map(|d| d.parameter_count())
                    .sum::<usize>()
                    + l.attention_norm.parameter_count()
                    + l.ffn_norm.parameter_count()
            })
            .sum();
        self.conv1.parameter_count()
            + self.conv2.parameter_count()
            + self.positions.len()
            + self.norm.parameter_count()
            + layers
    }
}

/// Bidirectional multi-head attention over `tokens` rows of `[query | key | value]`. Each head
/// is two matrix products around a softmax: queries times keys (the keys as a weight matrix of
/// `tokens` outputs), then probabilities times values (transposed: `head_width` outputs), on
/// the bf16 kernels (AMX tiles where the CPU has them; operands rounded to bf16, sums in f32,
/// as in every dense layer). Queries go in blocks, so that a block's scores stay in the cache
/// between the two products. Measured on Whisper tiny's 1500 tokens: ~25 ms a layer, against
/// 80 ms for a dot product per pair of tokens in f32, and 55 ms for whole-head products (whose
/// 1500 × 1500 scores go through memory).
fn attention(qkv: &[f32], tokens: usize, heads: usize) -> Vec<f32> {
    const QUERY_BLOCK: usize = 128;
    let width = qkv.len() / tokens / 3;
    let head_width = width / heads;
    let scale = 1.0 / (head_width as f32).sqrt();
    let by_head: Vec<Vec<f32>> = (0..heads)
        .into_par_iter()
        .map(|head| {
            // Part `part` (0 query, 1 key, 2 value) of this head, `tokens × head_width`.
            let gather = |part: usize| -> Vec<f32> {
                let first = part * width + head * head_width;
                (qkv.chunks_exact(3 * width))
                    .flat_map(|row| &row[first..first + head_width])
                    .copied()
                    .collect()
            };
            let queries: Vec<f32> = gather(0).into_iter().map(|q| q * scale).collect();
            let keys = Bf16Matrix::new(&gather(1), tokens, head_width);
            let values = gather(2);
            let transposed: Vec<f32> = (0..head_width)
                .flat_map(|d| values.iter().skip(d).step_by(head_width).copied())
                .collect();
            let values = Bf16Matrix::new(&transposed, head_width, tokens);
            let mut context = Vec::with_capacity(tokens * head_width);
            for block in queries.chunks(QUERY_BLOCK * head_width) {
                let rows = block.len() / head_width;
                let mut weights = keys.product(block, rows);
                weights.chunks_exact_mut(tokens).for_each(softmax);
                context.extend(values.product(&weights, rows));
            }
            context
        })
        .collect();
    let mut context = vec![0f32; tokens * width];
    for (head, values) in by_head.iter().enumerate() {
        for (row, head_row) in
            (context.chunks_exact_mut(width)).zip(values.chunks_exact(head_width))
        {
            row[head * head_width..][..head_width].copy_from_slice(head_row);
        }
    }
    context
}

/// `row` turned into probabilities, in place.
fn softmax(row: &mut [f32]) {
    vectorized(
        #[inline(always)]
        || softmax_in_place(row),
    )
}

#[inline(always)]
fn softmax_in_place(row: &mut [f32]) {
    let max = fast_math::max(row);
    for v in row.iter_mut() {
        *v = fast_math::exp(*v - max);
    }
    let total = fast_math::sum(row);
    for v in row.iter_mut() {
        *v /= total;
    }
}

/// For each of `outputs` positions of a width-3 convolution with padding 1 and `stride`, the
/// input's `channels` values at the three frames it sees, channel by channel (`channel * 3 +
/// tap`), zeros beyond the edges. `value(frame, channel)` reads the input.
fn neighbourhoods(
    outputs: usize,
    channels: usize,
    stride: usize,
    value: impl Fn(usize, usize) -> f32 + Sync,
) -> Vec<f32> {
    let input_frames = outputs * stride;
    let mut out = vec![0f32; outputs * channels * KERNEL];
    each_row(&mut out, channels * KERNEL, |position, row| {
        for tap in 0..KERNEL {
            let Some(frame) = (position * stride + tap).checked_sub(1) else {
                continue;
            };
            if frame >= input_frames {
                continue;
            }
            for channel in 0..channels {
                row[channel * KERNEL + tap] = value(frame, channel);
            }
        }
    });
    out
}
