//! The 1×1 convolution: an f32 register tile of pixels × 32 outputs (AVX-512, or portable code
//! with the same multiply-adds), in tasks of pixels or, for layers with few pixels, of groups
//! of outputs.

use super::{for_each_part, task_count, Kernel, Split, Then, MIN_TASK_PIXELS, TASKS_PER_THREAD};
use crate::fast_math::vectorized;
use crate::team::Team;

/// Output channels of one register tile: two AVX-512 vectors.
pub const GROUP: usize = 32;
/// Pixels of one register tile: 8 pixels × 2 vectors of sums take 16 of the 32 vector
/// registers, and each weight vector loaded serves 8 multiply-adds.
const TILE_PIXELS: usize = 8;
/// Pixels one task computes at most (rayon splits a layer's pixels into such tasks).
const TASK_PIXELS: usize = 64;

/// Tasks a layer's pixels go to: the fewest of at most `TASK_PIXELS` (196 pixels: four tasks
/// of 49, not three of 64 and one of 4 that would read every weight for 4 pixels). On a team,
/// more of them, so that each thread gets several (the 7×7 layers' 49 pixels were one task, and
/// one core sat idle through a third of the network's work), but not smaller than
/// `MIN_TASK_PIXELS`.
fn pixel_tasks(pixels: usize, split: Split) -> usize {
    let fewest = pixels.div_ceil(TASK_PIXELS);
    let wanted = match split {
        Split::Threads(team) => {
            fewest.max((pixels / MIN_TASK_PIXELS).clamp(1, TASKS_PER_THREAD * team.threads()))
        }
        Split::None => fewest,
    };
    task_count(pixels, wanted, split)
}

/// A 1×1 convolution, `[pixels, inputs] · [inputs, outputs] + bias`, in f32 on the channels-last
/// activations as they are: a register tile of 8 pixels × 32 outputs walks the inputs, one
/// fused multiply-add per pixel, input and output vector, then applies the bias and what follows
/// as it stores. Every output is the same chain of multiply-adds, whatever the tile: a pixel's
/// result does not depend on its neighbours, so not on the batch either.
pub struct Pointwise {
    /// `[groups, inputs]` of 32 outputs' weights for one input; the last group's padded with
    /// zeros past the last output.
    weights: Vec<[f32; GROUP]>,
    inputs: usize,
    /// `[groups]`, zero-padded like the weights.
    bias: Vec<[f32; GROUP]>,
    outputs: usize,
    kernel: Kernel,
}

impl Pointwise {
    /// `weights` is PyTorch's `[outputs, inputs, 1, 1]`, row-major.
    pub fn new(weights: &[f32], bias: &[f32]) -> Self {
        let outputs = bias.len();
        let inputs = weights.len() / outputs;
        let groups = outputs.div_ceil(GROUP);
        let mut packed = vec![[0f32; GROUP]; groups * inputs];
        let mut padded_bias = vec![[0f32; GROUP]; groups];
        for o in 0..outputs {
            let (group, lane) = (o / GROUP, o % GROUP);
            for i in 0..inputs {
                packed[group * inputs + i][lane] = weights[o * inputs + i];
            }
            padded_bias[group][lane] = bias[o];
        }
        Self {
            weights: packed,
            inputs,
            bias: padded_bias,
            outputs,
            kernel: Kernel::detect(),
        }
    }

    pub fn outputs(&self) -> usize {
        self.outputs
    }

    pub fn inputs(&self) -> usize {
        self.inputs
    }

