//! Attention over one sequence's KV cache, fused into one pass per query row and KV head:
//! scores, softmax and the weighted sum of values, with no mask tensor, no copy of the cache
//! and no intermediate tensors.
//!
//! Each output row is computed by the same loop whatever the number of rows around it, so a
//! sequence's result does not depend on how its prompt was chunked or on which other sequences
//! share the batch. The numbers follow llama.cpp's f16 KV cache: keys and values are stored in
//! f16, queries arrive rounded to f16, and the attention weights are rounded to f16 before
//! they meet the values.

use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use crate::fast_math::{exp, vectorized};

/// Positions a cache makes room for at first.
const MIN_CACHE_POSITIONS: usize = 64;
/// Multiply-adds below which a task is not worth handing to another thread.
const MIN_TASK_WORK: usize = 1 << 14;

#[derive(Debug, Clone, Copy)]
pub struct HeadShape {
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
}

impl HeadShape {
    /// Values one position holds in the cache for each of keys and values.
    fn kv_row(&self) -> usize {
        self.n_kv_head * self.head_dim
    }

    /// Query heads that share one KV head.
    fn group(&self) -> usize {
        self.n_head / self.n_kv_head
    }
}

/// One layer's keys and values for one sequence, f16 and position-major: position `p` holds
/// every KV head's `head_dim` values at `p * kv_row`. Appending writes in place; the buffers
/// grow by doubling (O(n) copies for n tokens), never past the context length.
#[derive(Default)]
pub struct LayerCache {
    keys: Vec<f16>,
    values: Vec<f16>,
}

impl LayerCache {
    /// Appends the keys and values of `t` positions (`(t, kv_row)` each, row-major), rounded
    /// to f16. `limit` is the most positions the cache will ever hold.
    pub fn append(&mut self, keys: &[f32], values: &[f32], shape: &HeadShape, limit: usize) {
        let row = shape.kv_row();
        let needed = self.keys.len() + keys.len();
        if needed > self.keys.capacity() {
            let grown = (2 * self.keys.capacity())
                .max(needed)
                .max(MIN_CACHE_POSITIONS * row)
                .min((limit * row).max(needed));
            for buffer in [&mut self.keys, &mut self.values] {
                buffer.reserve_exact(grown - buffer.len());
            }
        }
        for (buffer, new) in [(&mut self.keys, keys), (&mut self.values, values)] {
            let start = buffer.len();
            buffer.resize(start + new.len(), f16::ZERO);
            buffer[start..].convert_from_f32_slice(new);
        }
    }

    /// Positions held.
    pub fn positions(&self, shape: &HeadShape) -> usize {
        self.keys.len() / shape.kv_row()
    }

    #[cfg(test)]
    fn capacity(&self, shape: &HeadShape) -> usize {
        self.keys.capacity() / shape.kv_row()
    }
}

/// One sequence's share of a batched attention: `t` query rows at positions `pos..pos + t`
/// (`q`: `(t, n_head * head_dim)`, rotated and rounded to f16) and its cache, which already
/// holds their own keys.
pub struct Queries<'a> {
    pub q: Vec<f32>,
    pub cache: &'a LayerCache,
    pub pos: usize,
}

