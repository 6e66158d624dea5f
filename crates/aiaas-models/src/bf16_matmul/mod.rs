//! f32 activations times a dense weight matrix held in bfloat16: both operands rounded to bf16
//! (round to nearest even), their products (exact in f32) summed in f32. Three kernels: AMX
//! tiles (`amx`, Sapphire Rapids and later: 1.1 TFLOP/s a core here, ~17× the f32 rate), AVX-512
//! BF16 (`avx512`), and a portable one that computes AMX's order of additions to the bit (away
//! from subnormal numbers, which the instructions flush to zero). Each kernel computes a row the
//! same way whatever the other rows of the batch.
//!
//! Why bf16 is accurate enough: for all-MiniLM-L6-v2 every one of the 24 reference sentences stays
//! above cosine 0.99997 to sentence-transformers' f32 output (the bound is 0.9999); the
//! sums run in f32, only the operands are rounded.
//!
//! Layout. Weights are packed once at load: output columns in groups of `GROUP_PANELS` panels of
//! 16 columns, and within a group, for each pair of inputs `(2k, 2k + 1)`, the panels' 16
//! columns' two bf16 weights side by side in one 32-bit lane — the operand layout of
//! `vdpbf16ps`. Activations are rounded into rows of such pairs. A kernel tile is `TILE_ROWS`
//! rows × one group: its 24 running sums stay in registers while it walks the inputs.
//! Tasks (one group × a block of rows) write group-major results, which are then laid out as
//! ordinary rows.

#[cfg(target_os = "linux")]
#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod avx512;

use bytemuck::{Pod, Zeroable};
use rayon::prelude::*;

use crate::fast_math::vectorized;

/// Columns of one panel: the f32 lanes of a 512-bit vector.
pub const LANES: usize = 16;
/// Panels in a group: the AMX tile keeps one sum tile per panel and two sets of operand tiles
/// (activations and one weight tile per panel), 8 tile registers in all.
pub const GROUP_PANELS: usize = 2;
/// Columns of one group.
const GROUP_COLUMNS: usize = LANES * GROUP_PANELS;
/// Rows of one tile: an AMX tile's rows.
pub const TILE_ROWS: usize = 16;
/// Input pairs one AMX step takes (64 bytes of a tile row); inputs are padded with zero pairs
/// to a multiple of it.
pub const PAIRS_PER_STEP: usize = 16;
/// Rows one task computes: activations of that many rows stay in the core's cache while the
/// weights stream past.
const ROWS_PER_TASK: usize = 64;

/// 16 lanes of bf16 pairs on a cache line of their own: AMX loads rows that straddle two lines
/// about five times slower (measured), so every operand and result row is line-aligned.
#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C, align(64))]
pub struct Pairs(pub [u32; LANES]);

/// One pair of inputs for a group's columns: lane `l` of panel `p` holds the bf16 weights of
/// inputs `2k` (low half) and `2k + 1` (high half) for column `16p + l` of the group.
pub type PairOfPanels = [Pairs; GROUP_PANELS];

/// One row's sums for a group's columns, line-aligned (see `Pairs`).
#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C, align(64))]
pub struct GroupSums(pub [f32; GROUP_COLUMNS]);

/// A dense `[outputs, inputs]` weight matrix in bf16, packed for the kernels.
pub struct Bf16Matrix {
    /// `groups × padded_pairs` entries, group-major.
    packed: Vec<PairOfPanels>,
    outputs: usize,
    inputs: usize,
    kernel: Kernel,
}

#[derive(Clone, Copy)]
enum Kernel {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx512(avx512::Avx512Bf16),
    #[cfg(target_os = "linux")]
    #[cfg(target_arch = "x86_64")]
    Amx(amx::Amx),
}