    /// `x` (`[pixels, inputs]`) through the convolution into `out` (`[pixels, outputs]`,
    /// overwritten), pixels shared out among the threads.
    pub fn forward(&self, x: &[f32], out: &mut [f32], then: Then, split: Split) {
        let pixels = x.len() / self.inputs;
        assert_eq!(out.len(), pixels * self.outputs);
        let groups = self.bias.len();
        if let Split::Threads(team) = split {
            if pixels < MIN_TASK_PIXELS * TASKS_PER_THREAD * team.threads() && groups > 1 {
                return self.forward_by_groups(x, out, then, team);
            }
        }
        let tasks = pixel_tasks(pixels, split);
        for_each_part(out, self.outputs, tasks, split, |first, out| {
            let x = &x[first * self.inputs..][..out.len() / self.outputs * self.inputs];
            vectorized(
                #[inline(always)]
                || {
                    for group in 0..groups {
                        let columns = GROUP.min(self.outputs - group * GROUP);
                        let layout = (self.outputs, group * GROUP, columns);
                        self.group_pixels(group, x, out, layout, first, then);
                    }
                },
            );
        });
    }

    /// `forward` on the threads for a layer with too few pixels to give each thread several
    /// tasks of them (7×7: two of 25 and 24 pixels; one slow task leaves the other thread
    /// idle for a tenth of a millisecond): tasks of groups of outputs over all the pixels, each
    /// writing its groups' sums into a buffer of its own, then the sums laid out as rows, with
    /// what follows.
    fn forward_by_groups(&self, x: &[f32], out: &mut [f32], then: Then, team: &Team) {
        let (inputs, outputs) = (self.inputs, self.outputs);
        let pixels = x.len() / inputs;
        let groups = self.bias.len();
        let split = Split::Threads(team);
        let group_len = pixels * GROUP;
        let mut by_group = vec![0f32; groups * group_len];
        let tasks = task_count(groups, TASKS_PER_THREAD * team.threads(), split);
        for_each_part(
            &mut by_group,
            group_len,
            tasks,
            split,
            |first_group, sums| {
                vectorized(
                    #[inline(always)]
                    || {
                        for (group, sums) in (first_group..).zip(sums.chunks_exact_mut(group_len)) {
                            let layout = (GROUP, 0, GROUP);
                            self.group_pixels(group, x, sums, layout, 0, Then::Nothing);
                        }
                    },
                )
            },
        );
        let tasks = task_count(pixels, TASKS_PER_THREAD * team.threads(), split);
        for_each_part(out, outputs, tasks, split, |first, out| {
            for (pixel, values) in (first..).zip(out.chunks_exact_mut(outputs)) {
                for (group, values) in values.chunks_mut(GROUP).enumerate() {
                    let sums = &by_group[group * group_len + pixel * GROUP..];
                    values.copy_from_slice(&sums[..values.len()]);
                    then.apply(values, pixel * outputs + group * GROUP);
                }
            }
        });
    }

    /// One group of outputs of consecutive pixels from `first`: its weights stay in the L1
    /// cache while they serve all the pixels. `out` holds rows of `stride` values, the group's
    /// `columns` outputs from `first_column` of each.
    #[inline(always)]
    fn group_pixels(
        &self,
        group: usize,
        x: &[f32],
        out: &mut [f32],
        (stride, first_column, columns): (usize, usize, usize),
        first: usize,
        then: Then,
    ) {
        let inputs = self.inputs;
        let weights = &self.weights[group * inputs..][..inputs];
        let bias = &self.bias[group];
        let pixels = x.len() / inputs;
        let mut done = 0;
        while done < pixels {
            let tile = |rows: usize| Tile {
                x: &x[done * inputs..][..rows * inputs],
                weights,
                bias,
                outputs: stride,
                first_pixel: first + done,
                first_column,
                columns,
            };
            let out = &mut out[done * stride..];
            // The pixels left in tiles of equal size (25: 7, 6, 6, 6): a tile of one or two
            // pixels loads each weight vector for one or two multiply-adds.
            let left = pixels - done;
            done += match left.div_ceil(left.div_ceil(TILE_PIXELS)) {
                TILE_PIXELS.. => self.tile::<TILE_PIXELS>(tile(TILE_PIXELS), out, then),
                7 => self.tile::<7>(tile(7), out, then),
                6 => self.tile::<6>(tile(6), out, then),
                5 => self.tile::<5>(tile(5), out, then),
                4 => self.tile::<4>(tile(4), out, then),
                3 => self.tile::<3>(tile(3), out, then),
                2 => self.tile::<2>(tile(2), out, then),
                _ => self.tile::<1>(tile(1), out, then),
            };
        }
    }