/// Attention for every sequence of a batch in one parallel loop over (sequence, row, KV head),
/// so both cores stay busy even when each sequence has a single query row. A query sees the
/// keys at or before its position, within `window` positions if the layer slides. Returns the
/// rows of all sequences one after the other: `(Σt, n_head * head_dim)`.
pub fn attend(batch: &[Queries<'_>], shape: &HeadShape, window: Option<usize>) -> Vec<f32> {
    let (dim, group) = (shape.head_dim, shape.group());
    let q_row = shape.n_head * dim;
    // (sequence, row) of every query row of the batch, in output order.
    let rows: Vec<(usize, usize)> = batch
        .iter()
        .enumerate()
        .flat_map(|(s, seq)| (0..seq.q.len() / q_row).map(move |row| (s, row)))
        .collect();
    let visible = |s: usize, row: usize| {
        let p = batch[s].pos + row;
        window.map_or(0, |w| (p + 1).saturating_sub(w))..p + 1
    };
    let longest = rows
        .iter()
        .map(|&(s, row)| visible(s, row).len())
        .max()
        .unwrap_or(0);
    let work_per_task = longest * group * dim * 2;
    let mut out = vec![0f32; rows.len() * q_row];
    out.par_chunks_mut(group * dim)
        .enumerate()
        .with_min_len((MIN_TASK_WORK / work_per_task.max(1)).max(1))
        .for_each(|(task, out)| {
            let (s, row) = rows[task / shape.n_kv_head];
            let kv_head = task % shape.n_kv_head;
            let seq = &batch[s];
            debug_assert!(seq.cache.positions(shape) > seq.pos + row);
            let queries = &seq.q[row * q_row + kv_head * group * dim..][..group * dim];
            vectorized(
                #[inline(always)]
                || attend_one(queries, seq.cache, kv_head, visible(s, row), shape, out),
            );
        });
    out
}

/// The `group` query heads (`queries`, head after head) that share `kv_head`, for one query
/// row whose visible keys are `keys`, into `out` (same layout as `queries`).
#[inline(always)]
fn attend_one(
    queries: &[f32],
    cache: &LayerCache,
    kv_head: usize,
    keys: std::ops::Range<usize>,
    shape: &HeadShape,
    out: &mut [f32],
) {
    let (dim, group, row) = (shape.head_dim, shape.group(), shape.kv_row());
    let scale = 1.0 / (dim as f32).sqrt();
    let n = keys.len();
    // Where position p's values for this KV head lie in either buffer.
    let at = |p: usize| p * row + kv_head * dim..(p * row + kv_head * dim) + dim;
    let mut converted = vec![0f32; dim];
    let mut scores = vec![0f32; group * n];
    for (j, p) in keys.clone().enumerate() {
        widen(&cache.keys[at(p)], &mut converted);
        for (g, query) in queries.chunks_exact(dim).enumerate() {
            scores[g * n + j] = dot(query, &converted) * scale;
        }
    }
    for weights in scores.chunks_exact_mut(n) {
        softmax_f16(weights);
    }
    out.fill(0.0);
    for (j, p) in keys.enumerate() {
        widen(&cache.values[at(p)], &mut converted);
        for (g, out) in out.chunks_exact_mut(dim).enumerate() {
            let weight = scores[g * n + j];
            for (o, v) in out.iter_mut().zip(&converted) {
                *o += weight * v;
            }
        }
    }
}

/// f16 values to f32, exactly, in integer and float operations that vectorize inline (the
/// `half` crate's slice conversion is a call per eight values, after a CPU check).
#[inline(always)]
fn widen(values: &[f16], out: &mut [f32]) {
    // 2¹¹²: moves an f16 exponent (bias 15), shifted into f32 position, to the f32 bias (127);
    // the product is exact, subnormal f16 values included.
    const REBIAS: f32 = f32::from_bits((127 + 112) << 23);
    for (out, value) in out.iter_mut().zip(values) {
        let bits = u32::from(value.to_bits());
        let magnitude = f32::from_bits((bits & 0x7FFF) << 13) * REBIAS;
        // Infinities and NaNs keep an all-ones exponent.
        let magnitude = if bits & 0x7C00 == 0x7C00 {
            f32::from_bits(magnitude.to_bits() | 0x7F80_0000)
        } else {
            magnitude
        };
        *out = f32::from_bits(magnitude.to_bits() | ((bits & 0x8000) << 16));
    }
}

/// Softmax in place, the sum taken in f64 and applied as a reciprocal as ggml does, and the
/// weights rounded to f16 (ggml multiplies them with the f16 values in f16).
#[inline(always)]
fn softmax_f16(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0f64;
    for v in x.iter_mut() {
        *v = exp(*v - max);
        sum += f64::from(*v);
    }
    let inverse = (1.0 / sum) as f32;
    for v in x.iter_mut() {
        *v = f16::from_f32(*v * inverse).to_f32();
    }
}

/// A dot product over 16 independent lanes, which the compiler keeps in vector registers.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let mut chunks = a.chunks_exact(16).zip(b.chunks_exact(16));
    for (a, b) in &mut chunks {
        for i in 0..16 {
            lanes[i] += a[i] * b[i];
        }
    }
    let tail: f32 = a[a.len() / 16 * 16..]
        .iter()
        .zip(&b[b.len() / 16 * 16..])
        .map(|(x, y)| x * y)
        .sum();
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    #[test]
    fn widen_is_halfs_conversion_for_every_f16() {
        let all: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
        let mut ours = vec![0f32; all.len()];
        super::widen(&all, &mut ours);
        for (h, ours) in all.iter().zip(ours) {
            let theirs = h.to_f32();
            assert!(
                ours.to_bits() == theirs.to_bits() || (ours.is_nan() && theirs.is_nan()),
                "{:#06x}: {ours} vs {theirs}",
                h.to_bits()
            );
        }
    }

    use super::*;

    const SHAPE: HeadShape = HeadShape {
        n_head: 4,
        n_kv_head: 2,
        head_dim: 16,
    };

    /// Values exactly representable in f16, so that the reference below sees what the cache
    /// holds.
    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 31 + seed * 17) % 41) as f32 - 20.0) / 16.0)
            .collect()
    }

    /// Attention written out plainly, in f64, over the visible keys.
    fn plain(q: &[f32], keys: &[f32], vals: &[f32], pos: usize, window: Option<usize>) -> Vec<f32> {
        let (dim, row) = (SHAPE.head_dim, SHAPE.kv_row());
        let q_row = SHAPE.n_head * dim;
        let mut out = Vec::new();
        for (r, query_row) in q.chunks_exact(q_row).enumerate() {
            let p = pos + r;
            let first = window.map_or(0, |w| (p + 1).saturating_sub(w));
            for (h, query) in query_row.chunks_exact(dim).enumerate() {
                let kv = h / SHAPE.group();
                let slice = |buffer: &[f32], j: usize| buffer[j * row + kv * dim..][..dim].to_vec();
                let scores: Vec<f64> = (first..=p)
                    .map(|j| {
                        let k = slice(keys, j);
                        let s: f64 = query.iter().zip(&k).map(|(a, b)| f64::from(a * b)).sum();
                        s / (dim as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                let total: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                let mut head = vec![0f64; dim];
                for (s, j) in scores.iter().zip(first..=p) {
                    let weight = (s - max).exp() / total;
                    for (o, v) in head.iter_mut().zip(slice(vals, j)) {
                        *o += weight * f64::from(v);
                    }
                }
                out.extend(head.into_iter().map(|v| v as f32));
            }
        }
        out
    }

    fn queries<'a>(q: &[f32], cache: &'a LayerCache, pos: usize) -> Queries<'a> {
        Queries {
            q: q.to_vec(),
            cache,
            pos,
        }
    }

    fn close(got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            // The attention weights are rounded to f16: relative error 2⁻¹¹ each.
            assert!((g - w).abs() <= 2e-3 * (1.0 + w.abs()), "{i}: {g} vs {w}");
        }
    }

    #[test]
    fn fused_attention_matches_the_plain_formula_with_and_without_window() {
        let positions = 9;
        let keys = values(positions * SHAPE.kv_row(), 1);
        let vals = values(positions * SHAPE.kv_row(), 2);
        let mut cache = LayerCache::default();
        cache.append(&keys, &vals, &SHAPE, 100);
        let q = values(3 * SHAPE.n_head * SHAPE.head_dim, 3);
        for window in [None, Some(4)] {
            let got = attend(&[queries(&q, &cache, 6)], &SHAPE, window);
            close(&got, &plain(&q, &keys, &vals, 6, window));
        }
    }

    #[test]
    fn a_row_is_the_same_alone_and_among_others() {
        let positions = 12;
        let keys = values(positions * SHAPE.kv_row(), 4);
        let vals = values(positions * SHAPE.kv_row(), 5);
        let mut cache = LayerCache::default();
        cache.append(&keys, &vals, &SHAPE, 100);
        let q_row = SHAPE.n_head * SHAPE.head_dim;
        let q = values(5 * q_row, 6);
        let together = attend(&[queries(&q, &cache, 7)], &SHAPE, None);
        let last_alone = attend(&[queries(&q[4 * q_row..], &cache, 11)], &SHAPE, None);
        assert_eq!(&together[4 * q_row..], last_alone.as_slice());
        // And beside another sequence's rows in the same batch.
        let other = values(2 * q_row, 7);
        let beside = attend(
            &[
                queries(&other, &cache, 3),
                queries(&q[4 * q_row..], &cache, 11),
            ],
            &SHAPE,
            None,
        );
        assert_eq!(&beside[2 * q_row..], last_alone.as_slice());
    }

    #[test]
    fn the_cache_keeps_every_position_and_stops_growing_at_the_limit() {
        let mut cache = LayerCache::default();
        let row = SHAPE.kv_row();
        let mut all = Vec::new();
        for (i, t) in [3, 70, 1, 1].into_iter().enumerate() {
            let keys = values(t * row, i);
            cache.append(&keys, &keys, &SHAPE, 100);
            all.extend(keys);
        }
        assert_eq!(cache.positions(&SHAPE), 75);
        let held: Vec<f32> = cache.keys.iter().map(|v| v.to_f32()).collect();
        assert_eq!(held, all);
        assert_eq!(cache.capacity(&SHAPE), 100);
    }
}
