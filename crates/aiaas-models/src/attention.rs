//! Attention over one sequence's KV cache, fused into one pass per query row and KV head:
//! scores, softmax and the weighted sum of values, with no mask tensor, no copy of the cache
//! and no intermediate tensors.
//!
//! Each output row is computed by the same loop whatever the number of rows around it, so a
//! sequence's result does not depend on how its prompt was chunked or on which other sequences
//! share the batch. The numbers follow llama.cpp's f16 KV cache: keys and values are stored in
//! f16, queries arrive rounded to f16, and the attention weights are rounded to f16 before
//! they meet the values.

use std::ops::Range;

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
    pub q: &'a [f32],
    pub cache: &'a LayerCache,
    pub pos: usize,
}

/// Attention for every sequence of a batch in one parallel loop over (sequence, row, KV head),
/// so both cores stay busy even when each sequence has a single query row. A query sees the
/// keys at or before its position, within `window` positions if the layer slides. Returns the
/// rows of all sequences one after the other: `(Σt, n_head * head_dim)`.
///
/// Each sequence's visible keys and values are first widened to f32 once per KV head (in a
/// prompt chunk every row would otherwise widen the same keys again).
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
    let widened: Vec<WidenedHead> = (0..batch.len() * shape.n_kv_head)
        .into_par_iter()
        .map(|task| {
            let (s, kv_head) = (task / shape.n_kv_head, task % shape.n_kv_head);
            let rows = batch[s].q.len() / q_row;
            let span = visible(s, 0).start..visible(s, rows.max(1) - 1).end;
            vectorized(
                #[inline(always)]
                || WidenedHead::new(batch[s].cache, kv_head, span, shape),
            )
        })
        .collect();
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
            let head = &widened[s * shape.n_kv_head + kv_head];
            vectorized(
                #[inline(always)]
                || attend_one(queries, head, visible(s, row), shape, out),
            );
        });
    out
}

/// Keys and values per block of scores: 16 positions, one vector register of sums each lane.
const BLOCK: usize = 16;

/// One sequence's keys and values for one KV head over a span of positions, widened to f32:
/// keys in blocks of 16 positions (the last padded with zeros), each block transposed
/// (`[block][dimension][position]`: a block's keys are one contiguous run, read front to back),
/// values position-major.
struct WidenedHead {
    first: usize,
    keys: Vec<f32>,
    values: Vec<f32>,
}

impl WidenedHead {
    #[inline(always)]
    fn new(cache: &LayerCache, kv_head: usize, span: Range<usize>, shape: &HeadShape) -> Self {
        let (dim, row) = (shape.head_dim, shape.kv_row());
        let padded = span.len().next_multiple_of(BLOCK);
        let mut keys = vec![0f32; dim * padded];
        let mut values = vec![0f32; span.len() * dim];
        let mut converted = vec![0f32; dim];
        for (j, p) in span.clone().enumerate() {
            let at = p * row + kv_head * dim;
            widen(&cache.keys[at..][..dim], &mut converted);
            let block = &mut keys[j / BLOCK * dim * BLOCK..][..dim * BLOCK];
            for (d, &k) in converted.iter().enumerate() {
                block[d * BLOCK + j % BLOCK] = k;
            }
            widen(&cache.values[at..][..dim], &mut values[j * dim..][..dim]);
        }
        Self {
            first: span.start,
            keys,
            values,
        }
    }
}

