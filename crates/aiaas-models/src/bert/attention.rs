//! Bidirectional multi-head attention within each packed sequence.
//!
//! One task per sequence and head. A query's scores are built 16 keys at a time and its output
//! 16 dimensions at a time, from copies of the head's keys and values laid out so that either
//! is one walk over contiguous 16-lane vectors: the running sums stay in vector registers (four
//! chains of 16), with no per-key horizontal sums and no loads and stores of partial sums.

use rayon::prelude::*;

use crate::fast_math::{self, vectorized};

/// Sums kept in one register: the f32 lanes of a 512-bit vector.
const LANES: usize = 16;

/// `qkv` holds one row of `[query | key | value]` (each `hidden` wide) per token; the result
/// holds one `hidden`-wide row per token.
pub fn attention(qkv: &[f32], lengths: &[usize], hidden: usize, heads: usize) -> Vec<f32> {
    let head_dim = hidden / heads;
    let starts: Vec<usize> = lengths
        .iter()
        .scan(0, |next, &len| {
            let start = *next;
            *next += len;
            Some(start)
        })
        .collect();
    let tasks: Vec<(usize, usize)> = (0..lengths.len())
        .flat_map(|sequence| (0..heads).map(move |head| (sequence, head)))
        .collect();
    let heads_out: Vec<Vec<f32>> = tasks
        .par_iter()
        .map(|&(sequence, head)| {
            let (start, len) = (starts[sequence], lengths[sequence]);
            let rows = &qkv[start * 3 * hidden..(start + len) * 3 * hidden];
            vectorized(
                #[inline(always)]
                || head_attention(rows, len, hidden, head * head_dim, head_dim),
            )
        })
        .collect();
    let total: usize = lengths.iter().sum();
    let mut out = vec![0f32; total * hidden];
    for (&(sequence, head), values) in tasks.iter().zip(&heads_out) {
        let rows = out[starts[sequence] * hidden..].chunks_exact_mut(hidden);
        for (row, token) in rows.zip(values.chunks_exact(head_dim)) {
            row[head * head_dim..][..head_dim].copy_from_slice(token);
        }
    }
    out
}

/// One head of one sequence: `len × head_dim` values, token-major. `offset` is the head's
/// first column within the query, key and value parts of a row.
#[inline(always)]
fn head_attention(
    rows: &[f32],
    len: usize,
    hidden: usize,
    offset: usize,
    head_dim: usize,
) -> Vec<f32> {
    let stride = 3 * hidden;
    let (q_at, k_at, v_at) = (offset, hidden + offset, 2 * hidden + offset);
    let scale = 1.0 / (head_dim as f32).sqrt();
    // Keys in runs of 16 tokens, `[run][dimension][token of the run]`; values in runs of 16
    // dimensions, `[run][token][dimension of the run]`. Missing tokens and dimensions of the
    // last run are zero: their sums are computed and never read.
    let key_runs = len.div_ceil(LANES);
    let value_runs = head_dim.div_ceil(LANES);
    let mut keys = vec![0f32; key_runs * head_dim * LANES];
    let mut values = vec![0f32; value_runs * len * LANES];
    for (s, row) in rows.chunks_exact(stride).enumerate() {
        let run = &mut keys[s / LANES * head_dim * LANES..][..head_dim * LANES];
        for (k, lanes) in row[k_at..][..head_dim]
            .iter()
            .zip(run.chunks_exact_mut(LANES))
        {
            lanes[s % LANES] = *k;
        }
        for (run, dims) in row[v_at..][..head_dim].chunks(LANES).enumerate() {
            values[(run * len + s) * LANES..][..dims.len()].copy_from_slice(dims);
        }
    }
    let mut scores = vec![0f32; key_runs * LANES];
    let mut out = vec![0f32; len * head_dim];
    for (row, target) in rows
        .chunks_exact(stride)
        .zip(out.chunks_exact_mut(head_dim))
    {
        let query = &row[q_at..][..head_dim];
        for (chunk, keys) in scores
            .chunks_exact_mut(LANES)
            .zip(keys.chunks_exact(head_dim * LANES))
        {
            chunk.copy_from_slice(&weighted_sum(query, keys));
        }
        let scores = &mut scores[..len];
        let max = fast_math::max(scores);
        for score in scores.iter_mut() {
            *score = fast_math::exp((*score - max) * scale);
        }
        let norm = 1.0 / fast_math::sum(scores);
        for (dims, values) in target
            .chunks_mut(LANES)
            .zip(values.chunks_exact(len * LANES))
        {
            let sums = weighted_sum(scores, values);
            for (out, sum) in dims.iter_mut().zip(sums) {
                *out = sum * norm;
            }
        }
    }
    out
}

