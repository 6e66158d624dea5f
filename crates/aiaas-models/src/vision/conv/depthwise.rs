//! The depthwise convolution (one filter per channel) with ReLU6: runs of a row's pixels
//! through the AVX-512 kernels (a sliding window at stride 1), portable code for the channels
//! they leave; optionally followed by the projection, strip by strip of rows.

use std::cell::RefCell;
use std::ops::Range;

use super::{
    for_each_part, for_each_strip, same_padding, sized, source, strip_min_rows, Kernel, Pointwise,
    Split, Then, STRIP_PIXELS,
};
use crate::fast_math::vectorized;

thread_local! {
    /// A thread's window of input rows and its strip of depthwise outputs (see
    /// `forward_from_rows`), kept from call to call. A task on a team runs to its end without
    /// giving its thread to another, so one set a thread is enough.
    static STRIP_BUFFERS: RefCell<(Vec<f32>, Vec<f32>)> = RefCell::default();
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
        for_each_part(out, out_size * channels, out_size, split, |oy, row| {
            vectorized(
                #[inline(always)]
                || self.row(x, (size, 0), pad, oy, row),
            );
        });
    }

    /// The convolution of a `size`×`size` channels-last image into `hidden` (overwritten, of
    /// `output_size(size)`² pixels), then `project` from `hidden` into `out` with `then`. On an
    /// output of at least `strip_min_rows` rows, strip by strip of rows, each strip projected
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
        if out_size < strip_min_rows(split) {
            self.forward(x, size, hidden, split);
            project.forward(hidden, out, then, split);
            return;
        }
        let channels = self.bias.len();
        assert_eq!(hidden.len(), out_size * out_size * channels);
        let mid = (hidden, out_size * channels);
        let outputs = (out, out_size * project.outputs());
        for_each_strip(mid, outputs, split, |first, hidden, out| {
            self.strip((x, size, 0), pad, first, hidden, (project, out, then));
        });
    }

    /// This convolution of a `size`×`size` channels-last input that `make_rows(rows, window)`
    /// makes row by row (the rows `rows` into `window`, `size · channels` values a row: a 1×1
    /// expansion's output, say), then `project` into `out` with `then`. The output rows go to
    /// the threads in one share each, and each share strip by strip: the input rows a strip reads
    /// are made into a window of the thread's own (those it shares with the strip before kept,
    /// moved to the front), its outputs are projected while in the cache, and the input (the
    /// expanded tensor of a block: 4.8 MB at 112×112) is never whole in memory. Only the rows on
    /// either side of a share's edge are made twice.
    pub fn forward_from_rows(
        &self,
        size: usize,
        make_rows: impl Fn(Range<usize>, &mut [f32]) + Sync,
        (project, out, then): (&Pointwise, &mut [f32], Then),
        split: Split,
    ) {
        let (out_size, pad) = same_padding(size, self.kernel, self.stride);
        let channels = self.bias.len();
        let (out_row, window_row) = (out_size * project.outputs(), size * channels);
        let strip_rows = STRIP_PIXELS.div_ceil(out_size);
        let shares = match split {
            Split::Threads(team) => team.threads(),
            Split::None => 1,
        };
        for_each_part(out, out_row, shares, split, |first, out| {
            STRIP_BUFFERS.with_borrow_mut(|(window, hidden)| {
                // The input rows the window holds.
                let mut held = 0..0;
                for (strip, out) in out.chunks_mut(strip_rows * out_row).enumerate() {
                    let start = first + strip * strip_rows;
                    let rows = start..start + out.len() / out_row;
                    // The input rows the strip's taps read.
                    let needed = (rows.start * self.stride).saturating_sub(pad)
                        ..((rows.end - 1) * self.stride + self.kernel - pad).min(size);
                    let kept = needed.start..held.end.max(needed.start);
                    if !kept.is_empty() {
                        let from = kept.start - held.start..kept.end - held.start;
                        window.copy_within(from.start * window_row..from.end * window_row, 0);
                    }
                    let window = sized(window, needed.len() * window_row);
                    make_rows(kept.end..needed.end, &mut window[kept.len() * window_row..]);
                    held = needed.clone();
                    let hidden = sized(hidden, rows.len() * out_size * channels);
                    let input = (&*window, size, needed.start);
                    self.strip(input, pad, rows.start, hidden, (project, out, then));
                }
            });
        });
    }

    /// The output rows of a strip from `first` on into `hidden` (as many rows as it holds),
    /// then `project` of them into `out` with what follows (`then`, for the whole output). `x`
    /// holds the `size`×`size` input's rows from `origin` on.
    #[inline(always)]
    fn strip(
        &self,
        (x, size, origin): (&[f32], usize, usize),
        pad: usize,
        first: usize,
        hidden: &mut [f32],
        (project, out, then): (&Pointwise, &mut [f32], Then),
    ) {
        let out_size = self.output_size(size);
        let hidden_row = out_size * self.bias.len();
        vectorized(
            #[inline(always)]
            || {
                for (oy, row) in (first..).zip(hidden.chunks_exact_mut(hidden_row)) {
                    self.row(x, (size, origin), pad, oy, row);
                }
            },
        );
        let then = then.skipping(first * out_size * project.outputs());
        project.forward(hidden, out, then, Split::None);
    }

    /// Output row `oy`: the pixels whose taps all lie inside the image in runs of up to
    /// `RUN_PIXELS`, which share each weight vector loaded; the others (at the borders) one by
    /// one, with only their taps inside the image. `x` holds the image's rows from `origin` on.
    #[inline(always)]
    fn row(
        &self,
        x: &[f32],
        (size, origin): (usize, usize),
        pad: usize,
        oy: usize,
        row: &mut [f32],
    ) {
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
            self.taps((oy, inside.start), (size, origin), pad, &mut inside_taps);
        }
        let mut taps = Vec::with_capacity(k * k);
        let mut ox = 0;
        while ox < out_size {
            let out = &mut row[ox * channels..];
            ox += if inside.contains(&ox) {
                let (x, taps) = (&x[(ox - inside.start) * step..], &inside_taps);
                match inside.end - ox {
                    SLIDING_RUN_PIXELS.. if self.slides() => {
                        self.pixels::<SLIDING_RUN_PIXELS>(x, taps, step, out)
                    }
                    RUN_PIXELS.. => self.pixels::<RUN_PIXELS>(x, taps, step, out),
                    3 => self.pixels::<3>(x, taps, step, out),
                    2 => self.pixels::<2>(x, taps, step, out),
                    _ => self.pixels::<1>(x, taps, step, out),
                }
            } else {
                self.taps((oy, ox), (size, origin), pad, &mut taps);
                self.pixels::<1>(x, &taps, step, out)
            };
        }
    }

    /// Whether runs inside the image go through the sliding-window kernel (stride 1, the
    /// filter sizes it is compiled for); they are then `SLIDING_RUN_PIXELS` long.
    fn slides(&self) -> bool {
        self.stride == 1 && matches!(self.kernel, 3 | 5)
    }

    /// Each tap inside the image of output pixel (`ox`, `oy`): its first input (in rows from
    /// `origin` on) and weight.
    #[inline(always)]
    fn taps(
        &self,
        (oy, ox): (usize, usize),
        (size, origin): (usize, usize),
        pad: usize,
        taps: &mut Vec<(usize, usize)>,
    ) {
        let (k, channels) = (self.kernel, self.bias.len());
        taps.clear();
        for ky in 0..k {
            let Some(iy) = source(oy, ky, self.stride, pad, size) else {
                continue;
            };
            for kx in 0..k {
                if let Some(ix) = source(ox, kx, self.stride, pad, size) {
                    let input = ((iy - origin) * size + ix) * channels;
                    taps.push((input, (ky * k + kx) * channels));
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
                // Every tap inside: a sliding window along each row of taps.
                let sliding = self.slides() && taps.len() == self.kernel * self.kernel;
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
    use super::super::on_a_team_of_two;
    use super::*;

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
            let strips = |split: Split| {
                let mut strips_hidden = vec![f32::NAN; pixels * channels];
                let mut out = vec![f32::NAN; pixels * outputs];
                let projected = (&project, out.as_mut_slice(), then);
                depthwise.forward_projected(&x, size, &mut strips_hidden, projected, split);
                (strips_hidden, out)
            };
            for (strips_hidden, out) in [on_a_team_of_two(strips), strips(Split::None)] {
                assert_eq!(strips_hidden, hidden);
                assert_eq!(out, expected);
            }
        }
    }

    /// A whole block with its expansion in strips, equal to the expansion, the depthwise
    /// convolution and the projection run one after the other, to the bit: stride 1 with a
    /// residual, stride 2 without, odd sizes (uneven shares and a last strip shorter than the
    /// others); on the threads (two shares, each expanding a halo past its edge) and on one.
    #[test]
    fn expanded_strips_equal_the_three_passes() {
        let (inputs, channels) = (16, 40);
        for (size, k, stride, residual) in [(31, 3, 1, true), (57, 5, 2, false), (28, 5, 1, true)] {
            let x: Vec<f32> = (0..size * size * inputs)
                .map(|i| ((i * 29) % 13) as f32 * 0.1 - 0.6)
                .collect();
            let expand_weights: Vec<f32> = (0..channels * inputs)
                .map(|i| ((i * 11) % 9) as f32 * 0.1 - 0.3)
                .collect();
            let expand = Pointwise::new(&expand_weights, &vec![0.25; channels]);
            let (_, weights, bias) = depthwise_values(size, channels, k);
            let depthwise = Depthwise::new(&weights, bias, k, stride);
            let outputs = if residual { inputs } else { 24 };
            let project_weights: Vec<f32> = (0..outputs * channels)
                .map(|i| ((i * 7) % 5) as f32 * 0.1 - 0.2)
                .collect();
            let project = Pointwise::new(&project_weights, &vec![0.5; outputs]);
            let out_size = depthwise.output_size(size);
            let then = if residual {
                Then::Add(&x)
            } else {
                Then::Nothing
            };
            let mut expanded = vec![f32::NAN; size * size * channels];
            expand.forward(&x, &mut expanded, Then::Relu6, Split::None);
            let mut hidden = vec![f32::NAN; out_size * out_size * channels];
            depthwise.forward(&expanded, size, &mut hidden, Split::None);
            let mut expected = vec![f32::NAN; out_size * out_size * outputs];
            project.forward(&hidden, &mut expected, then, Split::None);
            let block = |split: Split| {
                let mut out = vec![f32::NAN; out_size * out_size * outputs];
                let projected = (&project, out.as_mut_slice(), then);
                let expand_rows = |rows: Range<usize>, window: &mut [f32]| {
                    let x = &x[rows.start * size * inputs..rows.end * size * inputs];
                    expand.forward(x, window, Then::Relu6, Split::None);
                };
                depthwise.forward_from_rows(size, expand_rows, projected, split);
                out
            };
            assert_eq!(on_a_team_of_two(block), expected);
            assert_eq!(block(Split::None), expected);
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
        on_a_team_of_two(|split| conv.forward(&x, size, &mut out, split));
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
