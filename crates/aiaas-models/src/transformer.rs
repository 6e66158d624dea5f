//! Decoder-only transformers from GGUF: `llama` (SmolLM2), `qwen2` and `gemma3`.
//!
//! The three share one shape (pre-norm attention with rotary positions and grouped KV heads,
//! then a gated MLP) and differ in details that the config names: rotary layout, QKV biases,
//! Gemma's scaled embeddings, per-head q/k norms, post-norms, GELU and sliding-window layers.
//! Weights stay quantized and are multiplied by this crate's quantized products (`linear.rs`).
//! The KV cache lives outside the weights, one per sequence, so one loaded model serves many
//! sequences.
//!
//! Reference: llama.cpp `src/models/{llama,qwen2,gemma3}.cpp`.

mod rows;

use std::fs::File;
use std::io::BufReader;
use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};

use crate::attention::{attend, HeadShape, LayerCache, Queries};
use crate::linear::Linear;
use crate::{GgufFile, ModelError, Result};
use rows::{Rotary, RotaryLayout};

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
            // A window of 0 would hide every key: read as no window.
            sliding_window: if gemma {
                gguf.usize(&key("attention.sliding_window")?)
                    .ok()
                    .filter(|&w| w > 0)
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
    biases: Option<[Vec<f32>; 3]>,
    /// Gemma 3 normalises each query and key head.
    qk_norms: Option<[Vec<f32>; 2]>,
    window: Option<usize>,
    local_rope: bool,
}

/// A layer's weights; the norms' and biases' few values as plain f32.
struct Layer {
    attn_norm: Vec<f32>,
    attention: Attention,
    post_attn_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    gate: Linear,
    up: Linear,
    down: Linear,
    post_ffn_norm: Option<Vec<f32>>,
}

/// A loaded model; immutable during inference, so one instance serves any number of sequences.
pub struct Decoder {
    pub config: DecoderConfig,
    embeddings: Embeddings,
    layers: Vec<Layer>,
    output_norm: Vec<f32>,
    output: Linear,
    vocab_size: usize,
    device: Device,
}

/// Where token ids become vectors.
enum Embeddings {
    /// The table is the output matrix (tied embeddings) in this crate's format: its rows are
    /// read from there, so the table is in memory once.
    TiedToOutput,
    Table(Arc<QTensor>),
}

/// One sequence's attention keys and values (f16), layer by layer.
pub struct KvCache {
    layers: Vec<LayerCache>,
    len: usize,
}

