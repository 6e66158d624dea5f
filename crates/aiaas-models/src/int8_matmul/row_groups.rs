//! Matrices kept in groups of 16 rows (`GroupedMatrix`, for every `GroupedFormat`): block b of
//! 16 rows side by side, laid out so that one 512-bit register holds a run of four weights of
//! every row (lane r: row r), as compact as in the file. The AVX-512 kernels then meet a token's
//! four activations, broadcast, with all 16 rows in one `vpdpbusd`; the AVX2 ones with eight
//! rows (half a register) in one `vpmaddubsw`.
//!
//! This module holds the matrix, the layouts of 32-weight blocks (Q4_0, Q4_1, Q5_0, Q8_0:
//! `NibbleGroup`, `ByteGroup`, unsigned form: the format's offset added) and their portable
//! kernel; `avx512::row_groups` and `avx2::row_groups` their SIMD kernels, where a block's
//! eight `vpdpbusd` (or `vpmaddubsw`, widened) leave each row's exact integer sum in its lane, then one conversion, one scale product and one fused
//! multiply-add per block, token and 16 rows (`blocks::dot_row`'s arithmetic). K-quants keep
//! their own layout (`k_quants::SuperGroup`).
//!
//! Results come out 16 rows at a time per token, which are then copied token after token.

use half::f16;
use rayon::prelude::*;

use super::blocks::{dot_row, Block32, PortableBlock, Q8Activations, BLOCK};
#[cfg(target_arch = "x86_64")]
use super::simd::{Simd, TokenBlocks};
use super::{quantize_tokens, ActivationBlock, Product, FEW_TOKENS, TASKS_FOR_FEW_TOKENS};
use crate::fast_math::vectorized;
use crate::{ModelError, Result};

/// Rows a group holds: the lanes of a 512-bit register of 32-bit sums.
pub(super) const GROUP_ROWS: usize = 16;

/// A block format whose matrices are kept in groups of 16 rows.
pub trait GroupedFormat: Sized + Send + Sync + 'static {
    /// Weights a block.
    const WEIGHTS: usize;
    /// Bytes a block takes in the file.
    const BYTES: usize;
    /// Block b of 16 rows.
    type Group: Copy + Send + Sync;
    /// The portable kernel's activations, one a block.
    type Activations: ActivationBlock;
    /// Block `block` of group `group`'s rows, read from a tensor's `bytes` of `per_row` blocks
    /// a row (rows past `rows`: zero weights, scales and minimums).
    fn pack(bytes: &[u8], rows: usize, per_row: usize, group: usize, block: usize) -> Self::Group;
    /// Row `row` of a group's blocks times each token's activation blocks (`blocks.len()` each),
    /// into `out[token · 16 + row]`: the format's arithmetic, which the SIMD kernels compute to
    /// the bit.
    fn portable_row(
        blocks: &[Self::Group],
        row: usize,
        activations: &[Self::Activations],
        out: &mut [f32],
    );
    /// Row `row` of a group's blocks as f32, as ggml's `dequantize_row` computes it.
    fn dequantize_row(blocks: &[Self::Group], row: usize, out: &mut [f32]);
    /// A product's activations as the SIMD kernels read them.
    #[cfg(target_arch = "x86_64")]
    type SimdActivations: Send + Sync;
    /// `x` (tokens of `cols` values) quantized for `cpu`'s kernel.
    #[cfg(target_arch = "x86_64")]
    fn simd_activations(cpu: Simd, x: &[f32], cols: usize) -> Self::SimdActivations;
    /// Groups of `per_row` blocks times every token into `out` (group after group, token after
    /// token, 16 rows each) with `cpu`'s kernel.
    #[cfg(target_arch = "x86_64")]
    fn simd_groups(
        cpu: Simd,
        groups: &[Self::Group],
        per_row: usize,
        activations: &Self::SimdActivations,
        out: &mut [f32],
    );
}

/// Where run `quad` of four values sits among `registers` registers of nibbles, two runs a
/// byte (runs `registers` apart share the bytes): its register and the shift of its four bits.
pub(super) fn nibble_slot(quad: usize, registers: usize) -> (usize, usize) {
    (quad % registers, 4 * (quad / registers))
}

