//! Decoder-only transformers from GGUF: `llama` (SmolLM2), `qwen2` and `gemma3`.
//!
//! The three share one shape (pre-norm attention with rotary positions and grouped KV heads,
//! then a gated MLP) and differ in details that the config names: rotary layout, QKV biases,
//! Gemma's scaled embeddings, per-head q/k norms, post-norms, GELU and sliding-window layers.
//! Weights stay quantized and are multiplied by candle's quantized kernels. The KV cache lives
//! outside the weights, one per sequence, so one loaded model serves many sequences.
//!
//! Reference: llama.cpp `src/models/{llama,qwen2,gemma3}.cpp`.

use std::fs::File;
use std::io::BufReader;
use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Tensor};

use crate::linear::Linear;
use crate::{GgufFile, ModelError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    Qwen2,
    Gemma3,
}

impl Architecture {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "llama" => Ok(Self::Llama),
            "qwen2" => Ok(Self::Qwen2),
            "gemma3" => Ok(Self::Gemma3),
            other => Err(ModelError::UnsupportedArchitecture(other.to_string())),
        }
    }
}

/// Hyper-parameters read from the GGUF metadata.
#[derive(Debug, Clone)]
pub struct DecoderConfig {
    pub architecture: Architecture,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub context_length: usize,
    pub rms_eps: f32,
    pub rope_base: f32,
    /// Gemma 3's sliding-window layers use their own rotary base.
    pub rope_base_local: f32,
    /// Keys further back than this are invisible to sliding-window layers.
    pub sliding_window: Option<usize>,
    /// Every `n`-th layer attends globally; the others slide (Gemma 3: 6).
    pub global_layer_every: usize,
}

impl DecoderConfig {
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let architecture = Architecture::parse(&gguf.architecture()?)?;
        let key = |suffix: &str| gguf.arch_key(suffix);
        let n_embd = gguf.usize(&key("embedding_length")?)?;
        let n_head = gguf.usize(&key("attention.head_count")?)?;
        let head_dim = gguf
            .usize(&key("attention.key_length")?)
            .unwrap_or(n_embd / n_head);
        let gemma = architecture == Architecture::Gemma3;
        Ok(Self {
            architecture,
            n_layer: gguf.usize(&key("block_count")?)?,
            n_embd,
            n_head,
            n_kv_head: gguf
                .usize(&key("attention.head_count_kv")?)
                .unwrap_or(n_head),
            head_dim,
            context_length: gguf.usize(&key("context_length")?)?,
            rms_eps: gguf.f32(&key("attention.layer_norm_rms_epsilon")?)?,
            rope_base: gguf.f32(&key("rope.freq_base")?).unwrap_or(10_000.0),
            rope_base_local: 10_000.0,
            sliding_window: if gemma {
                gguf.usize(&key("attention.sliding_window")?).ok()
            } else {
                None
            },
            global_layer_every: if gemma { 6 } else { 1 },
        })
    }

    /// Bytes of KV cache one token occupies.
    pub fn kv_bytes_per_token(&self) -> usize {
        self.n_layer * 2 * self.n_kv_head * self.head_dim * 2
    }
}

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    /// Qwen2's projections carry biases.
    biases: Option<[Tensor; 3]>,
    /// Gemma 3 normalises each query and key head.
    qk_norms: Option<[Tensor; 2]>,
    window: Option<usize>,
    local_rope: bool,
}

struct Layer {
    attn_norm: Tensor,
    attention: Attention,
    post_attn_norm: Option<Tensor>,
    ffn_norm: Tensor,
    gate: Linear,
    up: Linear,
    down: Linear,
    post_ffn_norm: Option<Tensor>,
}

/// A loaded model; immutable during inference, so one instance serves any number of sequences.
pub struct Decoder {
    pub config: DecoderConfig,
    embedding: Arc<QTensor>,
    layers: Vec<Layer>,
    output_norm: Tensor,
    output: Linear,
    vocab_size: usize,
    device: Device,
}

/// One sequence's attention keys and values (f16), layer by layer.
pub struct KvCache {
    layers: Vec<Option<LayerCache>>,
    len: usize,
    /// The most positions the cache will hold: the model's context length.
    limit: usize,
}