impl KvCache {
    pub fn new(config: &DecoderConfig) -> Self {
        Self {
            layers: std::iter::repeat_with(LayerCache::default)
                .take(config.n_layer)
                .collect(),
            len: 0,
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

/// One sequence of a batch: its next tokens and the cache they extend.
pub struct BatchEntry<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut KvCache,
    /// Whether the logits of its last token are needed (not for a prompt chunk before the last).
    pub wants_logits: bool,
}

/// Where a batch entry's rows lie in the batch, with its positions' rotary tables.
struct Span {
    offset: usize,
    pos: usize,
    len: usize,
    global_rope: Rotary,
    local_rope: Option<Rotary>,
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
            let mut dense = |suffix: &str| -> Result<Vec<f32>> {
                Ok(tensor(&name(suffix))?
                    .dequantize(&device)?
                    .flatten_all()?
                    .to_vec1()?)
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
        let output_norm = tensor("output_norm.weight")?
            .dequantize(&device)?
            .flatten_all()?
            .to_vec1()?;
        // Tied embeddings: without an output matrix the embedding table projects back to logits.
        let (output, embeddings) = if has("output.weight") {
            let output = Linear::new(tensor("output.weight")?)?;
            (output, Embeddings::Table(embedding))
        } else {
            let output = Linear::shared(embedding.clone())?;
            match output {
                Linear::Own(_) => (output, Embeddings::TiedToOutput),
                Linear::Candle(_) => (output, Embeddings::Table(embedding)),
            }
        };
        Ok(Self {
            config,
            embeddings,
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
        let mut batch = [BatchEntry {
            tokens,
            cache,
            wants_logits: true,
        }];
        let mut logits = self.forward_batch(&mut batch)?;
        Ok(logits.pop().flatten().expect("one entry asked for logits"))
    }

    /// Advances several sequences in one pass: their tokens go through every weight matrix
    /// together (each matrix is read once for the whole batch, which is what makes serving
    /// many streams cheap), while attention runs per sequence over its own cache. Returns, per
    /// entry and in order, the logits of its last token if it asked for them.
    ///
    /// Every row is computed exactly as it would be alone (the products, norms and activations
    /// work row by row), so batching never changes a sequence's output — for the GGUF types
    /// this crate multiplies itself; candle's kernels, used for the others, may pick another
    /// method by row count.
    pub fn forward_batch(&self, batch: &mut [BatchEntry<'_>]) -> Result<Vec<Option<Vec<f32>>>> {
        // On a thread of the pool, the pass's few hundred parallel loops (products, attention,
        // candle's element-wise ops) are handed out there; from any other thread each would
        // wake the pool and put this thread to sleep until it is done.
        rayon::scope(|_| self.forward_batch_on_pool(batch))
    }

    fn forward_batch_on_pool(&self, batch: &mut [BatchEntry<'_>]) -> Result<Vec<Option<Vec<f32>>>> {
        if batch.iter().any(|entry| entry.tokens.is_empty()) || batch.is_empty() {
            return Err(ModelError::Format("forward called with no tokens".into()));
        }
        let ids: Vec<u32> = batch
            .iter()
            .flat_map(|e| e.tokens.iter().copied())
            .collect();
        if let Some(id) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            return Err(ModelError::Format(format!(
                "token id {id} is outside the vocabulary"
            )));
        }
        let tokens = ids.len();
        // The batch's rows, token after token, `n_embd` values each.
        let mut x = match &self.embeddings {
            Embeddings::TiedToOutput => self.output.gather(&ids)?,
            Embeddings::Table(table) => table
                .embedding(&Tensor::new(ids.as_slice(), &self.device)?)?
                .flatten_all()?
                .to_vec1()?,
        };
        if self.config.architecture == Architecture::Gemma3 {
            rows::scale(&mut x, (self.config.n_embd as f64).sqrt() as f32);
        }
        let mut spans = Vec::with_capacity(batch.len());
        let mut offset = 0;
        for entry in batch.iter() {
            let (pos, t) = (entry.cache.len, entry.tokens.len());
            let rotary = |base| Rotary::new(pos, t, self.config.head_dim, base);
            spans.push(Span {
                offset,
                pos,
                len: t,
                global_rope: rotary(self.config.rope_base),
                local_rope: (self.config.architecture == Architecture::Gemma3)
                    .then(|| rotary(self.config.rope_base_local)),
            });
            offset += t;
        }
        let eps = self.config.rms_eps;
        for (i, layer) in self.layers.iter().enumerate() {
            let h = rows::rms_norm(&x, &layer.attn_norm, eps);
            let mut caches: Vec<_> = batch
                .iter_mut()
                .map(|entry| &mut entry.cache.layers[i])
                .collect();
            let mut a = self.attention(&layer.attention, &h, tokens, &spans, &mut caches)?;
            if let Some(norm) = &layer.post_attn_norm {
                rows::rms_norm_in_place(&mut a, norm, eps);
            }
            rows::add(&mut x, &a);
            let h = rows::rms_norm(&x, &layer.ffn_norm, eps);
            let mut gate = layer.gate.forward(&h, tokens)?;
            let activation = match self.config.architecture {
                Architecture::Gemma3 => rows::Activation::GeluF16,
                Architecture::Llama | Architecture::Qwen2 => rows::Activation::Silu,
            };
            rows::gate(&mut gate, &layer.up.forward(&h, tokens)?, activation);
            let mut f = layer.down.forward(&gate, tokens)?;
            if let Some(norm) = &layer.post_ffn_norm {
                rows::rms_norm_in_place(&mut f, norm, eps);
            }
            rows::add(&mut x, &f);
        }
        for (entry, span) in batch.iter_mut().zip(&spans) {
            entry.cache.len += span.len;
        }

        // Only the last row of the sequences that asked for logits meets the output matrix,
        // the largest in small models.
        let width = self.config.n_embd;
        let last: Vec<f32> = batch
            .iter()
            .zip(&spans)
            .filter(|(entry, _)| entry.wants_logits)
            .flat_map(|(_, span)| &x[(span.offset + span.len - 1) * width..][..width])
            .copied()
            .collect();
        let wanted = last.len() / width;
        let logits = if wanted == 0 {
            Vec::new()
        } else {
            let last = rows::rms_norm(&last, &self.output_norm, eps);
            self.output.forward(&last, wanted)?
        };
        let mut rows = logits.chunks_exact(self.vocab_size);
        Ok(batch
            .iter()
            .map(|entry| {
                entry
                    .wants_logits
                    .then(|| rows.next().map(<[f32]>::to_vec))
                    .flatten()
            })
            .collect())
    }

    /// Attention for every sequence of a batch: `h` holds their `tokens` rows one after the
    /// other, as `spans` say, and `caches` their caches for this layer.
    fn attention(
        &self,
        attn: &Attention,
        h: &[f32],
        tokens: usize,
        spans: &[Span],
        caches: &mut [&mut LayerCache],
    ) -> Result<Vec<f32>> {
        let c = &self.config;
        let mut q = attn.q.forward(h, tokens)?;
        let mut k = attn.k.forward(h, tokens)?;
        let mut v = attn.v.forward(h, tokens)?;
        if let Some([bq, bk, bv]) = &attn.biases {
            rows::add_bias(&mut q, bq);
            rows::add_bias(&mut k, bk);
            rows::add_bias(&mut v, bv);
        }
        let (q_row, kv_row) = (c.n_head * c.head_dim, c.n_kv_head * c.head_dim);
        for (span, cache) in spans.iter().zip(caches.iter_mut()) {
            let rope = match (&span.local_rope, attn.local_rope) {
                (Some(local), true) => local,
                _ => &span.global_rope,
            };
            let rows = span.offset..span.offset + span.len;
            self.append_keys(
                attn,
                &mut q[rows.start * q_row..rows.end * q_row],
                &mut k[rows.start * kv_row..rows.end * kv_row],
                &v[rows.start * kv_row..rows.end * kv_row],
                cache,
                rope,
            );
        }
        let batch: Vec<Queries<'_>> = spans
            .iter()
            .zip(caches.iter())
            .map(|(span, cache)| Queries {
                q: &q[span.offset * q_row..][..span.len * q_row],
                cache,
                pos: span.pos,
            })
            .collect();
        let out = attend(&batch, &self.head_shape(), attn.window);
        attn.o.forward(&out, tokens)
    }

    /// Prepares one sequence's projected rows `q`, `k`, `v` (token after token, every head's
    /// values): norms and rotations in place, keys and values appended to its cache. The
    /// queries are then ready for `attend`.
    fn append_keys(
        &self,
        attn: &Attention,
        q: &mut [f32],
        k: &mut [f32],
        v: &[f32],
        cache: &mut LayerCache,
        rope: &Rotary,
    ) {
        let c = &self.config;
        if let Some([qn, kn]) = &attn.qk_norms {
            rows::rms_norm_in_place(q, qn, c.rms_eps);
            rows::rms_norm_in_place(k, kn, c.rms_eps);
        }
        let layout = match c.architecture {
            Architecture::Llama => RotaryLayout::Interleaved,
            Architecture::Qwen2 | Architecture::Gemma3 => RotaryLayout::Halves,
        };
        rope.apply(q, layout);
        rope.apply(k, layout);
        // Queries are rounded to f16 to meet the f16 cache, as llama.cpp's f16 product does;
        // this keeps greedy outputs token-for-token equal to llama.cpp's.
        rows::round_f16(q);
        cache.append(k, v, &self.head_shape(), c.context_length);
    }

    fn head_shape(&self) -> HeadShape {
        HeadShape {
            n_head: self.config.n_head,
            n_kv_head: self.config.n_kv_head,
            head_dim: self.config.head_dim,
        }
    }
}