/// Block b of 16 rows in a format's layout.
pub trait RowGroup: Copy + Send + Sync {
    /// Each row's 32 values in the unsigned form, its scale and its minimum.
    fn pack(
        values: &[[u8; BLOCK]; GROUP_ROWS],
        scales: &[f32; GROUP_ROWS],
        mins: &[f32; GROUP_ROWS],
    ) -> Self;
    /// Row `row`'s values (unsigned form), scale and minimum.
    fn row(&self, row: usize) -> ([u8; BLOCK], f32, f32);
}

/// Four-bit formats, with Q5_0's fifth bits (`FIFTH_WORDS` = 8) or Q4_1's minimums (`MINS` =
/// 16) where the format has them.
#[derive(Clone, Copy)]
pub struct NibbleGroup<const FIFTH_WORDS: usize, const MINS: usize> {
    /// Byte 4r + i of register k: row r's value 4k + i in the low nibble, 16 + 4k + i in the
    /// high one (their low four bits).
    pub(super) nibbles: [[u8; 64]; 4],
    /// Bit 4r + i of word k: the fifth bit of row r's value 4k + i.
    pub(super) fifth_bits: [u64; FIFTH_WORDS],
    pub(super) scales: [f16; GROUP_ROWS],
    pub(super) mins: [f16; MINS],
}

impl<const FIFTH_WORDS: usize, const MINS: usize> RowGroup for NibbleGroup<FIFTH_WORDS, MINS> {
    fn pack(
        values: &[[u8; BLOCK]; GROUP_ROWS],
        scales: &[f32; GROUP_ROWS],
        mins: &[f32; GROUP_ROWS],
    ) -> Self {
        let mut group = Self {
            nibbles: [[0; 64]; 4],
            fifth_bits: [0; FIFTH_WORDS],
            scales: scales.map(f16::from_f32),
            mins: std::array::from_fn(|r| f16::from_f32(mins[r])),
        };
        for (r, values) in values.iter().enumerate() {
            for (j, value) in values.iter().enumerate() {
                let (quad, byte) = (j / 4, 4 * r + j % 4);
                let (register, shift) = nibble_slot(quad, 4);
                group.nibbles[register][byte] |= (value & 0x0F) << shift;
                if FIFTH_WORDS > 0 {
                    group.fifth_bits[quad] |= u64::from(value >> 4) << byte;
                }
            }
        }
        group
    }

    fn row(&self, row: usize) -> ([u8; BLOCK], f32, f32) {
        let values = std::array::from_fn(|j| {
            let (quad, byte) = (j / 4, 4 * row + j % 4);
            let (register, shift) = nibble_slot(quad, 4);
            let nibble = (self.nibbles[register][byte] >> shift) & 0x0F;
            let fifth = if FIFTH_WORDS > 0 {
                ((self.fifth_bits[quad] >> byte) & 1) as u8
            } else {
                0
            };
            nibble | (fifth << 4)
        });
        let min = if MINS > 0 {
            self.mins[row].to_f32()
        } else {
            0.0
        };
        (values, self.scales[row].to_f32(), min)
    }
}

/// Q8_0: whole bytes.
#[derive(Clone, Copy)]
pub struct ByteGroup {
    /// Byte 4r + i of register k: row r's value 4k + i.
    pub(super) values: [[u8; 64]; 8],
    pub(super) scales: [f16; GROUP_ROWS],
}

impl RowGroup for ByteGroup {
    fn pack(
        values: &[[u8; BLOCK]; GROUP_ROWS],
        scales: &[f32; GROUP_ROWS],
        _: &[f32; GROUP_ROWS],
    ) -> Self {
        let mut group = Self {
            values: [[0; 64]; 8],
            scales: scales.map(f16::from_f32),
        };
        for (r, values) in values.iter().enumerate() {
            for (j, value) in values.iter().enumerate() {
                group.values[j / 4][4 * r + j % 4] = *value;
            }
        }
        group
    }

    fn row(&self, row: usize) -> ([u8; BLOCK], f32, f32) {
        let values = std::array::from_fn(|j| self.values[j / 4][4 * row + j % 4]);
        (values, self.scales[row].to_f32(), 0.0)
    }
}

