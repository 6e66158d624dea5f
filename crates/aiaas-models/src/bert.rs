//! BERT-family sentence encoders (all-MiniLM-L6-v2 and kin) from Hugging Face folders
//! (`config.json` + `model.safetensors`).
//!
//! A batch is *packed*: the token rows of every sequence are stacked into one `[tokens, hidden]`
//! matrix, so the dense layers (nearly all the work) run as single large matrix products with no
//! padding, and only attention, the one step that mixes tokens, looks at sequence boundaries.
//! Mixing a 5-token and a 250-token input therefore costs what the 255 tokens cost.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;
use serde::Deserialize;

use crate::fast_math::{self, vectorized};
use crate::{ModelError, Result};

/// The `config.json` fields a BERT encoder needs.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_position_type")]
    pub position_embedding_type: String,
}

fn default_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}
fn default_position_type() -> String {
    "absolute".into()
}

impl BertConfig {
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let config: Self = serde_json::from_str(&text)
            .map_err(|e| ModelError::Format(format!("{}: {e}", path.display())))?;
        if config.model_type != "bert" {
            return Err(ModelError::UnsupportedArchitecture(config.model_type));
        }
        if config.hidden_act != "gelu" || config.position_embedding_type != "absolute" {
            return Err(ModelError::Format(format!(
                "{}: only BERT with exact GELU and absolute positions is supported",
                path.display()
            )));
        }
        if config.num_attention_heads == 0
            || !config
                .hidden_size
                .is_multiple_of(config.num_attention_heads)
        {
            return Err(ModelError::Format(format!(
                "{}: hidden_size must be a multiple of num_attention_heads",
                path.display()
            )));
        }
        Ok(config)
    }
}

/// How token vectors become one sentence vector (sentence-transformers' `1_Pooling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The average of every token's vector.
    Mean,
    /// The first token's (`[CLS]`) vector.
    Cls,
}

/// A dense layer with its weight stored pre-transposed (`[in, out]`), the layout the matrix
/// product reads fastest.
struct Dense {
    weight: Tensor,
    bias: Tensor,
}

impl Dense {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.matmul(&self.weight)?.broadcast_add(&self.bias)?)
    }
}

struct Norm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl Norm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::layer_norm(
            x,
            &self.weight,
            &self.bias,
            self.eps,
        )?)
    }
}

struct Layer {
    /// Query, key and value projections fused into one product.
    qkv: Dense,
    attention_out: Dense,
    attention_norm: Norm,
    up: Dense,
    down: Dense,
    output_norm: Norm,
}

pub struct BertEncoder {
    pub config: BertConfig,
    word: Tensor,
    position: Tensor,
    /// Segment 0's embedding: sentence encoders see one segment.
    token_type: Tensor,
    embedding_norm: Norm,
    layers: Vec<Layer>,
    pooling: Pooling,
    normalize: bool,
}

/// Reads tensors by their Hugging Face names, with or without a `bert.` prefix.
struct Weights {
    tensors: HashMap<String, Tensor>,
    prefix: &'static str,
}

impl Weights {
    fn get(&self, name: &str) -> Result<Tensor> {
        let tensor = self
            .tensors
            .get(&format!("{}{name}", self.prefix))
            .ok_or_else(|| ModelError::Format(format!("missing tensor `{name}`")))?;
        Ok(tensor.to_dtype(DType::F32)?)
    }

    fn dense(&self, name: &str) -> Result<Dense> {
        Ok(Dense {
            weight: self.get(&format!("{name}.weight"))?.t()?.contiguous()?,
            bias: self.get(&format!("{name}.bias"))?,
        })
    }

    fn norm(&self, name: &str, eps: f64) -> Result<Norm> {
        Ok(Norm {
            weight: self.get(&format!("{name}.weight"))?,
            bias: self.get(&format!("{name}.bias"))?,
            eps: eps as f32,
        })
    }
}