/// One layer's keys and values, `(n_kv_head, capacity, head_dim)`, filled up to the sequence's
/// length. Written in place and grown by doubling, so a sequence of n tokens copies O(n) cache
/// entries in all (appending by concatenation copied the whole cache at every token: O(n²)).
struct LayerCache {
    keys: Tensor,
    values: Tensor,
}

/// Positions a layer cache starts with.
const MIN_CACHE_CAPACITY: usize = 64;

impl LayerCache {
    /// Writes `keys` and `values` (`(n_kv_head, t, head_dim)`) at position `pos` of `slot`,
    /// growing it if needed, and returns views of every position so far.
    fn append(
        slot: &mut Option<Self>,
        keys: &Tensor,
        values: &Tensor,
        pos: usize,
        limit: usize,
    ) -> Result<(Tensor, Tensor)> {
        let filled = pos + keys.dim(1)?;
        let capacity = slot.as_ref().map_or(Ok(0), |cache| cache.keys.dim(1))?;
        if filled > capacity {
            let grown = filled
                .next_power_of_two()
                .max(MIN_CACHE_CAPACITY)
                .min(limit.max(filled));
            let (heads, _, dim) = keys.dims3()?;
            let empty = || Tensor::zeros((heads, grown, dim), keys.dtype(), keys.device());
            let cache = Self {
                keys: empty()?,
                values: empty()?,
            };
            if let Some(old) = slot.take() {
                let kept = |t: &Tensor| t.narrow(1, 0, pos)?.contiguous();
                cache.keys.slice_set(&kept(&old.keys)?, 1, 0)?;
                cache.values.slice_set(&kept(&old.values)?, 1, 0)?;
            }
            *slot = Some(cache);
        }
        let cache = slot.as_ref().expect("the cache exists: set above");
        cache.keys.slice_set(keys, 1, pos)?;
        cache.values.slice_set(values, 1, pos)?;
        Ok((
            cache.keys.narrow(1, 0, filled)?,
            cache.values.narrow(1, 0, filled)?,
        ))
    }
}

impl KvCache {
    pub fn new(config: &DecoderConfig) -> Self {
        Self {
            layers: std::iter::repeat_with(|| None)
                .take(config.n_layer)
                .collect(),
            len: 0,
            limit: config.context_length,
        }
    }