/// A `rows` × `cols` matrix in groups of 16 rows (the last one padded with zero blocks).
pub struct GroupedMatrix<F: GroupedFormat> {
    rows: usize,
    cols: usize,
    /// Group g's block b at `g · blocks a row + b`.
    groups: Vec<F::Group>,
}

/// Blocks of groups one task packs when a matrix is read.
const BLOCKS_PER_PACKING_TASK: usize = 1024;

impl<F: GroupedFormat> GroupedMatrix<F> {
    /// Reads the raw bytes of a GGUF tensor of `rows` rows of `cols` weights.
    pub fn from_bytes(bytes: &[u8], rows: usize, cols: usize) -> Result<Self> {
        let size = F::WEIGHTS;
        if !cols.is_multiple_of(size) || bytes.len() != rows * cols / size * F::BYTES {
            return Err(ModelError::Format(format!(
                "a {rows}×{cols} tensor of {}-byte blocks of {size} cannot hold {} bytes",
                F::BYTES,
                bytes.len()
            )));
        }
        let per_row = cols / size;
        let groups = rows.div_ceil(GROUP_ROWS);
        let groups = (0..groups * per_row)
            .into_par_iter()
            .with_min_len(BLOCKS_PER_PACKING_TASK)
            .map(|index| F::pack(bytes, rows, per_row, index / per_row, index % per_row))
            .collect();
        Ok(Self { rows, cols, groups })
    }

    /// The products of every group's rows with every token, group after group, each group's
    /// token after token (16 values each), computed by `kernel`.
    fn by_group(&self, x: &[f32], tokens: usize, kernel: Kernel) -> Vec<f32> {
        let per_row = self.cols / F::WEIGHTS;
        let groups = self.rows.div_ceil(GROUP_ROWS);
        // With more tokens a group's weights stay in the cache while tiles of tokens pass
        // over them; with few, each group is quick work and tasks take several.
        let groups_per_task = if tokens >= FEW_TOKENS {
            1
        } else {
            groups.div_ceil(TASKS_FOR_FEW_TOKENS)
        };
        let per_group = GROUP_ROWS * tokens;
        let mut by_group = vec![0f32; groups * per_group];
        let tasks = by_group
            .par_chunks_mut(groups_per_task * per_group)
            .enumerate();
        let weights_of = |task: usize, out: &[f32]| {
            let first = task * groups_per_task * per_row;
            &self.groups[first..first + out.len() / per_group * per_row]
        };
        match kernel {
            #[cfg(target_arch = "x86_64")]
            Kernel::Simd(cpu) => {
                let activations = F::simd_activations(cpu, x, self.cols);
                tasks.for_each(|(task, out)| {
                    F::simd_groups(cpu, weights_of(task, out), per_row, &activations, out)
                });
            }
            Kernel::Portable => {
                let activations = quantize_tokens::<F::Activations>(x, self.cols);
                tasks.for_each(|(task, out)| {
                    let weights = weights_of(task, out);
                    vectorized(
                        #[inline(always)]
                        || portable_groups::<F>(weights, per_row, &activations, out),
                    )
                });
            }
        }
        by_group
    }

    /// `by_group`'s values token after token, each token's rows in order.
    fn token_major(&self, by_group: Vec<f32>, tokens: usize) -> Vec<f32> {
        if tokens == 1 {
            let mut values = by_group;
            values.truncate(self.rows);
            return values;
        }
        let mut out = vec![0f32; tokens * self.rows];
        out.par_chunks_mut(self.rows)
            .enumerate()
            .for_each(|(token, out)| {
                for (group, out) in out.chunks_mut(GROUP_ROWS).enumerate() {
                    let start = (group * tokens + token) * GROUP_ROWS;
                    out.copy_from_slice(&by_group[start..start + out.len()]);
                }
            });
        out
    }
}

impl<B: Block32> GroupedFormat for B {
    const WEIGHTS: usize = BLOCK;
    const BYTES: usize = B::BYTES;
    type Group = B::Group;
    type Activations = Q8Activations;

    fn pack(bytes: &[u8], rows: usize, per_row: usize, group: usize, block: usize) -> B::Group {
        pack_group::<B>(bytes, rows, per_row, group, block)
    }