impl BertEncoder {
    pub fn load(
        config: BertConfig,
        weights_path: &Path,
        pooling: Pooling,
        normalize: bool,
    ) -> Result<Self> {
        let tensors = candle_core::safetensors::load(weights_path, &Device::Cpu)?;
        let prefix = if tensors.contains_key("bert.embeddings.word_embeddings.weight") {
            "bert."
        } else {
            ""
        };
        let w = Weights { tensors, prefix };
        let eps = config.layer_norm_eps;
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let p = format!("encoder.layer.{i}");
                let attention = |part: &str| w.get(&format!("{p}.attention.self.{part}"));
                let qkv = Dense {
                    weight: Tensor::cat(
                        &[
                            attention("query.weight")?,
                            attention("key.weight")?,
                            attention("value.weight")?,
                        ],
                        0,
                    )?
                    .t()?
                    .contiguous()?,
                    bias: Tensor::cat(
                        &[
                            attention("query.bias")?,
                            attention("key.bias")?,
                            attention("value.bias")?,
                        ],
                        0,
                    )?,
                };
                Ok(Layer {
                    qkv,
                    attention_out: w.dense(&format!("{p}.attention.output.dense"))?,
                    attention_norm: w.norm(&format!("{p}.attention.output.LayerNorm"), eps)?,
                    up: w.dense(&format!("{p}.intermediate.dense"))?,
                    down: w.dense(&format!("{p}.output.dense"))?,
                    output_norm: w.norm(&format!("{p}.output.LayerNorm"), eps)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            word: w.get("embeddings.word_embeddings.weight")?,
            position: w.get("embeddings.position_embeddings.weight")?,
            token_type: w.get("embeddings.token_type_embeddings.weight")?.get(0)?,
            embedding_norm: w.norm("embeddings.LayerNorm", eps)?,
            layers,
            config,
            pooling,
            normalize,
        })
    }

    /// Parameters in the weights, for the model listing.
    pub fn parameter_count(&self) -> u64 {
        let mut tensors = vec![
            &self.word,
            &self.position,
            &self.token_type,
            &self.embedding_norm.weight,
            &self.embedding_norm.bias,
        ];
        for l in &self.layers {
            for d in [&l.qkv, &l.attention_out, &l.up, &l.down] {
                tensors.extend([&d.weight, &d.bias]);
            }
            for n in [&l.attention_norm, &l.output_norm] {
                tensors.extend([&n.weight, &n.bias]);
            }
        }
        tensors.iter().map(|t| t.elem_count() as u64).sum()
    }

    /// One vector per sequence. Every sequence must be non-empty, hold ids below the vocabulary
    /// size and fit the position table; the engine checks that before batching.
    pub fn embed(&self, sequences: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        // On a thread of the pool: see `Decoder::forward_batch`.
        rayon::scope(|_| self.embed_on_pool(sequences))
    }

    fn embed_on_pool(&self, sequences: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        let lengths: Vec<usize> = sequences.iter().map(|s| s.len()).collect();
        let ids: Vec<u32> = sequences.iter().flat_map(|s| s.iter().copied()).collect();
        let positions: Vec<u32> = lengths.iter().flat_map(|&n| 0..n as u32).collect();
        let n = ids.len();
        let ids = Tensor::from_vec(ids, n, &Device::Cpu)?;
        let positions = Tensor::from_vec(positions, n, &Device::Cpu)?;
        let x = (self.word.index_select(&ids, 0)? + self.position.index_select(&positions, 0)?)?
            .broadcast_add(&self.token_type)?;
        let mut x = self.embedding_norm.forward(&x)?;
        for layer in &self.layers {
            x = self.layer(layer, &x, &lengths)?;
        }
        let hidden = self.config.hidden_size;
        let rows = x.flatten_all()?.to_vec1::<f32>()?;
        let mut offset = 0;
        let mut vectors = Vec::with_capacity(lengths.len());
        for &len in &lengths {
            let sequence = &rows[offset * hidden..(offset + len) * hidden];
            offset += len;
            let mut vector = match self.pooling {
                Pooling::Cls => sequence[..hidden].to_vec(),
                Pooling::Mean => mean_rows(sequence, hidden),
            };
            if self.normalize {
                let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                vector.iter_mut().for_each(|v| *v /= norm);
            }
            vectors.push(vector);
        }
        Ok(vectors)
    }

    fn layer(&self, layer: &Layer, x: &Tensor, lengths: &[usize]) -> Result<Tensor> {
        let hidden = self.config.hidden_size;
        let qkv = layer.qkv.forward(x)?.flatten_all()?.to_vec1::<f32>()?;
        let context = attention(&qkv, lengths, hidden, self.config.num_attention_heads);
        let context = Tensor::from_vec(context, (x.dim(0)?, hidden), &Device::Cpu)?;
        let x = layer
            .attention_norm
            .forward(&(layer.attention_out.forward(&context)? + x)?)?;
        let inner = dense_gelu(&layer.up, &x)?;
        layer
            .output_norm
            .forward(&(layer.down.forward(&inner)? + &x)?)
    }
}

/// `gelu(x · W + b)`, with the bias and activation fused into one vectorized pass per row.
fn dense_gelu(dense: &Dense, x: &Tensor) -> Result<Tensor> {
    let product = x.matmul(&dense.weight)?;
    let shape = product.shape().clone();
    let mut values = product.flatten_all()?.to_vec1::<f32>()?;
    let bias = dense.bias.to_vec1::<f32>()?;
    values.par_chunks_mut(bias.len() * 16).for_each(|rows| {
        vectorized(
            #[inline(always)]
            || {
                for row in rows.chunks_exact_mut(bias.len()) {
                    for (v, b) in row.iter_mut().zip(&bias) {
                        *v = fast_math::gelu(*v + b);
                    }
                }
            },
        )
    });
    Ok(Tensor::from_vec(values, shape, &Device::Cpu)?)
}