/// The `group` query heads (`queries`, head after head) that share one KV head, for one query
/// row whose visible keys are `keys`, into `out` (same layout as `queries`).
#[inline(always)]
fn attend_one(
    queries: &[f32],
    head: &WidenedHead,
    keys: Range<usize>,
    shape: &HeadShape,
    out: &mut [f32],
) {
    let (dim, group) = (shape.head_dim, shape.group());
    let scale = 1.0 / (dim as f32).sqrt();
    let n = keys.len();
    let offset = keys.start - head.first;
    let mut scores = vec![0f32; group * n];
    // Block after block, each meeting every query head of the group while it is in the cache.
    for block in (offset / BLOCK * BLOCK..offset + n).step_by(BLOCK) {
        let keys = &head.keys[block / BLOCK * dim * BLOCK..][..dim * BLOCK];
        // The block's positions that this row sees.
        let seen = block.max(offset)..(block + BLOCK).min(offset + n);
        for (query, scores) in queries.chunks_exact(dim).zip(scores.chunks_exact_mut(n)) {
            let dots = block_dots(query, keys);
            for j in seen.clone() {
                scores[j - offset] = dots[j - block] * scale;
            }
        }
    }
    for weights in scores.chunks_exact_mut(n) {
        softmax_f16(weights);
    }
    out.fill(0.0);
    let values = head.values[offset * dim..][..n * dim].chunks_exact(dim);
    for (j, values) in values.enumerate() {
        for (g, out) in out.chunks_exact_mut(dim).enumerate() {
            let weight = scores[g * n + j];
            for (o, v) in out.iter_mut().zip(values) {
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
/// weights rounded to f16 (ggml multiplies them with the f16 values in f16). Only the f64 sum
/// runs one value at a time; the rest is written to vectorize.
#[inline(always)]
fn softmax_f16(x: &mut [f32]) {
    let max = crate::fast_math::max(x);
    for v in x.iter_mut() {
        *v = exp(*v - max);
    }
    let sum: f64 = x.iter().map(|&v| f64::from(v)).sum();
    let inverse = (1.0 / sum) as f32;
    for v in x.iter_mut() {
        *v = round_to_f16(*v * inverse);
    }
}

/// `x` rounded to the nearest f16 (ties to even) and back, as `half`'s conversions do, for
/// |x| ≤ 65504 (softmax weights lie in [0, 1]), in operations that vectorize.
#[inline(always)]
fn round_to_f16(x: f32) -> f32 {
    // 2⁻¹⁴, the smallest normal f16; below it f16 values are multiples of 2⁻²⁴, which adding
    // and taking away 0.75 (whose f32 spacing is 2⁻²⁴) rounds to.
    const SMALLEST_NORMAL: f32 = 1.0 / 16384.0;
    let magnitude = x.abs();
    let bits = magnitude.to_bits();
    // Normal: drop 13 of f32's 23 mantissa bits, rounding to nearest even.
    let normal = f32::from_bits((bits + 0x0FFF + ((bits >> 13) & 1)) & !0x1FFF);
    let subnormal = (magnitude + 0.75) - 0.75;
    let rounded = if magnitude < SMALLEST_NORMAL {
        subnormal
    } else {
        normal
    };
    rounded.copysign(x)
}

/// The dot products of `query` with the `BLOCK` keys of a block (`keys`: `[dimension][position]`),
/// each computed as `dot` computes one: lane `i` sums `query[16c + i] · key[16c + i]` over `c`
/// in order, then the lanes are added in order. Here a key's 16 lanes are spread over 16
/// vectors of the block's keys, so all of it vectorizes.
#[inline(always)]
fn block_dots(query: &[f32], keys: &[f32]) -> [f32; BLOCK] {
    let whole = query.len() / 16 * 16;
    let key = |d: usize| -> &[f32] { &keys[d * BLOCK..][..BLOCK] };
    let mut lanes = [[0f32; BLOCK]; 16];
    for (c, query) in query[..whole].chunks_exact(16).enumerate() {
        for (i, (lane, &q)) in lanes.iter_mut().zip(query).enumerate() {
            for (sum, &k) in lane.iter_mut().zip(key(16 * c + i)) {
                *sum += q * k;
            }
        }
    }
    let mut dots = [-0.0f32; BLOCK];
    for lane in &lanes {
        for (dot, &sum) in dots.iter_mut().zip(lane) {
            *dot += sum;
        }
    }
    // Dimensions past the last whole 16 (head widths not a multiple of 16), summed apart.
    let mut tails = [0f32; BLOCK];
    for (d, &q) in query.iter().enumerate().skip(whole) {
        for (tail, &k) in tails.iter_mut().zip(key(d)) {
            *tail += q * k;
        }
    }
    for (dot, tail) in dots.iter_mut().zip(tails) {
        *dot += tail;
    }
    dots
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

    fn queries<'a>(q: &'a [f32], cache: &'a LayerCache, pos: usize) -> Queries<'a> {
        Queries { q, cache, pos }
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

    /// One dot product as the fused attention first computed it: 16 lanes, then the lanes
    /// added in order, then the tail.
    fn lane_dot(a: &[f32], b: &[f32]) -> f32 {
        let mut lanes = [0f32; 16];
        for (a, b) in a.chunks_exact(16).zip(b.chunks_exact(16)) {
            for i in 0..16 {
                lanes[i] += a[i] * b[i];
            }
        }
        let whole = a.len() / 16 * 16;
        let tail: f32 = a[whole..].iter().zip(&b[whole..]).map(|(x, y)| x * y).sum();
        lanes.iter().sum::<f32>() + tail
    }

    #[test]
    fn rounding_to_f16_is_halfs_conversion() {
        let ties = (0..=u16::MAX)
            .map(f16::from_bits)
            .filter(|h| h.is_finite())
            .flat_map(|h| {
                // Each f16 value, and the f32 values just around it and halfway to the next.
                let v = h.to_f32();
                let next = f16::from_bits(h.to_bits().wrapping_add(1)).to_f32();
                let half = (v + next) / 2.0;
                [
                    v,
                    half,
                    f32::from_bits(half.to_bits() + 1),
                    f32::from_bits(half.to_bits() - 1),
                ]
            });
        let sweep = (0..2_000_000).map(|i| i as f32 / 2_000_000.0);
        for x in ties
            .chain(sweep)
            .filter(|x| x.is_finite() && x.abs() <= 65504.0)
        {
            let expected = f16::from_f32(x).to_f32();
            assert_eq!(round_to_f16(x).to_bits(), expected.to_bits(), "{x:e}");
        }
    }

    #[test]
    fn block_dots_equal_lane_dots_to_the_bit() {
        for dim in [16, 64, 72] {
            let query: Vec<f32> = (0..dim)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
                .collect();
            let keys: Vec<Vec<f32>> = (0..2 * BLOCK)
                .map(|k| {
                    (0..dim)
                        .map(|i| ((i * 13 + k * 29) % 97) as f32 / 11.0 - 4.0)
                        .collect()
                })
                .collect();
            for block in [0, BLOCK] {
                let mut transposed = vec![0f32; dim * BLOCK];
                for (k, key) in keys[block..][..BLOCK].iter().enumerate() {
                    for (d, &v) in key.iter().enumerate() {
                        transposed[d * BLOCK + k] = v;
                    }
                }
                let dots = block_dots(&query, &transposed);
                for (j, dot) in dots.iter().enumerate() {
                    let expected = lane_dot(&query, &keys[block + j]);
                    assert_eq!(
                        dot.to_bits(),
                        expected.to_bits(),
                        "dim {dim} key {}",
                        block + j
                    );
                }
            }
        }
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