    #[inline(always)]
    fn portable_row(
        blocks: &[B::Group],
        row: usize,
        activations: &[Q8Activations],
        out: &mut [f32],
    ) {
        let weights: Vec<PortableBlock> = blocks.iter().map(|g| unpacked::<B>(g, row)).collect();
        for (token, activations) in activations.chunks_exact(blocks.len()).enumerate() {
            out[token * GROUP_ROWS + row] = dot_row(&weights, activations, B::HAS_MIN);
        }
    }

    fn dequantize_row(blocks: &[B::Group], row: usize, out: &mut [f32]) {
        for (block, out) in blocks.iter().zip(out.chunks_exact_mut(BLOCK)) {
            unpacked::<B>(block, row).dequantize(B::HAS_MIN, out);
        }
    }

    #[cfg(target_arch = "x86_64")]
    type SimdActivations = TokenBlocks;

    #[cfg(target_arch = "x86_64")]
    fn simd_activations(cpu: Simd, x: &[f32], cols: usize) -> TokenBlocks {
        TokenBlocks::quantize::<B>(cpu, x, cols)
    }

    #[cfg(target_arch = "x86_64")]
    fn simd_groups(
        cpu: Simd,
        groups: &[B::Group],
        per_row: usize,
        activations: &TokenBlocks,
        out: &mut [f32],
    ) {
        cpu.group_rows::<B>(groups, per_row, activations, out);
    }
}

/// Block `block` of group `group`'s rows, read from the tensor's `bytes` (rows past `rows`:
/// zero weights, scales and minimums).
fn pack_group<B: Block32>(
    bytes: &[u8],
    rows: usize,
    per_row: usize,
    group: usize,
    block: usize,
) -> B::Group {
    let mut values = [[B::UNSIGNED_OFFSET; BLOCK]; GROUP_ROWS];
    let mut scales = [0f32; GROUP_ROWS];
    let mut mins = [0f32; GROUP_ROWS];
    for (r, ((values, scale), min)) in values
        .iter_mut()
        .zip(&mut scales)
        .zip(&mut mins)
        .enumerate()
    {
        let row = group * GROUP_ROWS + r;
        if row >= rows {
            break;
        }
        let b = B::read(&bytes[(row * per_row + block) * B::BYTES..][..B::BYTES]);
        for (value, q) in values.iter_mut().zip(b.values()) {
            *value = q.wrapping_add(B::UNSIGNED_OFFSET as i8) as u8;
        }
        (*scale, *min) = (b.scale(), b.min());
    }
    B::Group::pack(&values, &scales, &mins)
}

/// Row `row` of a group's block as the portable kernel reads it.
fn unpacked<B: Block32>(group: &B::Group, row: usize) -> PortableBlock {
    let (values, scale, min) = group.row(row);
    PortableBlock {
        values: values.map(|v| v.wrapping_sub(B::UNSIGNED_OFFSET) as i8),
        scale,
        min,
    }
}

/// Which kernel computes a product.
#[derive(Clone, Copy)]
enum Kernel {
    #[cfg(target_arch = "x86_64")]
    Simd(Simd),
    Portable,
}

impl Kernel {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if let Some(cpu) = Simd::detect() {
            return Self::Simd(cpu);
        }
        Self::Portable
    }
}

/// `by_group` for groups of weights (`per_row` blocks each) with the portable kernel.
#[inline(always)]
fn portable_groups<F: GroupedFormat>(
    groups: &[F::Group],
    per_row: usize,
    activations: &[F::Activations],
    out: &mut [f32],
) {
    let tokens = activations.len() / per_row;
    for (group, out) in groups
        .chunks_exact(per_row)
        .zip(out.chunks_exact_mut(GROUP_ROWS * tokens))
    {
        for row in 0..GROUP_ROWS {
            F::portable_row(group, row, activations, out);
        }
    }
}

impl<F: GroupedFormat> Product for GroupedMatrix<F> {
    fn matmul(&self, x: &[f32], tokens: usize) -> Vec<f32> {
        debug_assert_eq!(x.len(), tokens * self.cols);
        let by_group = self.by_group(x, tokens, Kernel::detect());
        self.token_major(by_group, tokens)
    }