/// Chains of sums kept apart so that each addition need not wait for the one before: a vector
/// addition takes four cycles to finish, and two can start every cycle.
const CHAINS: usize = 4;

/// `Σ scales[i] · vectors[i]` over 16-lane vectors laid end to end, in `CHAINS` chains.
#[inline(always)]
fn weighted_sum(scales: &[f32], vectors: &[f32]) -> [f32; LANES] {
    let mut chains = [[0f32; LANES]; CHAINS];
    let whole = scales.len() / CHAINS * CHAINS;
    let (vectors, rest) = vectors.split_at(whole * LANES);
    for (scales, vectors) in scales
        .chunks_exact(CHAINS)
        .zip(vectors.chunks_exact(CHAINS * LANES))
    {
        let [a, b, c, d] = &mut chains;
        add_scaled(a, scales[0], &vectors[..LANES]);
        add_scaled(b, scales[1], &vectors[LANES..2 * LANES]);
        add_scaled(c, scales[2], &vectors[2 * LANES..3 * LANES]);
        add_scaled(d, scales[3], &vectors[3 * LANES..]);
    }
    for (&scale, vector) in scales[whole..].iter().zip(rest.chunks_exact(LANES)) {
        add_scaled(&mut chains[0], scale, vector);
    }
    let [mut a, b, c, d] = chains;
    for (((a, b), c), d) in a.iter_mut().zip(b).zip(c).zip(d) {
        *a = (*a + b) + (c + d);
    }
    a
}

/// `sums += scale · values`, lane by lane.
#[inline(always)]
fn add_scaled(sums: &mut [f32; LANES], scale: f32, values: &[f32]) {
    for (sum, &v) in sums.iter_mut().zip(values) {
        *sum += scale * v;
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

    /// The textbook computation, in f64.
    fn naive(qkv: &[f32], len: usize, hidden: usize, heads: usize) -> Vec<f64> {
        let head_dim = hidden / heads;
        let at = |t: usize, part: usize, h: usize, d: usize| {
            qkv[t * 3 * hidden + part * hidden + h * head_dim + d] as f64
        };
        let mut out = vec![0f64; len * hidden];
        for h in 0..heads {
            for t in 0..len {
                let scores: Vec<f64> = (0..len)
                    .map(|s| {
                        let dot: f64 = (0..head_dim).map(|d| at(t, 0, h, d) * at(s, 1, h, d)).sum();
                        dot / (head_dim as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = weights.iter().sum();
                for d in 0..head_dim {
                    let v: f64 = (0..len).map(|s| weights[s] * at(s, 2, h, d)).sum();
                    out[t * hidden + h * head_dim + d] = v / total;
                }
            }
        }
        out
    }

    #[test]
    fn matches_the_textbook_computation_for_odd_lengths_and_widths() {
        // Head widths of 32 (whole lane groups) and 20 (a partial one); lengths around 16.
        for (hidden, heads) in [(64, 2), (60, 3)] {
            for len in [1, 15, 16, 17, 40] {
                let qkv: Vec<f32> = (0..len * 3 * hidden)
                    .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 1.5)
                    .collect();
                let ours = attention(&qkv, &[len], hidden, heads);
                for (i, (a, b)) in ours.iter().zip(naive(&qkv, len, hidden, heads)).enumerate() {
                    assert!(
                        (*a as f64 - b).abs() < 1e-5,
                        "hidden {hidden} len {len} [{i}]: {a} vs {b}"
                    );
                }
            }
        }
    }
}
