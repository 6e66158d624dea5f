//! The convolutions of mobile networks on channels-last (NHWC) activations, batch norm already
//! folded into their weights and biases: pointwise (1×1) convolutions as f32 matrix products of
//! the pixels by the weights (an AVX-512 register tile, or portable code), the stem's full 3×3
//! convolution as the same product on unrolled patches, and depthwise convolutions over runs of
//! a row's pixels (an AVX-512 kernel, or portable code for the channels it leaves), one module
//! each. This one holds what they share: how a layer's work goes to the threads (tasks of
//! pixels, or strips of rows where a row-wise step and the 1×1 convolution after it run
//! together), what follows a convolution, and TensorFlow's padding. Each pixel is computed the
//! same way whatever the image's neighbours in a batch.

#[cfg(target_arch = "x86_64")]
mod avx512;
mod depthwise;
mod pointwise;
mod stem;

pub use depthwise::{Depthwise, DepthwiseRun};
use pointwise::GROUP;
pub use pointwise::{Pointwise, Tile};
pub use stem::Stem;

use crate::team::{part_start, Team};

/// Whether a layer shares its pixels out among a team of threads (an image alone) or runs on
/// the calling thread (when a batch's images keep the threads busy already, each on one image,
/// its activations in that core's cache, without a task switch every few pixels).
#[derive(Clone, Copy)]
pub enum Split<'a> {
    Threads(&'a Team),
    None,
}

/// Tasks for a step of `units` (pixels, rows, groups of outputs) when `wanted`: at least one, at
/// most one a unit; on a team, a multiple of its threads where there are enough, so that each
/// thread's share of the step is the same size (7 strips on 2 threads left one of them idle for
/// a seventh of the step).
fn task_count(units: usize, wanted: usize, split: Split) -> usize {
    let wanted = wanted.clamp(1, units.max(1));
    match split {
        Split::Threads(team) if wanted >= team.threads() => wanted - wanted % team.threads(),
        _ => wanted,
    }
}

/// `values`, of whole units of `unit` values, in the `tasks` parts of `part_start`.
fn parts(values: &mut [f32], unit: usize, tasks: usize) -> impl Iterator<Item = &mut [f32]> {
    let units = values.len() / unit;
    let mut rest = values;
    (0..tasks).map(move |task| {
        let len = part_start(task + 1, units, tasks) - part_start(task, units, tasks);
        let (part, tail) = std::mem::take(&mut rest).split_at_mut(len * unit);
        rest = tail;
        part
    })
}

/// `f(first unit, part)` for the `tasks` parts of `out` (whole units of `unit` values; see
/// `part_start`), on the team or on this thread.
fn for_each_part(
    out: &mut [f32],
    unit: usize,
    tasks: usize,
    split: Split,
    f: impl Fn(usize, &mut [f32]) + Sync + Send,
) {
    let units = out.len() / unit;
    let part = |task, out: &mut [f32]| f(part_start(task, units, tasks), out);
    let parts = parts(out, unit, tasks);
    match split {
        Split::Threads(team) => team.share(parts, part),
        Split::None => parts.enumerate().for_each(|(task, out)| part(task, out)),
    }
}

/// Pixels a strip of rows holds, about, when a row-wise step and the 1×1 convolution after it
/// run strip by strip (see `for_each_strip`).
const STRIP_PIXELS: usize = 112;
/// Output rows an image needs for its steps to run strip by strip: fewer (7×7), and the strips
/// would be too few to share out among the threads (and too short to serve each weight loaded).
/// On one thread 28: the 14×14 layers measured no faster in strips there (their tensors stay
/// in that core's cache either way).
fn strip_min_rows(split: Split) -> usize {
    match split {
        Split::Threads(_) => 14,
        Split::None => 28,
    }
}

/// Strips of an image of `rows` rows: of about `STRIP_PIXELS` pixels; on a team, more where
/// that gives each thread several, but of at least `MIN_TASK_PIXELS` pixels (14×14: six
/// strips of two or three rows).
fn strip_count(rows: usize, split: Split) -> usize {
    let most_rows = STRIP_PIXELS.div_ceil(rows);
    let strip_rows = match split {
        Split::Threads(team) => {
            let shared = rows / (TASKS_PER_THREAD * team.threads());
            most_rows.min(shared.max(MIN_TASK_PIXELS.div_ceil(rows)))
        }
        Split::None => most_rows,
    };
    task_count(rows, rows.div_ceil(strip_rows), split)
}