    fn gather(&self, rows: &[u32]) -> Vec<f32> {
        let per_row = self.cols / F::WEIGHTS;
        let mut out = vec![0f32; rows.len() * self.cols];
        for (row, out) in rows.iter().zip(out.chunks_exact_mut(self.cols)) {
            // Padded rows of the last group are not the matrix's.
            assert!(
                (*row as usize) < self.rows,
                "row {row} of {} rows",
                self.rows
            );
            let (group, row) = (*row as usize / GROUP_ROWS, *row as usize % GROUP_ROWS);
            F::dequantize_row(&self.groups[group * per_row..][..per_row], row, out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::GgmlDType;

    use super::super::k_quants::SUPER;
    use super::super::tests::{kernel_test_tokens, quantized_bytes};
    use super::super::{Q4K, Q4_0, Q4_1, Q5_0, Q6K, Q8_0};
    use super::*;

    /// Each SIMD kernel and quantizer this CPU has against the portable ones, to the bit: 17
    /// groups and a padded one (so that a product of one token gives tasks of two groups),
    /// several tokens (a tile of each size), one of zeros and one of values halfway between
    /// integers once scaled; and each token alone (a decode step).
    #[cfg(target_arch = "x86_64")]
    fn simd_matches_portable<F: GroupedFormat>(dtype: GgmlDType, cols: usize) {
        let kernels = Simd::every();
        if kernels.is_empty() {
            println!("SKIPPED: this CPU has neither AVX2 nor AVX-512 VNNI: no kernel to compare");
            return;
        }
        // 31 tokens: a tile of each size (AVX-512: 16, 8, 4, 2, 1; AVX2: 4, 2, 1; K-quants: 4
        // and 1).
        let (rows, tokens) = (17 * GROUP_ROWS + 5, 31);
        let (bytes, _) = quantized_bytes(dtype, rows, cols);
        let m = GroupedMatrix::<F>::from_bytes(&bytes, rows, cols).unwrap();
        let x = kernel_test_tokens(tokens, cols);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        let portable = m.by_group(&x, tokens, Kernel::Portable);
        for cpu in kernels {
            let name = cpu.name();
            let simd = m.by_group(&x, tokens, Kernel::Simd(cpu));
            assert_eq!(bits(&simd), bits(&portable), "{name}, {dtype:?}");
            let portable = m.token_major(portable.clone(), tokens);
            for (token, x) in x.chunks_exact(cols).enumerate() {
                let single = m.token_major(m.by_group(x, 1, Kernel::Simd(cpu)), 1);
                let expected = &portable[token * rows..][..rows];
                assert_eq!(
                    bits(&single),
                    bits(expected),
                    "{name}, {dtype:?}, token {token}"
                );
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_simd_kernels_equal_the_portable_ones_to_the_bit() {
        simd_matches_portable::<Q4_0>(GgmlDType::Q4_0, 19 * BLOCK);
        simd_matches_portable::<Q4_1>(GgmlDType::Q4_1, 19 * BLOCK);
        simd_matches_portable::<Q5_0>(GgmlDType::Q5_0, 19 * BLOCK);
        simd_matches_portable::<Q8_0>(GgmlDType::Q8_0, 19 * BLOCK);
        simd_matches_portable::<Q4K>(GgmlDType::Q4K, 3 * SUPER);
        simd_matches_portable::<Q6K>(GgmlDType::Q6K, 3 * SUPER);
    }

    /// Every row of a group reads back as packed, whatever its values.
    #[test]
    fn groups_read_back_as_packed() {
        fn round_trip<G: RowGroup>(bits: u32) {
            let values: [[u8; BLOCK]; GROUP_ROWS] = std::array::from_fn(|r| {
                std::array::from_fn(|j| ((r * 37 + j * 11) as u32 % (1 << bits)) as u8)
            });
            let scales = std::array::from_fn(|r| r as f32 * 0.5);
            let mins = std::array::from_fn(|r| -(r as f32));
            let group = G::pack(&values, &scales, &mins);
            for r in 0..GROUP_ROWS {
                let (v, scale, _) = group.row(r);
                assert_eq!((v, scale), (values[r], scales[r]));
            }
        }
        round_trip::<NibbleGroup<0, 0>>(4);
        round_trip::<NibbleGroup<0, GROUP_ROWS>>(4);
        round_trip::<NibbleGroup<8, 0>>(5);
        round_trip::<ByteGroup>(8);
    }
}
