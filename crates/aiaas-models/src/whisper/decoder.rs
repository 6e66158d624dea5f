//! Whisper's text decoder: token and position embeddings, pre-norm layers of causal
//! self-attention, cross-attention to the encoder's output and a feed-forward block; the
//! output projection is the token embedding, transposed.

use rayon::prelude::*;

use crate::ctranslate2::Ct2Model;
use crate::dense::{gelu_rows, Dense, Norm};
use crate::fast_math::{self, vectorized};
use crate::{ModelError, Result};

use super::Variables;

struct Layer {
    self_norm: Norm,
    self_qkv: Dense,
    self_out: Dense,
    cross_norm: Norm,
    cross_query: Dense,
    /// Keys and values of the encoder's output, fused (the keys' bias is zeros).
    cross_kv: Dense,
    cross_out: Dense,
    ffn_norm: Norm,
    up: Dense,
    down: Dense,
}

pub struct TextDecoder {
    /// `vocabulary × width`.
    embeddings: Vec<f32>,
    /// `positions × width`.
    positions: Vec<f32>,
    layers: Vec<Layer>,
    norm: Norm,
    /// The embeddings as the output projection.
    output: Dense,
    heads: usize,
    width: usize,
}

/// What the decoder keeps while it writes one window's tokens.
pub struct DecoderState {
    /// Per layer: the encoder output's keys and values, `[key | value]` rows.
    cross: Vec<Vec<f32>>,
    /// Per layer: every written token's keys and values, `[key | value]` rows.
    past: Vec<Vec<f32>>,
    /// Tokens written so far.
    len: usize,
}