/// `f(first row, the strip's rows of mid, its rows of out)` for the strips (see `strip_count`)
/// of the image rows of an intermediate tensor (`mid`, `mid_row` values a row) and of the
/// output made from it (`out_row` values a row): the intermediate rows are made and used while
/// they are in the cache, and the two steps take one pass over the threads instead of two.
fn for_each_strip(
    (mid, mid_row): (&mut [f32], usize),
    (out, out_row): (&mut [f32], usize),
    split: Split,
    f: impl Fn(usize, &mut [f32], &mut [f32]) + Sync + Send,
) {
    let rows = mid.len() / mid_row;
    let strips = strip_count(rows, split);
    let strip = |strip, (mid, out)| f(part_start(strip, rows, strips), mid, out);
    let parts = parts(mid, mid_row, strips).zip(parts(out, out_row, strips));
    match split {
        Split::Threads(team) => team.share(parts, strip),
        Split::None => parts.enumerate().for_each(|(i, s)| strip(i, s)),
    }
}

/// The first `len` values of `buffer`, grown (never shrunk) to hold them; their values are
/// stale, for outputs that overwrite them all.
pub fn sized(buffer: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
    &mut buffer[..len]
}

/// What follows a convolution's bias.
#[derive(Clone, Copy)]
pub enum Then<'a> {
    /// ReLU6: min(max(x, 0), 6).
    Relu6,
    /// Nothing (the linear bottleneck of a block).
    Nothing,
    /// The block's input added back (a residual connection).
    Add(&'a [f32]),
}

impl<'a> Then<'a> {
    /// What follows for the outputs from the `first`th on (a residual from its `first`th
    /// value).
    fn skipping(self, first: usize) -> Then<'a> {
        match self {
            Self::Add(residual) => Self::Add(&residual[first..]),
            other => other,
        }
    }

    /// Applies what follows to sums that already hold the bias; `offset` is the index of the
    /// first of them in the layer's output.
    #[inline(always)]
    fn apply(self, values: &mut [f32], offset: usize) {
        match self {
            Self::Relu6 => {
                for v in values.iter_mut() {
                    *v = v.clamp(0.0, 6.0);
                }
            }
            Self::Nothing => {}
            Self::Add(residual) => {
                for (v, r) in values.iter_mut().zip(&residual[offset..]) {
                    *v += r;
                }
            }
        }
    }
}

/// Pixels one task computes at least, where a layer has that many: a task runs each group of
/// weights over all its pixels, so the group is read from the L2 cache once for three tiles
/// (tasks of one tile read every weight of a 7×7 layer's from L2 for each 8 pixels).
const MIN_TASK_PIXELS: usize = 24;

/// Tasks each thread gets when a layer is shared out among the threads: several, so that one
/// slow task does not leave the other threads idle for long at the end.
const TASKS_PER_THREAD: usize = 4;

/// Which code computes the tiles.
#[derive(Clone, Copy)]
enum Kernel {
    #[cfg(target_arch = "x86_64")]
    Avx512(avx512::Avx512),
    Portable,
}

impl Kernel {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if let Some(cpu) = avx512::Avx512::detect() {
            return Self::Avx512(cpu);
        }
        Self::Portable
    }
}

/// "Same" padding as TensorFlow computes it (the checkpoints were trained in TensorFlow): the
/// output is ⌈input / stride⌉ and the padding is shared out with the extra pixel at the end.
/// Returns the output size and the padding before the first input pixel.
pub fn same_padding(input: usize, kernel: usize, stride: usize) -> (usize, usize) {
    let output = input.div_ceil(stride);
    let total = ((output - 1) * stride + kernel).saturating_sub(input);
    (output, total / 2)
}

/// The input pixel a kernel tap reads, or `None` in the padding.
#[inline(always)]
fn source(output: usize, tap: usize, stride: usize, pad: usize, size: usize) -> Option<usize> {
    (output * stride + tap)
        .checked_sub(pad)
        .filter(|&i| i < size)
}

/// `pass` with a layer split on a team of two threads (whatever the machine's cores), as the
/// tests of each convolution run it.
#[cfg(test)]
fn on_a_team_of_two<R: Send>(pass: impl FnOnce(Split) -> R + Send) -> R {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    pool.install(|| Team::gather(|team| pass(Split::Threads(team))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_padding_is_tensorflows() {
        assert_eq!(same_padding(224, 3, 2), (112, 0));
        assert_eq!(same_padding(112, 3, 1), (112, 1));
        assert_eq!(same_padding(56, 5, 2), (28, 1));
        assert_eq!(same_padding(14, 5, 1), (14, 2));
    }
}
