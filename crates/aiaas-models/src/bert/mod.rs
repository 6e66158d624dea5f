//! BERT-family sentence encoders (all-MiniLM-L6-v2 and kin) from Hugging Face folders
//! (`config.json` + `model.safetensors`).
//!
//! A batch is *packed*: the token rows of every sequence are stacked into one `[tokens, hidden]`
//! matrix, so the dense layers (nearly all the work) run as single large matrix products with no
//! padding, and only attention, the one step that mixes tokens, looks at sequence boundaries.
//! Mixing a 5-token and a 250-token input therefore costs what the 255 tokens cost.

mod attention;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use crate::dense::{add, each_row, Dense, Norm};
use crate::fast_math;
use crate::{ModelError, Result};
use attention::attention;

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
    /// `vocab_size × hidden_size`.
    word: Vec<f32>,
    /// `max_position_embeddings × hidden_size`.
    position: Vec<f32>,
    /// Segment 0's embedding: sentence encoders see one segment.
    token_type: Vec<f32>,
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

    fn values(&self, name: &str) -> Result<Vec<f32>> {
        Ok(self.get(name)?.flatten_all()?.to_vec1::<f32>()?)
    }

    /// Linear layers stacked along their outputs (one product for several projections).
    fn dense(&self, names: &[String]) -> Result<Dense> {
        let weight = |name: &String| self.get(&format!("{name}.weight"));
        let weights = Tensor::cat(&names.iter().map(weight).collect::<Result<Vec<_>>>()?, 0)?;
        let (outputs, inputs) = weights.dims2()?;
        let weights = weights.flatten_all()?.to_vec1::<f32>()?;
        let mut bias = Vec::with_capacity(outputs);
        for name in names {
            bias.extend(self.values(&format!("{name}.bias"))?);
        }
        Ok(Dense::new(&weights, bias, inputs))
    }

    fn norm(&self, name: &str, eps: f64) -> Result<Norm> {
        Ok(Norm {
            weight: self.values(&format!("{name}.weight"))?,
            bias: self.values(&format!("{name}.bias"))?,
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
                let attention = |part: &str| format!("{p}.attention.self.{part}");
                Ok(Layer {
                    qkv: w.dense(&[attention("query"), attention("key"), attention("value")])?,
                    attention_out: w.dense(&[format!("{p}.attention.output.dense")])?,
                    attention_norm: w.norm(&format!("{p}.attention.output.LayerNorm"), eps)?,
                    up: w.dense(&[format!("{p}.intermediate.dense")])?,
                    down: w.dense(&[format!("{p}.output.dense")])?,
                    output_norm: w.norm(&format!("{p}.output.LayerNorm"), eps)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let token_type = w.get("embeddings.token_type_embeddings.weight")?.get(0)?;
        let encoder = Self {
            word: w.values("embeddings.word_embeddings.weight")?,
            position: w.values("embeddings.position_embeddings.weight")?,
            token_type: token_type.to_vec1::<f32>()?,
            embedding_norm: w.norm("embeddings.LayerNorm", eps)?,
            layers,
            config,
            pooling,
            normalize,
        };
        let hidden = encoder.config.hidden_size;
        let tables = [
            (encoder.word.len(), encoder.config.vocab_size * hidden),
            (
                encoder.position.len(),
                encoder.config.max_position_embeddings * hidden,
            ),
            (encoder.token_type.len(), hidden),
        ];
        if tables.iter().any(|(found, expected)| found != expected) {
            return Err(ModelError::Format(
                "embedding tables do not match config.json's sizes".into(),
            ));
        }
        Ok(encoder)
    }

    /// Parameters in the weights, for the model listing.
    pub fn parameter_count(&self) -> u64 {
        let norms = Norm::parameter_count;
        let tables = self.word.len() + self.position.len() + self.token_type.len();
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                [&l.qkv, &l.attention_out, &l.up, &l.down]
                    .iter()
                    .map(|d| d.parameter_count())
                    .sum::<usize>()
                    + norms(&l.attention_norm)
                    + norms(&l.output_norm)
            })
            .sum();
        (tables + norms(&self.embedding_norm) + layers) as u64
    }

    /// One vector per sequence. Every sequence must be non-empty, hold ids below the vocabulary
    /// size and fit the position table; the engine checks that before batching.
    pub fn embed(&self, sequences: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        // On a thread of the pool: see `Decoder::forward_batch`.
        Ok(rayon::scope(|_| self.embed_on_pool(sequences)))
    }

    fn embed_on_pool(&self, sequences: &[&[u32]]) -> Vec<Vec<f32>> {
        let hidden = self.config.hidden_size;
        let lengths: Vec<usize> = sequences.iter().map(|s| s.len()).collect();
        let tokens: Vec<(u32, usize)> = sequences
            .iter()
            .flat_map(|s| s.iter().enumerate().map(|(position, &id)| (id, position)))
            .collect();
        let mut x = vec![0f32; tokens.len() * hidden];
        each_row(&mut x, hidden, |i, row| {
            let (id, position) = tokens[i];
            let word = &self.word[id as usize * hidden..][..hidden];
            let position = &self.position[position * hidden..][..hidden];
            for (((v, w), p), t) in row.iter_mut().zip(word).zip(position).zip(&self.token_type) {
                *v = w + p + t;
            }
            self.embedding_norm.apply(row);
        });
        for layer in &self.layers {
            x = self.layer(layer, &x, &lengths);
        }
        let mut offset = 0;
        let mut vectors = Vec::with_capacity(lengths.len());
        for &len in &lengths {
            let sequence = &x[offset * hidden..(offset + len) * hidden];
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
        vectors
    }

    fn layer(&self, layer: &Layer, x: &[f32], lengths: &[usize]) -> Vec<f32> {
        let hidden = self.config.hidden_size;
        let rows = x.len() / hidden;
        let mut qkv = layer.qkv.product(x, rows);
        each_row(&mut qkv, 3 * hidden, |_, row| add(row, &layer.qkv.bias));
        let context = attention(&qkv, lengths, hidden, self.config.num_attention_heads);
        let mut attended = layer.attention_out.product(&context, rows);
        each_row(&mut attended, hidden, |i, row| {
            add(row, &layer.attention_out.bias);
            add(row, &x[i * hidden..][..hidden]);
            layer.attention_norm.apply(row);
        });
        let mut inner = layer.up.product(&attended, rows);
        each_row(&mut inner, layer.up.bias.len(), |_, row| {
            for (v, b) in row.iter_mut().zip(&layer.up.bias) {
                *v = fast_math::gelu(*v + b);
            }
        });
        let mut out = layer.down.product(&inner, rows);
        each_row(&mut out, hidden, |i, row| {
            add(row, &layer.down.bias);
            add(row, &attended[i * hidden..][..hidden]);
            layer.output_norm.apply(row);
        });
        out
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_pooling_averages_rows() {
        assert_eq!(mean_rows(&[1.0, 2.0, 3.0, 6.0], 2), [2.0, 4.0]);
    }
}
