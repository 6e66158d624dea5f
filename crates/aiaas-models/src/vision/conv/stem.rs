//! The network's first convolution, on the CHW image: patches unrolled into rows, then a
//! pointwise product, strip by strip of output rows.

use std::cell::RefCell;
use std::ops::Range;

use super::{for_each_part, same_padding, sized, source, strip_count, Pointwise, Split, Then};

thread_local! {
    /// A thread's unrolled patches, kept from call to call (a task runs to its end without
    /// giving its thread to another).
    static PATCHES: RefCell<Vec<f32>> = RefCell::default();
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

    /// The convolution of a CHW image of `size`×`size` pixels, with ReLU6, into `out`
    /// (channels-last, overwritten, of `output_size(size)`² pixels), strip by strip of rows.
    pub fn forward(&self, image: &[f32], size: usize, out: &mut [f32], split: Split) {
        let out_size = self.output_size(size);
        let out_row = out_size * self.outputs();
        let strips = strip_count(out_size, split);
        for_each_part(out, out_row, strips, split, |first, out| {
            self.rows(image, size, first..first + out.len() / out_row, out);
        });
    }

    /// Output rows `rows` of the convolution of a CHW image of `size`×`size` pixels, with
    /// ReLU6, into `out`: their patches unrolled (into a buffer of the thread's), then the
    /// product.
    pub fn rows(&self, image: &[f32], size: usize, rows: Range<usize>, out: &mut [f32]) {
        let (out_size, pad) = same_padding(size, self.kernel, self.stride);
        let patch = self.channels * self.kernel * self.kernel;
        PATCHES.with_borrow_mut(|patches| {
            let patches = sized(patches, rows.len() * out_size * patch);
            for (oy, row) in rows.zip(patches.chunks_exact_mut(out_size * patch)) {
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

#[cfg(test)]
mod tests {
    use super::super::on_a_team_of_two;
    use super::*;

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
            let mut out = vec![f32::NAN; out_size * out_size * outputs];
            on_a_team_of_two(|split| stem.forward(&image, size, &mut out, split));
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
}