    /// Tokens already in the cache; the next token's position.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

struct Rotary {
    cos: Tensor,
    sin: Tensor,
}

impl Decoder {
    pub fn load(gguf: &GgufFile) -> Result<Self> {
        let config = DecoderConfig::from_gguf(gguf)?;
        let device = Device::Cpu;
        let file = File::open(&gguf.path).map_err(|source| ModelError::Io {
            path: gguf.path.display().to_string(),
            source,
        })?;
        let mut reader = BufReader::new(file);
        let mut tensor = |name: &str| -> Result<QTensor> {
            gguf.content
                .tensor(&mut reader, name, &device)
                .map_err(|e| ModelError::Format(format!("tensor `{name}`: {e}")))
        };
        let has = |name: &str| gguf.content.tensor_infos.contains_key(name);

        let embedding = Arc::new(tensor("token_embd.weight")?);
        let vocab_size = embedding.shape().dims()[0];
        let gemma = config.architecture == Architecture::Gemma3;
        let mut layers = Vec::with_capacity(config.n_layer);
        for i in 0..config.n_layer {
            let name = |suffix: &str| format!("blk.{i}.{suffix}");
            let mut dense = |suffix: &str| -> Result<Tensor> {
                Ok(tensor(&name(suffix))?.dequantize(&device)?)
            };
            let biases = if has(&name("attn_q.bias")) {
                Some([
                    dense("attn_q.bias")?,
                    dense("attn_k.bias")?,
                    dense("attn_v.bias")?,
                ])
            } else {
                None
            };
            let qk_norms = if gemma {
                Some([dense("attn_q_norm.weight")?, dense("attn_k_norm.weight")?])
            } else {
                None
            };
            let sliding = (i + 1) % config.global_layer_every != 0;
            let post_attn_norm = gemma
                .then(|| dense("post_attention_norm.weight"))
                .transpose()?;
            let post_ffn_norm = gemma.then(|| dense("post_ffw_norm.weight")).transpose()?;
            let attn_norm = dense("attn_norm.weight")?;
            let ffn_norm = dense("ffn_norm.weight")?;
            let mut matmul = |suffix: &str| Linear::new(tensor(&name(suffix))?);
            layers.push(Layer {
                attn_norm,
                attention: Attention {
                    q: matmul("attn_q.weight")?,
                    k: matmul("attn_k.weight")?,
                    v: matmul("attn_v.weight")?,
                    o: matmul("attn_output.weight")?,
                    biases,
                    qk_norms,
                    window: if sliding { config.sliding_window } else { None },
                    local_rope: sliding && gemma,
                },
                post_attn_norm,
                ffn_norm,
                gate: matmul("ffn_gate.weight")?,
                up: matmul("ffn_up.weight")?,
                down: matmul("ffn_down.weight")?,
                post_ffn_norm,
            });
        }
        let output_norm = tensor("output_norm.weight")?.dequantize(&device)?;
        // Tied embeddings: without an output matrix the embedding table projects back to logits.
        let output = if has("output.weight") {
            Linear::new(tensor("output.weight")?)?
        } else {
            Linear::shared(embedding.clone())?
        };
        Ok(Self {
            config,
            embedding,
            layers,
            output_norm,
            output,
            vocab_size,
            device,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Runs `tokens` (the next positions of the sequence whose cache is given) through the model,
    /// appends their keys and values to the cache and returns the logits of the last token.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<f32>> {
        let (t, pos) = (tokens.len(), cache.len);
        if t == 0 {
            return Err(ModelError::Format("forward called with no tokens".into()));
        }
        let ids = Tensor::new(tokens, &self.device)?;
        let mut x = self.embedding.embedding(&ids)?;
        if self.config.architecture == Architecture::Gemma3 {
            x = (x * (self.config.n_embd as f64).sqrt())?;
        }
        let global_rope = self.rotary(pos, t, self.config.rope_base)?;
        let local_rope = if self.config.architecture == Architecture::Gemma3 {
            Some(self.rotary(pos, t, self.config.rope_base_local)?)
        } else {
            None
        };
        let eps = self.config.rms_eps;
        let limit = cache.limit;
        for (layer, kv) in self.layers.iter().zip(cache.layers.iter_mut()) {
            let h = rms_norm(&x, &layer.attn_norm, eps)?;
            let rope = match (&local_rope, layer.attention.local_rope) {
                (Some(local), true) => local,
                _ => &global_rope,
            };
            let mut a = self.attention(&layer.attention, &h, pos, kv, limit, rope)?;
            if let Some(norm) = &layer.post_attn_norm {
                a = rms_norm(&a, norm, eps)?;
            }
            x = (x + a)?;
            let h = rms_norm(&x, &layer.ffn_norm, eps)?;
            let gate = layer.gate.forward(&h)?;
            let gate = match self.config.architecture {
                Architecture::Gemma3 => gelu_f16_table(&gate)?,
                Architecture::Llama | Architecture::Qwen2 => gate.silu()?,
            };
            let mut f = layer.down.forward(&(gate * layer.up.forward(&h)?)?)?;
            if let Some(norm) = &layer.post_ffn_norm {
                f = rms_norm(&f, norm, eps)?;
            }
            x = (x + f)?;
        }
        cache.len += t;
        let last = rms_norm(&x.narrow(0, t - 1, 1)?, &self.output_norm, eps)?;
        let logits = self.output.forward(&last)?.squeeze(0)?;
        Ok(logits.to_dtype(DType::F32)?.to_vec1()?)
    }

    fn attention(
        &self,
        attn: &Attention,
        h: &Tensor,
        pos: usize,
        kv: &mut Option<LayerCache>,
        limit: usize,
        rope: &Rotary,
    ) -> Result<Tensor> {
        let c = &self.config;
        let t = h.dim(0)?;
        let mut q = attn.q.forward(h)?;
        let mut k = attn.k.forward(h)?;
        let mut v = attn.v.forward(h)?;
        if let Some([bq, bk, bv]) = &attn.biases {
            q = q.broadcast_add(bq)?;
            k = k.broadcast_add(bk)?;
            v = v.broadcast_add(bv)?;
        }
        // (t, heads * dim) → (heads, t, dim)
        let heads = |x: Tensor, n: usize| -> Result<Tensor> {
            Ok(x.reshape((t, n, c.head_dim))?
                .transpose(0, 1)?
                .contiguous()?)
        };
        let mut q = heads(q, c.n_head)?;
        let mut k = heads(k, c.n_kv_head)?;
        let v = heads(v, c.n_kv_head)?;
        if let Some([qn, kn]) = &attn.qk_norms {
            q = rms_norm(&q, qn, c.rms_eps)?;
            k = rms_norm(&k, kn, c.rms_eps)?;
        }
        // Keys and values are cached in f16, as llama.cpp does by default; queries and attention
        // weights are rounded to f16 before meeting them, as its f16 matmul does. This halves
        // the cache and keeps greedy outputs token-for-token equal to llama.cpp's.
        let q = round_f16(&self.apply_rotary(&q, rope)?)?;
        let k = self.apply_rotary(&k, rope)?.to_dtype(DType::F16)?;
        let v = v.to_dtype(DType::F16)?;
        let (k, v) = LayerCache::append(kv, &k, &v, pos, limit)?;
        let (k, v) = (k.to_dtype(DType::F32)?, v.to_dtype(DType::F32)?);
        let kv_len = k.dim(1)?;

        // Grouped-query attention without copying keys: the query heads that share a KV head
        // are stacked along the row axis, (kv_heads, group * t, dim).
        let group = c.n_head / c.n_kv_head;
        let q = q.reshape((c.n_kv_head, group * t, c.head_dim))?;
        let scale = 1.0 / (c.head_dim as f64).sqrt();
        let mut scores = (q.matmul(&k.t()?)? * scale)?;
        if let Some(mask) = attention_mask(t, pos, kv_len, attn.window, group, &self.device)? {
            scores = scores.broadcast_add(&mask)?;
        }
        let probs = round_f16(&candle_nn::ops::softmax_last_dim(&scores)?)?;
        let out = probs
            .matmul(&v)?
            .reshape((c.n_head, t, c.head_dim))?
            .transpose(0, 1)?
            .reshape((t, c.n_head * c.head_dim))?;
        attn.o.forward(&out)
    }

    /// Cosine and sine tables for positions `pos..pos + t`, computed as ggml does (f32, with the
    /// angle step raised to a power once) so that results track llama.cpp closely.
    fn rotary(&self, pos: usize, t: usize, base: f32) -> Result<Rotary> {
        let half = self.config.head_dim / 2;
        let step = base.powf(-2.0 / self.config.head_dim as f32);
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
        Ok(Rotary {
            cos: Tensor::from_vec(cos, (t, half), &self.device)?,
            sin: Tensor::from_vec(sin, (t, half), &self.device)?,
        })
    }

    fn apply_rotary(&self, x: &Tensor, rope: &Rotary) -> Result<Tensor> {
        let x = x.unsqueeze(0)?;
        // GGUF llama weights are permuted for interleaved pairs; Qwen2 and Gemma 3 rotate halves.
        let rotated = match self.config.architecture {
            Architecture::Llama => candle_nn::rotary_emb::rope_i(&x, &rope.cos, &rope.sin)?,
            Architecture::Qwen2 | Architecture::Gemma3 => {
                candle_nn::rotary_emb::rope(&x, &rope.cos, &rope.sin)?
            }
        };
        Ok(rotated.squeeze(0)?)
    }
}

/// GELU as ggml computes it (`GGML_GELU_FP16`): the input rounded to f16, looked up in a table
/// of f16 results, and passed through unchanged beyond ±10. Matching it keeps Gemma's greedy
/// outputs equal to llama.cpp's.
fn gelu_f16_table(x: &Tensor) -> Result<Tensor> {
    let table = round_f16(&round_f16(x)?.gelu()?)?;
    let high = x.ge(10.0f32)?;
    let low = x.le(-10.0f32)?;
    let out = high.where_cond(x, &table)?;
    Ok(low.where_cond(&out.zeros_like()?, &out)?)
}

fn round_f16(x: &Tensor) -> Result<Tensor> {
    Ok(x.to_dtype(DType::F16)?.to_dtype(DType::F32)?)
}

fn rms_norm(x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
    Ok(candle_nn::ops::rms_norm(&x.contiguous()?, weight, eps)?)
}

/// Additive mask for `t` queries at positions `pos..` over `kv_len` keys, repeated for each of
/// the `group` query heads stacked per KV head. `None` when every key is visible.
fn attention_mask(
    t: usize,
    pos: usize,
    kv_len: usize,
    window: Option<usize>,
    group: usize,
    device: &Device,
) -> Result<Option<Tensor>> {
    let windowed = window.is_some_and(|w| kv_len > w);
    if t == 1 && !windowed {
        return Ok(None);
    }
    let mut row_masks = Vec::with_capacity(t * kv_len);
    for i in 0..t {
        let query = pos + i;
        row_masks.extend((0..kv_len).map(|key| {
            let visible = key <= query && window.is_none_or(|w| query - key < w);
            if visible {
                0.0f32
            } else {
                f32::NEG_INFINITY
            }
        }));
    }
    let mask = Tensor::from_vec(row_masks, (1, t, kv_len), device)?;
    let mask = mask
        .repeat((group, 1, 1))?
        .reshape((1, group * t, kv_len))?;
    Ok(Some(mask))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layer_cache_holds_every_appended_position_across_growth() {
        let piece = |t: usize, start: f32| {
            let values: Vec<f32> = (0..2 * t * 4).map(|i| start + i as f32).collect();
            Tensor::from_vec(values, (2, t, 4), &Device::Cpu).unwrap()
        };
        // A prompt, a chunk that forces growth past the first capacity, then single tokens.
        let pieces = [
            piece(3, 0.0),
            piece(70, 1000.0),
            piece(1, 5000.0),
            piece(1, 6000.0),
        ];
        let mut slot = None;
        let mut pos = 0;
        for (i, p) in pieces.iter().enumerate() {
            let (keys, values) =
                LayerCache::append(&mut slot, p, &(p * 2.0).unwrap(), pos, 100).unwrap();
            pos += p.dim(1).unwrap();
            let so_far: Vec<&Tensor> = pieces[..=i].iter().collect();
            let expected = Tensor::cat(&so_far, 1).unwrap();
            assert_eq!(
                keys.to_vec3::<f32>().unwrap(),
                expected.to_vec3::<f32>().unwrap()
            );
            let doubled = (expected * 2.0).unwrap().to_vec3::<f32>().unwrap();
            assert_eq!(values.to_vec3::<f32>().unwrap(), doubled);
        }
        // Grown to the context limit, not beyond.
        assert_eq!(slot.unwrap().keys.dim(1).unwrap(), 100);
    }

    #[test]
    fn causal_mask_hides_future_keys_and_repeats_per_group() {
        let mask = attention_mask(2, 3, 5, None, 2, &Device::Cpu)
            .unwrap()
            .unwrap();
        let rows: Vec<Vec<f32>> = mask.squeeze(0).unwrap().to_vec2().unwrap();
        let inf = f32::NEG_INFINITY;
        let first = vec![0.0, 0.0, 0.0, 0.0, inf];
        let second = vec![0.0; 5];
        assert_eq!(rows, vec![first.clone(), second.clone(), first, second]);
    }

    #[test]
    fn sliding_window_hides_old_keys_even_for_one_query() {
        let mask = attention_mask(1, 4, 5, Some(3), 1, &Device::Cpu)
            .unwrap()
            .unwrap();
        let rows: Vec<Vec<f32>> = mask.squeeze(0).unwrap().to_vec2().unwrap();
        let inf = f32::NEG_INFINITY;
        assert_eq!(rows, vec![vec![inf, inf, 0.0, 0.0, 0.0]]);
    }

    #[test]
    fn no_mask_for_a_single_query_without_window() {
        assert!(attention_mask(1, 9, 10, None, 3, &Device::Cpu)
            .unwrap()
            .is_none());
    }
}
