//! The convolutions of mobile networks on channels-last (NHWC) activations, batch norm already
//! folded into their weights and biases: pointwise (1×1) convolutions as f32 matrix products of
//! the pixels by the weights (an AVX-512 register tile, or portable code), the stem's full 3×3
//! convolution as the same product on unrolled patches, and depthwise convolutions over runs of
//! a row's pixels (an AVX-512 kernel, or portable code for the channels it leaves). Each pixel
//! is computed the same way whatever the image's neighbours in a batch.

#[cfg(target_arch = "x86_64")]
mod avx512;

use rayon::prelude::*;

use crate::dense::each_row;
use crate::fast_math::vectorized;

/// Whether a layer shares its pixels out among the threads (an image alone) or runs on the
/// calling thread (when a batch's images keep the threads busy already, each on one image, its
/// activations in that core's cache, without a task switch every few pixels).
#[derive(Clone, Copy)]
pub enum Split {
    Threads,
    None,
}

/// `f(chunk index, chunk)` for the consecutive chunks of `chunk` values of `out`, on the
/// threads or on this one.
fn for_each_chunk(
    out: &mut [f32],
    chunk: usize,
    split: Split,
    f: impl Fn(usize, &mut [f32]) + Sync + Send,
) {
    match split {
        Split::Threads => out
            .par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, c)| f(i, c)),
        Split::None => out.chunks_mut(chunk).enumerate().for_each(|(i, c)| f(i, c)),
    }
}

/// Pixels a strip of rows holds, about, when a row-wise step and the 1×1 convolution after it
/// run strip by strip (see `for_each_strip`).
const STRIP_PIXELS: usize = 112;
/// Output rows an image needs for its steps to run strip by strip: fewer (7×7), and the strips
/// would be too few to share out among the threads (and too short to serve each weight loaded).
/// On one thread 28: the 14×14 layers measured no faster in strips there (their tensors stay
/// in that core's cache either way).
fn strips_from_rows(split: Split) -> usize {
    match split {
        Split::Threads => 14,
        Split::None => 28,
    }
}

/// Rows of a strip of an image of `rows` rows: about `STRIP_PIXELS` pixels; on the threads,
/// fewer where that leaves each thread several strips, but at least `MIN_TASK_PIXELS` pixels
/// (14×14: strips of two rows, seven of them).
fn strip_rows(rows: usize, split: Split) -> usize {
    let most = STRIP_PIXELS.div_ceil(rows);
    match split {
        Split::Threads => {
            let shared = rows / (TASKS_PER_THREAD * rayon::current_num_threads());
            most.min(shared.max(MIN_TASK_PIXELS.div_ceil(rows)))
        }
        Split::None => most,
    }
}