impl TextDecoder {
    pub fn load(model: &Ct2Model) -> Result<Self> {
        let v = Variables(model);
        let embeddings = model.get("decoder/embeddings/weight", 2)?;
        let (vocabulary, width) = (embeddings.dims[0], embeddings.dims[1]);
        let positions = v.values("decoder/position_encodings/encodings", 2)?;
        if !positions.len().is_multiple_of(width) {
            return Err(ModelError::Format("decoder sizes disagree".into()));
        }
        let layers = (0..v.layer_count("decoder"))
            .map(|i| {
                let p = format!("decoder/layer_{i}");
                Ok(Layer {
                    self_norm: v.norm(&format!("{p}/self_attention/layer_norm"))?,
                    self_qkv: v.dense(&format!("{p}/self_attention/linear_0"))?,
                    self_out: v.dense(&format!("{p}/self_attention/linear_1"))?,
                    cross_norm: v.norm(&format!("{p}/attention/layer_norm"))?,
                    cross_query: v.dense(&format!("{p}/attention/linear_0"))?,
                    cross_kv: v.dense(&format!("{p}/attention/linear_1"))?,
                    cross_out: v.dense(&format!("{p}/attention/linear_2"))?,
                    ffn_norm: v.norm(&format!("{p}/ffn/layer_norm"))?,
                    up: v.dense(&format!("{p}/ffn/linear_0"))?,
                    down: v.dense(&format!("{p}/ffn/linear_1"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            output: Dense::new(&embeddings.values, vec![0.0; vocabulary], width),
            embeddings: embeddings.values.clone(),
            positions,
            layers,
            norm: v.norm("decoder/layer_norm")?,
            heads: v.heads("decoder", width)?,
            width,
        })
    }

    pub fn vocabulary(&self) -> usize {
        self.output.outputs()
    }

    /// The most tokens one window can hold (the position table's length).
    pub fn max_tokens(&self) -> usize {
        self.positions.len() / self.width
    }

    /// A fresh state for one window of the encoder's output.
    pub fn start(&self, encoded: &[f32]) -> DecoderState {
        let frames = encoded.len() / self.width;
        let cross = (self.layers.par_iter())
            .map(|layer| layer.cross_kv.forward(encoded, frames))
            .collect();
        DecoderState {
            cross,
            past: vec![Vec::new(); self.layers.len()],
            len: 0,
        }
    }

    /// Appends `tokens` (at most `max_tokens` in all) and returns their final hidden states,
    /// normalized: one `width`-wide row per token, for `logits`.
    pub fn step(&self, state: &mut DecoderState, tokens: &[u32]) -> Vec<f32> {
        let width = self.width;
        let first = state.len;
        let mut x = vec![0f32; tokens.len() * width];
        for (i, (row, &token)) in x.chunks_exact_mut(width).zip(tokens).enumerate() {
            let embedding = &self.embeddings[token as usize * width..][..width];
            let position = &self.positions[(first + i) * width..][..width];
            for ((v, e), p) in row.iter_mut().zip(embedding).zip(position) {
                *v = e + p;
            }
        }
        let rows = tokens.len();
        for ((layer, past), cross) in self.layers.iter().zip(&mut state.past).zip(&state.cross) {
            let qkv = layer.self_qkv.forward(&layer.self_norm.rows(&x), rows);
            let mut queries = Vec::with_capacity(rows * width);
            for row in qkv.chunks_exact(3 * width) {
                queries.extend_from_slice(&row[..width]);
                past.extend_from_slice(&row[width..]);
            }
            // Token i sees itself and every token before it.
            let context = self.attend(&queries, past, |i| first + i + 1);
            layer.self_out.add_product(&mut x, &context, rows);

            let queries = layer.cross_query.forward(&layer.cross_norm.rows(&x), rows);
            let frames = cross.len() / (2 * width);
            let context = self.attend(&queries, cross, |_| frames);
            layer.cross_out.add_product(&mut x, &context, rows);

            let mut inner = layer.up.forward(&layer.ffn_norm.rows(&x), rows);
            gelu_rows(&mut inner, layer.up.outputs());
            layer.down.add_product(&mut x, &inner, rows);
        }
        state.len += rows;
        self.norm.rows(&x)
    }

    /// A normalized hidden state's scores over the vocabulary.
    pub fn logits(&self, hidden: &[f32]) -> Vec<f32> {
        self.output.product(hidden, hidden.len() / self.width)
    }

    /// Multi-head attention of `queries` (rows of `width`) over `[key | value]` rows; query `i`
    /// sees the first `visible(i)` of them.
    fn attend(
        &self,
        queries: &[f32],
        keys_values: &[f32],
        visible: impl Fn(usize) -> usize + Sync,
    ) -> Vec<f32> {
        let (width, heads) = (self.width, self.heads);
        let head_width = width / heads;
        let scale = 1.0 / (head_width as f32).sqrt();
        let rows = queries.len() / width;
        let mut out = vec![0f32; queries.len()];
        out.par_chunks_mut(head_width)
            .enumerate()
            .for_each(|(task, out)| {
                let (row, head) = (task / heads, task % heads);
                let query = &queries[row * width + head * head_width..][..head_width];
                let seen = visible(row);
                vectorized(
                    #[inline(always)]
                    || {
                        let pairs = keys_values.chunks_exact(2 * width).take(seen);
                        let mut scores: Vec<f32> = pairs
                            .clone()
                            .map(|kv| {
                                fast_math::dot(query, &kv[head * head_width..][..head_width])
                                    * scale
                            })
                            .collect();
                        let max = fast_math::max(&scores);
                        let mut total = 0.0;
                        for s in scores.iter_mut() {
                            *s = fast_math::exp(*s - max);
                            total += *s;
                        }
                        for (kv, weight) in pairs.zip(&scores) {
                            let value = &kv[width + head * head_width..][..head_width];
                            for (o, v) in out.iter_mut().zip(value) {
                                *o += weight / total * v;
                            }
                        }
                    },
                )
            });
        debug_assert_eq!(out.len(), rows * width);
        out
    }

    pub fn parameter_count(&self) -> usize {
        let layers: usize = (self.layers.iter())
            .map(|l| {
                [
                    &l.self_qkv,
                    &l.self_out,
                    &l.cross_query,
                    &l.cross_kv,
                    &l.cross_out,
                    &l.up,
                    &l.down,
                ]
                .iter()
                .map(|d| d.parameter_count())
                .sum::<usize>()
                    + l.self_norm.parameter_count()
                    + l.cross_norm.parameter_count()
                    + l.ffn_norm.parameter_count()
            })
            .sum();
        self.embeddings.len() + self.positions.len() + self.norm.parameter_count() + layers
    }
}