impl Kernel {
    fn detect() -> Self {
        #[cfg(target_os = "linux")]
        #[cfg(target_arch = "x86_64")]
        if let Some(cpu) = amx::Amx::detect() {
            return Self::Amx(cpu);
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(cpu) = avx512::Avx512Bf16::detect() {
            return Self::Avx512(cpu);
        }
        Self::Portable
    }

    /// Several groups' weights (`pairs` entries each) times a block of activation rows
    /// (`pairs` lanes each, whole tiles) into `out`: group-major, each group's sums for the
    /// block's rows.
    fn task(self, weights: &[PairOfPanels], pairs: usize, rows: &[u32], out: &mut [GroupSums]) {
        match self {
            Self::Portable => vectorized(
                #[inline(always)]
                || for_each_tile(weights, pairs, rows, out, portable_tile),
            ),
            #[cfg(target_arch = "x86_64")]
            Self::Avx512(cpu) => {
                for_each_tile(weights, pairs, rows, out, |w, r, o| cpu.tile(w, r, o));
            }
            #[cfg(target_os = "linux")]
            #[cfg(target_arch = "x86_64")]
            Self::Amx(cpu) => {
                let tiles = cpu.configure();
                for_each_tile(weights, pairs, rows, out, |w, r, o| tiles.tile(w, r, o));
            }
        }
    }
}

/// `tile(group's weights, tile's rows, tile's sums)` for every group and every tile of rows.
#[inline(always)]
fn for_each_tile(
    weights: &[PairOfPanels],
    pairs: usize,
    rows: &[u32],
    out: &mut [GroupSums],
    mut tile: impl FnMut(&[PairOfPanels], &[u32], &mut [GroupSums]),
) {
    let block_rows = rows.len() / pairs;
    for (weights, out) in weights
        .chunks_exact(pairs)
        .zip(out.chunks_exact_mut(block_rows))
    {
        for (rows, out) in rows
            .chunks_exact(TILE_ROWS * pairs)
            .zip(out.chunks_exact_mut(TILE_ROWS))
        {
            tile(weights, rows, out);
        }
    }
}

/// f32 to bf16 bits, rounding to nearest even (as `vcvtne2ps2bf16` does; NaNs stay NaNs).
#[inline(always)]
pub fn to_bf16(value: f32) -> u32 {
    let bits = value.to_bits();
    if value.is_nan() {
        return (bits >> 16) | 0x40;
    }
    let rounding = 0x7FFF + ((bits >> 16) & 1);
    bits.wrapping_add(rounding) >> 16
}

/// bf16 bits (the low 16) to f32: exact.
#[inline(always)]
fn widen(bits: u32) -> f32 {
    f32::from_bits(bits << 16)
}

/// Two bf16 values in one lane, the first in the low half.
#[inline(always)]
fn pair(first: f32, second: f32) -> u32 {
    to_bf16(first) | (to_bf16(second) << 16)
}

impl Bf16Matrix {
    /// Packs row-major `[outputs, inputs]` f32 weights (a Hugging Face `Linear` weight).
    pub fn new(weights: &[f32], outputs: usize, inputs: usize) -> Self {
        Self::with_kernel(weights, outputs, inputs, Kernel::detect())
    }

    fn with_kernel(weights: &[f32], outputs: usize, inputs: usize, kernel: Kernel) -> Self {
        assert_eq!(
            weights.len(),
            outputs * inputs,
            "weights are not {outputs}×{inputs}"
        );
        let pairs = padded_pairs(inputs);
        let groups = outputs.div_ceil(GROUP_COLUMNS);
        let weight = |column: usize, input: usize| {
            if column < outputs && input < inputs {
                weights[column * inputs + input]
            } else {
                0.0
            }
        };
        let mut packed = vec![[Pairs([0; LANES]); GROUP_PANELS]; groups * pairs];
        packed
            .par_chunks_mut(pairs)
            .enumerate()
            .for_each(|(group, entries)| {
                for (k, entry) in entries.iter_mut().enumerate() {
                    for (panel, lanes) in entry.iter_mut().enumerate() {
                        for (lane, value) in lanes.0.iter_mut().enumerate() {
                            let column = group * GROUP_COLUMNS + panel * LANES + lane;
                            *value = pair(weight(column, 2 * k), weight(column, 2 * k + 1));
                        }
                    }
                }
            });
        Self {
            packed,
            outputs,
            inputs,
            kernel,
        }
    }

    pub fn outputs(&self) -> usize {
        self.outputs
    }

    pub fn inputs(&self) -> usize {
        self.inputs
    }