fn mean_rows(rows: &[f32], width: usize) -> Vec<f32> {
    let count = (rows.len() / width).max(1) as f32;
    let mut sum = vec![0f32; width];
    for row in rows.chunks_exact(width) {
        sum.iter_mut().zip(row).for_each(|(s, v)| *s += v);
    }
    sum.iter_mut().for_each(|s| *s /= count);
    sum
}

/// Bidirectional multi-head attention within each packed sequence. `qkv` holds one row of
/// `[query | key | value]` (each `hidden` wide) per token; the result holds one `hidden`-wide
/// row per token. Sequences run in parallel.
fn attention(qkv: &[f32], lengths: &[usize], hidden: usize, heads: usize) -> Vec<f32> {
    let total: usize = lengths.iter().sum();
    let mut out = vec![0f32; total * hidden];
    let mut pieces = Vec::with_capacity(lengths.len());
    let mut rest = out.as_mut_slice();
    let mut start = 0;
    for &len in lengths {
        let (piece, tail) = rest.split_at_mut(len * hidden);
        pieces.push((start, len, piece));
        rest = tail;
        start += len;
    }
    pieces.into_par_iter().for_each(|(start, len, out)| {
        let rows = &qkv[start * 3 * hidden..(start + len) * 3 * hidden];
        vectorized(
            #[inline(always)]
            || sequence_attention(rows, len, hidden, heads, out),
        );
    });
    out
}

#[inline(always)]
fn sequence_attention(rows: &[f32], len: usize, hidden: usize, heads: usize, out: &mut [f32]) {
    let head_dim = hidden / heads;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let stride = 3 * hidden;
    let mut scores = vec![0f32; len];
    // One head's keys, transposed to `[head_dim][len]`: a query's scores then build up as
    // `head_dim` vector updates over all keys at once, with no per-key horizontal sums.
    let mut keys = vec![0f32; head_dim * len];
    for h in 0..heads {
        let (q_at, k_at, v_at) = (
            h * head_dim,
            hidden + h * head_dim,
            2 * hidden + h * head_dim,
        );
        for s in 0..len {
            for (d, &k) in rows[s * stride + k_at..][..head_dim].iter().enumerate() {
                keys[d * len + s] = k;
            }
        }
        for t in 0..len {
            let query = &rows[t * stride + q_at..][..head_dim];
            scores.fill(0.0);
            for (d, &q) in query.iter().enumerate() {
                let q = q * scale;
                for (score, &k) in scores.iter_mut().zip(&keys[d * len..][..len]) {
                    *score += q * k;
                }
            }
            let max = fast_math::max(&scores);
            for score in &mut scores {
                *score = fast_math::exp(*score - max);
            }
            let norm = 1.0 / fast_math::sum(&scores);
            let target = &mut out[t * hidden + h * head_dim..][..head_dim];
            target.fill(0.0);
            for (s, &weight) in scores.iter().enumerate() {
                let value = &rows[s * stride + v_at..][..head_dim];
                let weight = weight * norm;
                for (o, &v) in target.iter_mut().zip(value) {
                    *o += weight * v;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_of_one_token_returns_its_value() {
        // One token, two heads of width 1: softmax over a single key is 1.
        let qkv = [0.3, -0.2, 0.5, 0.7, 1.5, -2.5];
        assert_eq!(attention(&qkv, &[1], 2, 2), [1.5, -2.5]);
    }

    #[test]
    fn sequences_do_not_attend_to_each_other() {
        // Two sequences of one token each: each must get back only its own value.
        let qkv = [1.0, 1.0, 10.0, 0.0, 0.0, 20.0];
        assert_eq!(attention(&qkv, &[1, 1], 1, 1), [10.0, 20.0]);
    }

    #[test]
    fn attention_weights_keys_by_softmax() {
        // One sequence of two tokens, width 1: both queries see keys 0 and ln 3, so the weights
        // are 1/4 and 3/4 over values 4 and 8.
        let k1 = 3f32.ln();
        let qkv = [1.0, 0.0, 4.0, 1.0, k1, 8.0];
        let out = attention(&qkv, &[2], 1, 1);
        for v in out {
            assert!((v - 7.0).abs() < 1e-5, "{v}");
        }
    }

    #[test]
    fn mean_pooling_averages_rows() {
        assert_eq!(mean_rows(&[1.0, 2.0, 3.0, 6.0], 2), [2.0, 4.0]);
    }
}