/// `f(first row, the strip's rows of mid, its rows of out)` for the strips of `rows` image
/// rows of an intermediate tensor (`mid`, `mid_row` values a row) and of the output made from
/// it (`out_row` values a row): the intermediate rows are made and used while they are in the
/// cache, and the two steps take one pass over the threads instead of two.
fn for_each_strip(
    (mid, mid_row): (&mut [f32], usize),
    (out, out_row): (&mut [f32], usize),
    rows: usize,
    split: Split,
    f: impl Fn(usize, &mut [f32], &mut [f32]) + Sync + Send,
) {
    let (mid_strip, out_strip) = (rows * mid_row, rows * out_row);
    match split {
        Split::Threads => mid
            .par_chunks_mut(mid_strip)
            .zip(out.par_chunks_mut(out_strip))
            .enumerate()
            .for_each(|(strip, (mid, out))| f(strip * rows, mid, out)),
        Split::None => (mid.chunks_mut(mid_strip).zip(out.chunks_mut(out_strip)))
            .enumerate()
            .for_each(|(strip, (mid, out))| f(strip * rows, mid, out)),
    }
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
    fn from(self, first: usize) -> Then<'a> {
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

/// Output channels of one register tile: two AVX-512 vectors.
const GROUP: usize = 32;
/// Pixels of one register tile: 8 pixels × 2 vectors of sums take 16 of the 32 vector
/// registers, and each weight vector loaded serves 8 multiply-adds.
const TILE_PIXELS: usize = 8;
/// Pixels one task computes at most (rayon splits a layer's pixels into such tasks).
const TASK_PIXELS: usize = 64;

/// Pixels one task computes at least, where a layer has that many: a task runs each group of
/// weights over all its pixels, so the group is read from the L2 cache once for three tiles
/// (tasks of one tile read every weight of a 7×7 layer's from L2 for each 8 pixels).
const MIN_TASK_PIXELS: usize = 24;

/// Tasks each thread gets when a layer is shared out among the threads: several, so that one
/// slow task does not leave the other threads idle for long at the end.
const TASKS_PER_THREAD: usize = 4;

/// Pixels one task computes: the layer's pixels shared out evenly among the fewest tasks of at
/// most `TASK_PIXELS` (196 pixels: four tasks of 49, not three of 64 and one of 4 that would
/// read every weight for 4 pixels). When the tasks go to the threads, more of them, so that
/// each thread gets several (the 7×7 layers' 49 pixels were one task, and one core sat idle
/// through a third of the network's work), but not smaller than `MIN_TASK_PIXELS`.
fn task_pixels(pixels: usize, split: Split) -> usize {
    let fewest = pixels.div_ceil(TASK_PIXELS);
    let tasks = match split {
        Split::Threads => fewest.max(
            (pixels / MIN_TASK_PIXELS).clamp(1, TASKS_PER_THREAD * rayon::current_num_threads()),
        ),
        Split::None => fewest,
    };
    pixels.div_ceil(tasks.max(1)).max(1)
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
        let threads = rayon::current_num_threads();
        let groups = self.bias.len();
        if matches!(split, Split::Threads)
            && pixels < MIN_TASK_PIXELS * TASKS_PER_THREAD * threads
            && groups > 1
        {
            return self.forward_by_groups(x, out, then, threads);
        }
        let task_pixels = task_pixels(pixels, split);
        for_each_chunk(out, task_pixels * self.outputs, split, |task, out| {
            let first = task * task_pixels;
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
    fn forward_by_groups(&self, x: &[f32], out: &mut [f32], then: Then, threads: usize) {
        let (inputs, outputs) = (self.inputs, self.outputs);
        let pixels = x.len() / inputs;
        let groups = self.bias.len();
        let groups_per_task = (groups / (TASKS_PER_THREAD * threads)).max(1);
        let group_len = pixels * GROUP;
        let mut by_group = vec![0f32; groups * group_len];
        by_group
            .par_chunks_mut(groups_per_task * group_len)
            .enumerate()
            .for_each(|(task, sums)| {
                vectorized(
                    #[inline(always)]
                    || {
                        for (g, sums) in sums.chunks_exact_mut(group_len).enumerate() {
                            let group = task * groups_per_task + g;
                            let layout = (GROUP, 0, GROUP);
                            self.group_pixels(group, x, sums, layout, 0, Then::Nothing);
                        }
                    },
                )
            });
        each_row(out, outputs, |pixel, row| {
            for (group, values) in row.chunks_mut(GROUP).enumerate() {
                let sums = &by_group[group * group_len + pixel * GROUP..];
                values.copy_from_slice(&sums[..values.len()]);
                then.apply(values, pixel * outputs + group * GROUP);
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

/// One tile's operands: `R` pixels' inputs (consecutive rows of `inputs` values), one group's weights (`[inputs]` of 32 outputs)
/// and biases, and where its outputs lie: `columns` (≤ 32) outputs from `first_column` of
/// pixels `first_pixel..first_pixel + R`, rows of `outputs` values.
pub struct Tile<'a> {
    pub x: &'a [f32],
    pub weights: &'a [[f32; GROUP]],
    pub bias: &'a [f32; GROUP],
    pub outputs: usize,
    pub first_pixel: usize,
    pub first_column: usize,
    pub columns: usize,
}

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

/// A full convolution on a CHW image (the network's input): the patches unrolled into rows,
/// then a pointwise product.
pub struct Stem {
    product: Pointwise,
    kernel: usize,
    stride: usize,
    channels: usize,
}

impl Stem {
    /// `weights` is PyTorch's `[outputs, channels, kernel, kernel]`, row-major.
    pub fn new(
        weights: &[f32],
        bias: Vec<f32>,
        channels: usize,
        kernel: usize,
        stride: usize,
    ) -> Self {
        Self {
            product: Pointwise::new(weights, &bias),
            kernel,
            stride,
            channels,
        }
    }

    /// The side of the output for a `size`×`size` input.
    pub fn output_size(&self, size: usize) -> usize {
        same_padding(size, self.kernel, self.stride).0
    }

    pub fn outputs(&self) -> usize {
        self.product.outputs()
    }

    /// Values `forward` unrolls the patches of a `size`×`size` image into.
    pub fn patches_len(&self, size: usize) -> usize {
        self.output_size(size).pow(2) * self.channels * self.kernel * self.kernel
    }

    /// The convolution of a CHW image of `size`×`size` pixels, with ReLU6, into `out`
    /// (channels-last, overwritten, of `output_size(size)`² pixels); `patches` (of
    /// `patches_len(size)` values) is room for the unrolled patches.
    pub fn forward(
        &self,
        image: &[f32],
        size: usize,
        patches: &mut [f32],
        out: &mut [f32],
        split: Split,
    ) {
        let (out_size, pad) = same_padding(size, self.kernel, self.stride);
        let patch = self.channels * self.kernel * self.kernel;
        let rows = strip_rows(out_size, split);
        let mid = (patches, out_size * patch);
        let outputs = (out, out_size * self.outputs());
        for_each_strip(mid, outputs, rows, split, |first, patches, out| {
            for (oy, row) in (first..).zip(patches.chunks_exact_mut(out_size * patch)) {
                self.patches_row(image, size, pad, oy, row);
            }
            self.product.forward(patches, out, Then::Relu6, Split::None);
        });
    }

    /// Output row `oy`'s patches (`row`), each in the weights' order (channel, row, column),
    /// zeros in the padding. Pixel after pixel, each patch written in order: a patch inside the
    /// image copies `kernel` neighbouring inputs per channel and kernel row.
    fn patches_row(&self, image: &[f32], size: usize, pad: usize, oy: usize, row: &mut [f32]) {
        let (k, stride) = (self.kernel, self.stride);
        let patch = self.channels * k * k;
        // The input line each channel and kernel row reads (none in the padding), found once
        // for the row.
        let lines: Vec<Option<&[f32]>> = image
            .chunks_exact(size * size)
            .flat_map(|plane| {
                (0..k).map(move |ky| {
                    source(oy, ky, stride, pad, size).map(|iy| &plane[iy * size..][..size])
                })
            })
            .collect();
        for (ox, patch) in row.chunks_exact_mut(patch).enumerate() {
            // The first input column of the patch, when all its columns are inside.
            let first = (ox * stride)
                .checked_sub(pad)
                .filter(|first| first + k <= size);
            for (taps, line) in patch.chunks_exact_mut(k).zip(&lines) {
                match (line, first) {
                    (None, _) => taps.fill(0.0),
                    (Some(line), Some(first)) => copy_taps(taps, &line[first..][..k]),
                    (Some(line), None) => {
                        for (kx, tap) in taps.iter_mut().enumerate() {
                            *tap = source(ox, kx, stride, pad, size).map_or(0.0, |ix| line[ix]);
                        }
                    }
                }
            }
        }
    }
}

/// `to.copy_from_slice(from)`, as three moves for a 3×3 kernel's row (a call to `memcpy` per
/// three values cost more than the copy).
#[inline(always)]
fn copy_taps(to: &mut [f32], from: &[f32]) {
    if let (Ok(to), Ok(from)) = (
        <&mut [f32; 3]>::try_from(&mut *to),
        <&[f32; 3]>::try_from(from),
    ) {
        *to = *from;
        return;
    }
    for (t, f) in to.iter_mut().zip(from) {
        *t = *f;
    }
}

/// Output pixels of a row computed together: four pixels × four vectors of channels take half
/// the vector registers (sixteen independent chains of additions), and each weight vector
/// loaded serves four multiply-adds.
const RUN_PIXELS: usize = 4;
/// Output pixels of a row computed together at stride 1, where the vector kernel slides along
/// the inputs (one vector of channels at a time: eight sums, and each input loaded once for up
/// to `kernel` of them).
const SLIDING_RUN_PIXELS: usize = 8;

/// A depthwise convolution (one `kernel`×`kernel` filter per channel) with ReLU6.
pub struct Depthwise {
    /// `[kernel · kernel, channels]`: each tap's weights for all channels, contiguous.
    weights: Vec<f32>,
    bias: Vec<f32>,
    kernel: usize,
    stride: usize,
    /// Which code computes the runs (`kernel` is the filter's size).
    code: Kernel,
}

impl Depthwise {
    /// `weights` is PyTorch's `[channels, 1, kernel, kernel]`, row-major.
    pub fn new(weights: &[f32], bias: Vec<f32>, kernel: usize, stride: usize) -> Self {
        let channels = bias.len();
        let taps = kernel * kernel;
        let mut transposed = vec![0f32; weights.len()];
        for c in 0..channels {
            for t in 0..taps {
                transposed[t * channels + c] = weights[c * taps + t];
            }
        }
        Self {
            weights: transposed,
            bias,
            kernel,
            stride,
            code: Kernel::detect(),
        }
    }

    /// The side of the output for a `size`×`size` input.
    pub fn output_size(&self, size: usize) -> usize {
        same_padding(size, self.kernel, self.stride).0
    }

    /// The convolution of a `size`×`size` channels-last image into `out` (overwritten, of
    /// `output_size(size)`² pixels).
    pub fn forward(&self, x: &[f32], size: usize, out: &mut [f32], split: Split) {
        let channels = self.bias.len();
        let (out_size, pad) = same_padding(size, self.kernel, self.stride);
        assert_eq!(out.len(), out_size * out_size * channels);
        for_each_chunk(out, out_size * channels, split, |oy, row| {
            vectorized(
                #[inline(always)]
                || self.row(x, size, pad, oy, row),
            );
        });
    }

    /// The convolution of a `size`×`size` channels-last image into `hidden` (overwritten, of
    /// `output_size(size)`² pixels), then `project` from `hidden` into `out` with `then`. On an
    /// output of at least `strips_from_rows` rows, strip by strip of rows, each strip projected
    /// while it is in the cache.
    pub fn forward_projected(
        &self,
        x: &[f32],
        size: usize,
        hidden: &mut [f32],
        (project, out, then): (&Pointwise, &mut [f32], Then),
        split: Split,
    ) {
        let (out_size, pad) = same_padding(size, self.kernel, self.stride);
        if out_size < strips_from_rows(split) {
            self.forward(x, size, hidden, split);
            project.forward(hidden, out, then, split);
            return;
        }
        let channels = self.bias.len();
        assert_eq!(hidden.len(), out_size * out_size * channels);
        let rows = strip_rows(out_size, split);
        let mid = (hidden, out_size * channels);
        let outputs = (out, out_size * project.outputs());
        for_each_strip(mid, outputs, rows, split, |first, hidden, out| {
            vectorized(
                #[inline(always)]
                || {
                    for (oy, row) in (first..).zip(hidden.chunks_exact_mut(out_size * channels)) {
                        self.row(x, size, pad, oy, row);
                    }
                },
            );
            let then = then.from(first * out_size * project.outputs());
            project.forward(hidden, out, then, Split::None);
        });
    }

    /// Output row `oy`: the pixels whose taps all lie inside the image in runs of up to
    /// `RUN_PIXELS`, which share each weight vector loaded; the others (at the borders) one by
    /// one, with only their taps inside the image.
    #[inline(always)]
    fn row(&self, x: &[f32], size: usize, pad: usize, oy: usize, row: &mut [f32]) {
        let channels = self.bias.len();
        let (k, stride) = (self.kernel, self.stride);
        let out_size = row.len() / channels;
        // Column `ox`'s taps read inputs `ox·stride − pad ..= ox·stride − pad + k − 1`.
        let last_inside = (size + pad)
            .checked_sub(k)
            .map_or(0, |last| last / stride + 1);
        let inside = pad.div_ceil(stride)..last_inside;
        let step = stride * channels;
        // Every pixel inside has the first one's taps, `step` values further along per pixel:
        // found once for the row.
        let mut inside_taps = Vec::with_capacity(k * k);
        if !inside.is_empty() {
            self.taps(oy, inside.start, size, pad, &mut inside_taps);
        }
        let mut taps = Vec::with_capacity(k * k);
        let mut ox = 0;
        while ox < out_size {
            let out = &mut row[ox * channels..];
            ox += if inside.contains(&ox) {
                let (x, taps) = (&x[(ox - inside.start) * step..], &inside_taps);
                match inside.end - ox {
                    SLIDING_RUN_PIXELS.. if stride == 1 => {
                        self.pixels::<SLIDING_RUN_PIXELS>(x, taps, step, out)
                    }
                    RUN_PIXELS.. => self.pixels::<RUN_PIXELS>(x, taps, step, out),
                    3 => self.pixels::<3>(x, taps, step, out),
                    2 => self.pixels::<2>(x, taps, step, out),
                    _ => self.pixels::<1>(x, taps, step, out),
                }
            } else {
                self.taps(oy, ox, size, pad, &mut taps);
                self.pixels::<1>(x, &taps, step, out)
            };
        }
    }

    /// Each tap inside the image of output pixel (`ox`, `oy`): its first input and weight.
    #[inline(always)]
    fn taps(&self, oy: usize, ox: usize, size: usize, pad: usize, taps: &mut Vec<(usize, usize)>) {
        let (k, channels) = (self.kernel, self.bias.len());
        taps.clear();
        for ky in 0..k {
            let Some(iy) = source(oy, ky, self.stride, pad, size) else {
                continue;
            };
            for kx in 0..k {
                if let Some(ix) = source(ox, kx, self.stride, pad, size) {
                    taps.push(((iy * size + ix) * channels, (ky * k + kx) * channels));
                }
            }
        }
    }

    /// `P` neighbouring output pixels (`out` from the first), whose inputs lie `step` values
    /// apart and whose taps are all `taps` (the first pixel's); returns `P`.
    #[inline(always)]
    fn pixels<const P: usize>(
        &self,
        x: &[f32],
        taps: &[(usize, usize)],
        step: usize,
        out: &mut [f32],
    ) -> usize {
        let channels = self.bias.len();
        // The channels whole vectors hold, in the vector kernel: how many.
        let start = match self.code {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512(cpu) => {
                let run = DepthwiseRun {
                    x,
                    weights: &self.weights,
                    bias: &self.bias,
                    taps,
                    step,
                };
                // Stride 1 and every tap inside: a sliding window along each row of taps.
                let sliding = step == channels && taps.len() == self.kernel * self.kernel;
                match (sliding, self.kernel) {
                    (true, 3) => cpu.depthwise_sliding::<P, 3>(run, out),
                    (true, 5) => cpu.depthwise_sliding::<P, 5>(run, out),
                    _ => cpu.depthwise::<P>(run, out),
                }
            }
            Kernel::Portable => 0,
        };
        // The channels the vector kernel leaves (all of them without AVX-512), pixel by pixel,
        // with the same fused multiply-adds.
        if start == channels {
            return P;
        }
        for p in 0..P {
            let out = &mut out[p * channels..][start..channels];
            out.copy_from_slice(&self.bias[start..]);
            for &(input, weight) in taps {
                let input = &x[input + p * step + start..][..out.len()];
                let weight = &self.weights[weight + start..][..out.len()];
                for ((o, i), w) in out.iter_mut().zip(input).zip(weight) {
                    *o = i.mul_add(*w, *o);
                }
            }
            for o in out.iter_mut() {
                *o = o.clamp(0.0, 6.0);
            }
        }
        P
    }
}

/// What the depthwise kernel reads for a run of output pixels: the layer's input, weights
/// (`[taps, channels]`) and biases, the run's taps (first input and weight offsets of its
/// first pixel) and how far apart its pixels' inputs lie.
pub struct DepthwiseRun<'a> {
    pub x: &'a [f32],
    pub weights: &'a [f32],
    pub bias: &'a [f32],
    pub taps: &'a [(usize, usize)],
    pub step: usize,
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

    /// Pointwise against the definition: outputs not a multiple of the group, pixels not a
    /// multiple of the tile, a residual added; on the threads (with few pixels, tasks of
    /// groups of outputs; with more on two threads, tasks of pixels) and on one alike.
    #[test]
    fn pointwise_matches_the_definition() {
        let (inputs, outputs) = (24, 40);
        for pixels in [75, 400] {
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
            conv.forward(&x, &mut out, Then::Add(&residual), Split::Threads);
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

    /// The stem against the definition (a full convolution of a CHW image, ReLU6), on sizes
    /// whose "same" padding lies on one side (even) and on both (odd).
    #[test]
    fn stem_matches_the_definition() {
        let (channels, outputs, k, stride) = (3, 20, 3, 2);
        // 61: a 31-row output, in strips of four rows.
        for size in [10, 9, 61] {
            let image: Vec<f32> = (0..channels * size * size)
                .map(|i| ((i * 29) % 13) as f32 * 0.1 - 0.6)
                .collect();
            let weights: Vec<f32> = (0..outputs * channels * k * k)
                .map(|i| ((i * 11) % 9) as f32 * 0.1 - 0.4)
                .collect();
            let bias: Vec<f32> = (0..outputs).map(|o| o as f32 * 0.02).collect();
            let stem = Stem::new(&weights, bias.clone(), channels, k, stride);
            let out_size = stem.output_size(size);
            let mut patches = vec![f32::NAN; stem.patches_len(size)];
            let mut out = vec![f32::NAN; out_size * out_size * outputs];
            stem.forward(&image, size, &mut patches, &mut out, Split::Threads);
            let (_, pad) = same_padding(size, k, stride);
            for (pixel, got) in out.chunks_exact(outputs).enumerate() {
                let (oy, ox) = (pixel / out_size, pixel % out_size);
                for (o, got) in got.iter().enumerate() {
                    let mut sum = bias[o];
                    for c in 0..channels {
                        for ky in 0..k {
                            for kx in 0..k {
                                let (Some(iy), Some(ix)) = (
                                    source(oy, ky, stride, pad, size),
                                    source(ox, kx, stride, pad, size),
                                ) else {
                                    continue;
                                };
                                sum += image[(c * size + iy) * size + ix]
                                    * weights[((o * channels + c) * k + ky) * k + kx];
                            }
                        }
                    }
                    let expected = sum.clamp(0.0, 6.0);
                    assert!((got - expected).abs() < 1e-5, "{got} vs {expected}");
                }
            }
        }
    }

    /// Depthwise against the definition: with padding and stride 2; with runs of pixels
    /// inside the image (stride 1, 5×5); channels not a multiple of 16.
    #[test]
    fn depthwise_matches_the_definition() {
        for (size, channels, k, stride) in [
            (7, 70, 3, 2),
            (12, 40, 5, 1),
            (9, 16, 3, 1),
            (7, 32, 5, 1),
            (12, 32, 3, 1),
        ] {
            depthwise_case(size, channels, k, stride);
        }
    }

    /// The depthwise convolution and the projection after it, strip by strip (outputs of 14
    /// rows and more), equal to the two run one after the other, to the bit: stride 1 with a
    /// residual, stride 2 without; on the threads and on one.
    #[test]
    fn projected_strips_equal_the_two_passes() {
        let (channels, outputs) = (48, 24);
        for (size, k, stride, residual) in [(30, 3, 1, true), (58, 5, 2, false), (14, 5, 1, true)] {
            let (x, weights, bias) = depthwise_values(size, channels, k);
            let depthwise = Depthwise::new(&weights, bias, k, stride);
            let project_weights: Vec<f32> = (0..outputs * channels)
                .map(|i| ((i * 7) % 5) as f32 * 0.1 - 0.2)
                .collect();
            let project = Pointwise::new(&project_weights, &vec![0.5; outputs]);
            let out_size = depthwise.output_size(size);
            let pixels = out_size * out_size;
            let residual_values: Vec<f32> = (0..pixels * outputs).map(|i| (i % 3) as f32).collect();
            let then = if residual {
                Then::Add(&residual_values)
            } else {
                Then::Nothing
            };
            let mut hidden = vec![f32::NAN; pixels * channels];
            let mut expected = vec![f32::NAN; pixels * outputs];
            depthwise.forward(&x, size, &mut hidden, Split::None);
            project.forward(&hidden, &mut expected, then, Split::None);
            for split in [Split::Threads, Split::None] {
                let mut strips_hidden = vec![f32::NAN; pixels * channels];
                let mut out = vec![f32::NAN; pixels * outputs];
                let projected = (&project, out.as_mut_slice(), then);
                depthwise.forward_projected(&x, size, &mut strips_hidden, projected, split);
                assert_eq!(strips_hidden, hidden);
                assert_eq!(out, expected);
            }
        }
    }

    /// A `size`×`size` image of `channels` and a depthwise layer's weights and biases.
    fn depthwise_values(size: usize, channels: usize, k: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let x = (0..size * size * channels)
            .map(|i| ((i * 37) % 11) as f32 * 0.1 - 0.5)
            .collect();
        let weights = (0..channels * k * k)
            .map(|i| ((i * 13) % 7) as f32 * 0.2 - 0.6)
            .collect();
        let bias = (0..channels).map(|c| c as f32 * 0.01).collect();
        (x, weights, bias)
    }

    fn depthwise_case(size: usize, channels: usize, k: usize, stride: usize) {
        let (x, weights, bias) = depthwise_values(size, channels, k);
        let conv = Depthwise::new(&weights, bias.clone(), k, stride);
        let out_size = conv.output_size(size);
        let mut out = vec![f32::NAN; out_size * out_size * channels];
        conv.forward(&x, size, &mut out, Split::Threads);
        let (expected_size, pad) = same_padding(size, k, stride);
        assert_eq!(out_size, expected_size);
        for oy in 0..out_size {
            for ox in 0..out_size {
                for c in 0..channels {
                    let mut sum = bias[c];
                    for ky in 0..k {
                        for kx in 0..k {
                            let (iy, ix) = (oy * stride + ky, ox * stride + kx);
                            if iy < pad || ix < pad || iy - pad >= size || ix - pad >= size {
                                continue;
                            }
                            let input = x[((iy - pad) * size + ix - pad) * channels + c];
                            sum += input * weights[(c * k + ky) * k + kx];
                        }
                    }
                    let got = out[(oy * out_size + ox) * channels + c];
                    assert!((got - sum.clamp(0.0, 6.0)).abs() < 1e-5, "{got} vs {sum}");
                }
            }
        }
    }
}