    /// `x` (`rows × inputs`, row-major) times the transposed weights: `rows × outputs`.
    pub fn product(&self, x: &[f32], rows: usize) -> Vec<f32> {
        assert_eq!(
            x.len(),
            rows * self.inputs,
            "activations are not {rows}×{}",
            self.inputs
        );
        let pairs = padded_pairs(self.inputs);
        let groups = self.packed.len() / pairs;
        let padded_rows = rows.next_multiple_of(TILE_ROWS);
        let activations = self.round_rows(x, padded_rows);
        // Results by blocks of `ROWS_PER_TASK` rows, and within a block group-major: group g's
        // sums for the block's rows, contiguous.
        let mut grouped = vec![GroupSums([0.0; GROUP_COLUMNS]); groups * padded_rows];
        let mut blocks = Vec::new();
        let activations: &[u32] = bytemuck::cast_slice(&activations);
        let (mut out, mut rest) = (grouped.as_mut_slice(), activations);
        while !rest.is_empty() {
            let block_rows = ROWS_PER_TASK.min(rest.len() / pairs);
            let (block_out, more_out) = out.split_at_mut(groups * block_rows);
            let (block, more) = rest.split_at(block_rows * pairs);
            blocks.push((block_out, block, block_rows));
            (out, rest) = (more_out, more);
        }
        // Enough tasks to share out among the threads, each covering as many groups as that
        // allows: a task is one call into the kernel (one tile configuration for AMX).
        let tasks_per_block = (4 * rayon::current_num_threads()).div_ceil(blocks.len());
        let groups_per_task = groups.div_ceil(tasks_per_block);
        blocks.into_par_iter().for_each(|(out, block, block_rows)| {
            out.par_chunks_mut(groups_per_task * block_rows)
                .zip(self.packed.par_chunks(groups_per_task * pairs))
                .for_each(|(out, weights)| self.kernel.task(weights, pairs, block, out));
        });
        self.ungroup(&grouped, rows, padded_rows, groups)
    }

    /// Activation rows rounded to bf16 pairs, padded with zero pairs and zero rows to whole
    /// tiles.
    fn round_rows(&self, x: &[f32], padded_rows: usize) -> Vec<Pairs> {
        let pairs = padded_pairs(self.inputs);
        let mut rounded = vec![Pairs([0; LANES]); padded_rows * pairs / LANES];
        bytemuck::cast_slice_mut::<Pairs, u32>(&mut rounded)
            .par_chunks_mut(pairs * ROWS_PER_TASK)
            .zip(x.par_chunks(self.inputs * ROWS_PER_TASK))
            .for_each(|(out, x)| {
                vectorized(
                    #[inline(always)]
                    || {
                        for (out, row) in
                            out.chunks_exact_mut(pairs).zip(x.chunks_exact(self.inputs))
                        {
                            let whole = row.chunks_exact(2);
                            let last = whole.remainder().first().map(|&v| pair(v, 0.0));
                            for (lane, two) in out.iter_mut().zip(whole) {
                                *lane = pair(two[0], two[1]);
                            }
                            if let Some(last) = last {
                                out[self.inputs / 2] = last;
                            }
                        }
                    },
                )
            });
        rounded
    }