    /// One tile of `R` pixels; returns `R`.
    #[inline(always)]
    fn tile<const R: usize>(&self, tile: Tile<'_>, out: &mut [f32], then: Then) -> usize {
        match self.kernel {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512(cpu) => cpu.tile::<R>(tile, out, then),
            Kernel::Portable => portable_tile::<R>(tile, out, then),
        }
        R
    }
}

/// One tile's operands: `R` pixels' inputs (consecutive rows of `inputs` values), one group's
/// weights (`[inputs]` of 32 outputs) and biases, and where its outputs lie: `columns` (≤ 32)
/// outputs from `first_column` of pixels `first_pixel..first_pixel + R`, rows of `outputs`
/// values.
pub struct Tile<'a> {
    pub x: &'a [f32],
    pub weights: &'a [[f32; GROUP]],
    pub bias: &'a [f32; GROUP],
    pub outputs: usize,
    pub first_pixel: usize,
    pub first_column: usize,
    pub columns: usize,
}

/// The AVX-512 tile's arithmetic in portable code (the same fused multiply-adds in the same
/// order), for CPUs without AVX-512.
#[inline(always)]
fn portable_tile<const R: usize>(tile: Tile<'_>, out: &mut [f32], then: Then) {
    let mut sums = [*tile.bias; R];
    for (k, weights) in tile.weights.iter().enumerate() {
        for (sums, row) in sums.iter_mut().zip(tile.x.chunks_exact(tile.weights.len())) {
            let value = row[k];
            for (sum, weight) in sums.iter_mut().zip(weights) {
                *sum = value.mul_add(*weight, *sum);
            }
        }
    }
    let columns = tile.first_column..tile.first_column + tile.columns;
    for (r, sums) in sums.iter_mut().enumerate() {
        let sums = &mut sums[..columns.len()];
        then.apply(sums, (tile.first_pixel + r) * tile.outputs + columns.start);
        out[r * tile.outputs..][columns.clone()].copy_from_slice(sums);
    }
}

#[cfg(test)]
mod tests {
    use super::super::on_a_team_of_two;
    use super::*;

    /// Pointwise against the definition: outputs not a multiple of the group, pixels not a
    /// multiple of the tile, a residual added; on the threads (with few pixels, tasks of
    /// groups of outputs; with more on two threads, eight tasks of 50 or 51 pixels) and on one
    /// alike.
    #[test]
    fn pointwise_matches_the_definition() {
        let (inputs, outputs) = (24, 40);
        for pixels in [75, 401] {
            let x: Vec<f32> = (0..pixels * inputs)
                .map(|i| ((i * 37) % 11) as f32 * 0.1 - 0.5)
                .collect();
            let weights: Vec<f32> = (0..outputs * inputs)
                .map(|i| ((i * 13) % 7) as f32 * 0.2 - 0.6)
                .collect();
            let bias: Vec<f32> = (0..outputs).map(|o| o as f32 * 0.01).collect();
            let residual: Vec<f32> = (0..pixels * outputs).map(|i| (i % 5) as f32).collect();
            let conv = Pointwise::new(&weights, &bias);
            let mut out = vec![f32::NAN; pixels * outputs];
            on_a_team_of_two(|split| conv.forward(&x, &mut out, Then::Add(&residual), split));
            let mut alone = vec![f32::NAN; pixels * outputs];
            conv.forward(&x, &mut alone, Then::Add(&residual), Split::None);
            assert_eq!(out, alone);
            for p in 0..pixels {
                for o in 0..outputs {
                    let dot: f32 = (0..inputs)
                        .map(|i| x[p * inputs + i] * weights[o * inputs + i])
                        .sum();
                    let expected = dot + bias[o] + residual[p * outputs + o];
                    let got = out[p * outputs + o];
                    assert!((got - expected).abs() < 1e-4, "{got} vs {expected}");
                }
            }
        }
    }
}