    /// Blocked group-major sums (see `product`) to `rows × outputs` row-major.
    fn ungroup(
        &self,
        grouped: &[GroupSums],
        rows: usize,
        padded_rows: usize,
        groups: usize,
    ) -> Vec<f32> {
        let mut out = vec![0f32; rows * self.outputs];
        out.par_chunks_mut(self.outputs * ROWS_PER_TASK)
            .enumerate()
            .for_each(|(block, out)| {
                let first = block * ROWS_PER_TASK;
                let block_rows = ROWS_PER_TASK.min(padded_rows - first);
                let sums = &grouped[first * groups..][..groups * block_rows];
                for (i, row) in out.chunks_exact_mut(self.outputs).enumerate() {
                    for (group, columns) in row.chunks_mut(GROUP_COLUMNS).enumerate() {
                        columns.copy_from_slice(&sums[group * block_rows + i].0[..columns.len()]);
                    }
                }
            });
        out
    }
}

/// Input pairs of a row, padded to whole pairs of AMX steps (the AMX tile takes two at a time).
fn padded_pairs(inputs: usize) -> usize {
    inputs.div_ceil(2).next_multiple_of(2 * PAIRS_PER_STEP)
}

/// The portable tile, computing what AMX's `tdpbf16ps` computes (found by experiment on random
/// tiles, every value equal): for each step of 16 pairs, the products of the first values of
/// the pairs summed in order, those of the second values likewise, and the two partial sums
/// added to the running sum. Each product of two bf16 values is exact in f32.
#[inline(always)]
fn portable_tile(weights: &[PairOfPanels], rows: &[u32], out: &mut [GroupSums]) {
    let pairs = weights.len();
    for (row, sums) in rows.chunks_exact(pairs).zip(out.iter_mut()) {
        let mut lanes = [[0f32; LANES]; GROUP_PANELS];
        let steps = row
            .chunks_exact(PAIRS_PER_STEP)
            .zip(weights.chunks_exact(PAIRS_PER_STEP));
        for (activations, weights) in steps {
            let mut firsts = [[0f32; LANES]; GROUP_PANELS];
            let mut seconds = [[0f32; LANES]; GROUP_PANELS];
            for (&pair, entry) in activations.iter().zip(weights) {
                let (first, second) = (widen(pair & 0xFFFF), widen(pair >> 16));
                for ((firsts, seconds), weights) in firsts.iter_mut().zip(&mut seconds).zip(entry) {
                    for ((a, b), &w) in firsts.iter_mut().zip(seconds.iter_mut()).zip(&weights.0) {
                        *a += first * widen(w & 0xFFFF);
                        *b += second * widen(w >> 16);
                    }
                }
            }
            for ((lanes, firsts), seconds) in lanes.iter_mut().zip(&firsts).zip(&seconds) {
                for ((sum, a), b) in lanes.iter_mut().zip(firsts).zip(seconds) {
                    *sum += a + b;
                }
            }
        }
        for (out, lanes) in sums.0.chunks_exact_mut(LANES).zip(&lanes) {
            out.copy_from_slice(lanes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(count: usize, seed: u32) -> Vec<f32> {
        (0..count)
            .map(|i| ((i as u32).wrapping_mul(2_654_435_761) ^ seed) as f32 / u32::MAX as f32 - 0.5)
            .collect()
    }

    #[test]
    fn rounding_to_bf16_is_to_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3F80);
        // 1 + 2⁻⁸ lies halfway between 1 and 1 + 2⁻⁷: ties go to the even one, 1.
        assert_eq!(to_bf16(1.0 + 2f32.powi(-8)), 0x3F80);
        assert_eq!(to_bf16(1.0 + 3.0 * 2f32.powi(-8)), 0x3F82);
        assert_eq!(to_bf16(-2.0), 0xC000);
        assert!(widen(to_bf16(f32::NAN)).is_nan());
        for x in values(10_000, 7) {
            let rounded = widen(to_bf16(x));
            assert!(
                (rounded - x).abs() <= x.abs() * 2f32.powi(-8),
                "{x} → {rounded}"
            );
        }
    }

    #[test]
    fn the_product_is_the_bf16_dot_product_of_each_row_and_column() {
        // Odd sizes: a partial group, a partial tile and an odd input count.
        let (rows, outputs, inputs) = (11, 53, 37);
        let weights = values(outputs * inputs, 1);
        let x = values(rows * inputs, 2);
        let matrix = Bf16Matrix::new(&weights, outputs, inputs);
        let product = matrix.product(&x, rows);
        let round = |v: f32| widen(to_bf16(v)) as f64;
        for r in 0..rows {
            for c in 0..outputs {
                let exact: f64 = (0..inputs)
                    .map(|i| round(x[r * inputs + i]) * round(weights[c * inputs + i]))
                    .sum();
                let ours = product[r * outputs + c] as f64;
                assert!(
                    (ours - exact).abs() < 1e-5,
                    "row {r} column {c}: {ours} vs {exact}"
                );
            }
        }
    }

    /// The product with `kernel` against the portable kernel's, value by value: to the bit, or
    /// within `tolerance` (relative to the larger of 1 and the value).
    fn assert_equals_the_portable_kernel(kernel: Kernel, tolerance: f32) {
        let (rows, outputs, inputs) = (70, 150, 385);
        let weights = values(outputs * inputs, 3);
        let x = values(rows * inputs, 4);
        let portable = Bf16Matrix::with_kernel(&weights, outputs, inputs, Kernel::Portable);
        let fast = Bf16Matrix::with_kernel(&weights, outputs, inputs, kernel);
        let (a, b) = (portable.product(&x, rows), fast.product(&x, rows));
        for (i, (a, b)) in a.iter().zip(&b).enumerate() {
            if tolerance == 0.0 {
                assert_eq!(a.to_bits(), b.to_bits(), "value {i}: {a} vs {b}");
            } else {
                assert!(
                    (a - b).abs() <= tolerance * a.abs().max(1.0),
                    "value {i}: {a} vs {b}"
                );
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx512_kernel_agrees_with_the_portable_one() {
        // `vdpbf16ps` adds each pair's products to the running sum one by one: another order
        // of the same exact products, so the sums differ only by rounding.
        match avx512::Avx512Bf16::detect() {
            Some(cpu) => assert_equals_the_portable_kernel(Kernel::Avx512(cpu), 1e-5),
            None => eprintln!("this CPU has no AVX-512 BF16: its kernel is not tested here"),
        }
    }

    #[cfg(target_os = "linux")]
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_amx_kernel_equals_the_portable_one_to_the_bit() {
        match amx::Amx::detect() {
            Some(cpu) => assert_equals_the_portable_kernel(Kernel::Amx(cpu), 0.0),
            None => eprintln!("this CPU or kernel offers no AMX: its kernel is not tested here"),
        }
    }
}
