//! From an uploaded photo to a network's input: decode (JPEG, PNG, GIF, BMP, WebP, within
//! limits against decompression bombs), convert to RGB, resize the shorter side, crop the
//! centre and normalize each channel, into a CHW f32 tensor.
//!
//! The resize is PIL's `Image.resize(size, BICUBIC)` (or `BILINEAR`) to the bit, because
//! torchvision's and timm's ImageNet evaluation transforms are written with it: the same
//! separable filters, widened by the scale factor when shrinking (antialiasing), the same
//! 22-bit fixed-point weights, the horizontal pass first and its result rounded to 8 bits
//! (Pillow's `libImaging/Resample.c`). Only the pixels inside the crop are computed, which
//! gives the same values as resizing everything and cropping afterwards.

use std::io::Cursor;
use std::ops::Range;

use image::{ImageFormat, ImageReader, Limits, RgbImage};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// The formats `prepare` decodes, for error messages.
pub const ACCEPTED_FORMATS: &str = "JPEG, PNG, GIF, BMP, WebP";
/// Images wider or taller than this are refused before decoding.
pub const MAX_SIDE: u32 = 16_384;
/// Images with more pixels than this are refused before decoding (50 megapixels).
pub const MAX_PIXELS: u64 = 50_000_000;
/// The most memory a decoder may allocate.
const MAX_DECODER_BYTES: u64 = 256 << 20;

/// Why an upload cannot be classified; the messages are meant for the client (HTTP 400).
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("the image is empty")]
    Empty,
    #[error("the image format is not recognised (accepted: {ACCEPTED_FORMATS})")]
    Unrecognised,
    #[error("{0} images are not supported (accepted: {ACCEPTED_FORMATS})")]
    Unsupported(String),
    #[error("the image is corrupt or truncated: {0}")]
    Corrupt(String),
    #[error(
        "the image is {width}×{height} pixels, over the limit of {MAX_SIDE} pixels a side \
         and {MAX_PIXELS} pixels in all"
    )]
    TooLarge { width: u32, height: u32 },
}

/// The resampling filter of the resize.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interpolation {
    /// PIL's `BICUBIC`: Keys' cubic with a = −0.5.
    #[default]
    Bicubic,
    /// PIL's `BILINEAR`: the triangle filter.
    Bilinear,
}

impl Interpolation {
    /// The filter's half-width at scale 1.
    fn support(self) -> f64 {
        match self {
            Self::Bicubic => 2.0,
            Self::Bilinear => 1.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Self::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Self::Bilinear => (1.0 - x).max(0.0),
        }
    }
}

/// How a classifier wants its input: the ImageNet evaluation transform, as in torchvision's
/// `Resize(resize_shorter, interpolation) → CenterCrop(crop) → ToTensor → Normalize(mean, std)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagePreprocessing {
    /// The shorter side is resized to this (never below `crop`), keeping the aspect ratio.
    pub resize_shorter: u32,
    /// The side of the square taken from the centre.
    pub crop: u32,
    /// Per-channel (R, G, B) mean and standard deviation, of values scaled to 0..1.
    pub mean: [f32; 3],
    pub std: [f32; 3],
    #[serde(default)]
    pub interpolation: Interpolation,
}

/// 8-bit pixels, three channels interleaved, row-major.
type Rgb8 = Vec<u8>;

impl ImagePreprocessing {
    /// The usual ImageNet evaluation transform for a `crop`-pixel network: resize to
    /// `crop / 0.875` (256 for 224), bicubic, ImageNet's mean and standard deviation.
    pub fn imagenet(crop: u32) -> Self {
        Self {
            resize_shorter: (f64::from(crop) / 0.875).round() as u32,
            crop,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
            interpolation: Interpolation::Bicubic,
        }
    }

    /// Values per prepared image: 3 × crop × crop.
    pub fn tensor_len(&self) -> usize {
        3 * self.crop as usize * self.crop as usize
    }

    /// Decodes an uploaded image into a `3 × crop × crop` tensor (channels R, G, B; rows top
    /// to bottom), the NCHW layout of one image.
    pub fn prepare(&self, encoded: &[u8]) -> Result<Vec<f32>, ImageError> {
        let image = decode(encoded)?;
        Ok(self.prepare_rgb(&image))
    }

    /// `prepare` for decoded pixels (at least one).
    fn prepare_rgb(&self, image: &RgbImage) -> Vec<f32> {
        let crop = self.crop as usize;
        let (width, height) = (image.width() as usize, image.height() as usize);
        let (resized_width, resized_height) = self.resized_size(width, height);
        let left = (resized_width - crop) / 2;
        let top = (resized_height - crop) / 2;
        let columns = taps(width, resized_width, left..left + crop, self.interpolation);
        let rows = taps(height, resized_height, top..top + crop, self.interpolation);
        // The input rows the crop's rows reach.
        let first_row = rows.iter().map(|t| t.first).min().unwrap_or(0);
        let end_row = rows.iter().map(Taps::end).max().unwrap_or(0);
        let source = &image.as_raw()[first_row * width * 3..end_row * width * 3];
        let narrowed = horizontal(source, width, &columns);
        let cropped = vertical(&narrowed, crop, &rows, first_row);
        self.normalize(&cropped)
    }

    /// The size after the resize: the shorter side to `resize_shorter` (at least `crop`), the
    /// other one scaled alike and rounded as Python's `round` does.
    fn resized_size(&self, width: usize, height: usize) -> (usize, usize) {
        let target = self.resize_shorter.max(self.crop) as usize;
        let scale = target as f64 / width.min(height) as f64;
        let scaled = |side: usize| ((side as f64 * scale).round_ties_even() as usize).max(target);
        if width <= height {
            (target, scaled(height))
        } else {
            (scaled(width), target)
        }
    }

    /// Interleaved 8-bit RGB to planar normalized f32.
    fn normalize(&self, pixels: &[u8]) -> Vec<f32> {
        let plane = pixels.len() / 3;
        let mut out = vec![0f32; 3 * plane];
        for (channel, out) in out.chunks_exact_mut(plane).enumerate() {
            let (mean, std) = (self.mean[channel], self.std[channel]);
            let table: Vec<f32> = (0..=255u8)
                .map(|v| (f32::from(v) / 255.0 - mean) / std)
                .collect();
            for (o, pixel) in out.iter_mut().zip(pixels.chunks_exact(3)) {
                *o = table[usize::from(pixel[channel])];
            }
        }
        out
    }
}

/// Decodes an upload to 8-bit RGB, refusing oversized images before decoding them. Alpha is
/// dropped and grey is replicated, as PIL's `convert("RGB")` does; 16-bit samples are scaled
/// to 8 bits. EXIF orientation is not applied (PIL's `open` does not either).
pub fn decode(encoded: &[u8]) -> Result<RgbImage, ImageError> {
    if encoded.is_empty() {
        return Err(ImageError::Empty);
    }
    // Sizes are checked here, with a message that gives them; the decoder's own limits are a
    // second line of defence.
    let reader = |limit_sides: bool| -> Result<ImageReader<Cursor<&[u8]>>, ImageError> {
        let mut reader = ImageReader::new(Cursor::new(encoded))
            .with_guessed_format()
            .map_err(|e| ImageError::Corrupt(e.to_string()))?;
        let mut limits = Limits::default();
        limits.max_alloc = Some(MAX_DECODER_BYTES);
        if limit_sides {
            limits.max_image_width = Some(MAX_SIDE);
            limits.max_image_height = Some(MAX_SIDE);
        }
        reader.limits(limits);
        Ok(reader)
    };
    let format = reader(false)?.format().ok_or(ImageError::Unrecognised)?;
    if !matches!(
        format,
        ImageFormat::Jpeg
            | ImageFormat::Png
            | ImageFormat::Gif
            | ImageFormat::Bmp
            | ImageFormat::WebP
    ) {
        return Err(ImageError::Unsupported(
            format!("{format:?}").to_uppercase(),
        ));
    }
    // The header first: a decompression bomb is refused with its size before any allocation.
    let (width, height) = reader(false)?
        .into_dimensions()
        .map_err(|e| classify(e, None))?;
    check_size(width, height)?;
    if format == ImageFormat::Jpeg {
        return super::jpeg::decode(encoded);
    }
    let image = reader(true)?
        .decode()
        .map_err(|e| classify(e, Some((width, height))))?;
    Ok(image.into_rgb8())
}

/// Refuses an empty image, or one over `MAX_SIDE` a side or `MAX_PIXELS` in all.
pub(super) fn check_size(width: u32, height: u32) -> Result<(), ImageError> {
    if width == 0 || height == 0 {
        return Err(ImageError::Corrupt(format!("{width}×{height} pixels")));
    }
    if width > MAX_SIDE || height > MAX_SIDE || u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(ImageError::TooLarge { width, height });
    }
    Ok(())
}

/// The client-facing error for a decoder's.
fn classify(error: image::ImageError, size: Option<(u32, u32)>) -> ImageError {
    match (error, size) {
        (image::ImageError::Limits(_), Some((width, height))) => {
            ImageError::TooLarge { width, height }
        }
        (image::ImageError::Unsupported(e), _) => ImageError::Unsupported(e.to_string()),
        (e, _) => ImageError::Corrupt(e.to_string()),
    }
}

/// Bits after the point of the fixed-point filter weights (Pillow's `PRECISION_BITS`).
const PRECISION_BITS: u32 = 22;

/// The input pixels one output pixel is made of.
struct Taps {
    first: usize,
    /// Fixed-point weights of the pixels from `first` on.
    weights: Vec<i32>,
}

impl Taps {
    fn end(&self) -> usize {
        self.first + self.weights.len()
    }
}

/// The taps of outputs `wanted` when `input` pixels are resized to `output` (Pillow's
/// `precompute_coeffs` and `normalize_coeffs_8bpc`, operation for operation).
fn taps(input: usize, output: usize, wanted: Range<usize>, filter: Interpolation) -> Vec<Taps> {
    let scale = input as f64 / output as f64;
    let filter_scale = scale.max(1.0);
    let support = filter.support() * filter_scale;
    let inverse = 1.0 / filter_scale;
    wanted
        .map(|o| {
            let center = (o as f64 + 0.5) * scale;
            // C's `(int)` conversions: truncation toward zero.
            let first = ((center - support + 0.5) as i64).max(0) as usize;
            let end = ((center + support + 0.5) as i64).clamp(first as i64, input as i64) as usize;
            let raw: Vec<f64> = (first..end)
                .map(|x| filter.weight((x as f64 - center + 0.5) * inverse))
                .collect();
            let total: f64 = raw.iter().sum();
            let one = f64::from(1u32 << PRECISION_BITS);
            let weights = raw
                .iter()
                .map(|&w| {
                    let w = if total == 0.0 { w } else { w / total };
                    (if w < 0.0 {
                        w * one - 0.5
                    } else {
                        w * one + 0.5
                    }) as i32
                })
                .collect();
            Taps { first, weights }
        })
        .collect()
}

/// A weighted sum of 8-bit samples to 8 bits, as Pillow rounds and clips it.
#[inline(always)]
fn to_u8(sum: i32) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Each row of `source` (`width` RGB pixels) resampled to the pixels `columns` describe.
fn horizontal(source: &[u8], width: usize, columns: &[Taps]) -> Rgb8 {
    let mut out = vec![0u8; source.len() / (width * 3) * columns.len() * 3];
    out.par_chunks_mut(columns.len() * 3)
        .zip(source.par_chunks(width * 3))
        .for_each(|(out, row)| {
            for (pixel, taps) in out.chunks_exact_mut(3).zip(columns) {
                let mut sums = [HALF; 3];
                let inputs = row[taps.first * 3..taps.end() * 3].chunks_exact(3);
                for (input, &w) in inputs.zip(&taps.weights) {
                    for (sum, &v) in sums.iter_mut().zip(input) {
                        *sum += i32::from(v) * w;
                    }
                }
                for (p, sum) in pixel.iter_mut().zip(sums) {
                    *p = to_u8(sum);
                }
            }
        });
    out
}

/// The rows `rows` describe, from `source` (rows of `width` RGB pixels, the first being input
/// row `first_row`).
fn vertical(source: &[u8], width: usize, rows: &[Taps], first_row: usize) -> Rgb8 {
    let stride = width * 3;
    let mut out = vec![0u8; rows.len() * stride];
    out.par_chunks_mut(stride)
        .zip(rows)
        .for_each(|(out, taps)| {
            let mut sums = vec![HALF; stride];
            for (i, &w) in taps.weights.iter().enumerate() {
                let start = (taps.first + i - first_row) * stride;
                for (sum, &v) in sums.iter_mut().zip(&source[start..start + stride]) {
                    *sum += i32::from(v) * w;
                }
            }
            for (o, sum) in out.iter_mut().zip(sums) {
                *o = to_u8(sum);
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let image = RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x * 7) as u8, (y * 5) as u8, ((x + y) * 3) as u8])
        });
        let mut bytes = Vec::new();
        image
            .write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)
            .unwrap();
        bytes
    }

    #[test]
    fn a_photo_becomes_a_normalized_chw_crop() {
        let settings = ImagePreprocessing::imagenet(224);
        assert_eq!(settings.resize_shorter, 256);
        let tensor = settings.prepare(&png(300, 400)).unwrap();
        assert_eq!(tensor.len(), 3 * 224 * 224);
        let (lowest, highest) = (-0.485 / 0.229, (1.0 - 0.406) / 0.225);
        assert!(tensor
            .iter()
            .all(|&v| (lowest - 1e-5..=highest + 1e-5).contains(&v)));
    }

    #[test]
    fn resizing_to_the_same_size_changes_nothing() {
        let settings = ImagePreprocessing {
            resize_shorter: 8,
            crop: 8,
            mean: [0.0; 3],
            std: [1.0; 3],
            interpolation: Interpolation::Bicubic,
        };
        let image = RgbImage::from_fn(8, 8, |x, y| image::Rgb([(x * 30) as u8, (y * 30) as u8, 9]));
        let tensor = settings.prepare_rgb(&image);
        assert_eq!(tensor[8 + 3], 90.0 / 255.0); // R of row 1, column 3
        assert_eq!(tensor[64 + 8 * 2 + 5], 60.0 / 255.0); // G of row 2, column 5
    }

    /// One grey row of 7 pixels resized to `width` as Pillow 13 does it.
    fn resize_row(width: usize, filter: Interpolation) -> Vec<u8> {
        let row = [0u8, 40, 80, 120, 160, 200, 255];
        let source: Vec<u8> = row.iter().flat_map(|&v| [v, v, v]).collect();
        let columns = taps(7, width, 0..width, filter);
        let out = horizontal(&source, 7, &columns);
        out.chunks_exact(3).map(|p| p[0]).collect()
    }

    /// Expected values from Pillow 13's `Image.resize((width, 1), filter)` of that row:
    /// shrinking with the widened filter, and enlarging, where bicubic overshoots and clips.
    #[test]
    fn resizing_matches_pillow() {
        assert_eq!(resize_row(3, Interpolation::Bicubic), [29, 120, 217]);
        assert_eq!(resize_row(3, Interpolation::Bilinear), [34, 120, 211]);
        assert_eq!(
            resize_row(10, Interpolation::Bicubic),
            [0, 19, 50, 78, 106, 134, 162, 189, 228, 255]
        );
    }

    #[test]
    fn the_settings_round_trip_through_toml_style_serde() {
        let settings = ImagePreprocessing::imagenet(224);
        let json = serde_json::to_string(&settings).unwrap();
        assert!(json.contains("\"interpolation\":\"bicubic\""), "{json}");
        assert_eq!(
            serde_json::from_str::<ImagePreprocessing>(&json).unwrap(),
            settings
        );
    }

    #[test]
    fn bad_uploads_get_clear_errors() {
        assert!(matches!(decode(b""), Err(ImageError::Empty)));
        assert!(matches!(
            decode(b"hello, world"),
            Err(ImageError::Unrecognised)
        ));
        let tiff = b"II*\x00\x08\x00\x00\x00";
        let message = decode(tiff).unwrap_err().to_string();
        assert!(
            message.contains("TIFF images are not supported"),
            "{message}"
        );
        let mut truncated = png(64, 64);
        truncated.truncate(truncated.len() / 2);
        assert!(matches!(decode(&truncated), Err(ImageError::Corrupt(_))));
    }

    /// A 1×1 PNG whose header claims `width`×`height` pixels.
    fn png_claiming(width: u32, height: u32) -> Vec<u8> {
        let mut bytes = png(1, 1);
        // IHDR's width and height follow the signature (8), length (4) and type (4); its CRC
        // covers the type and the 13 bytes of data.
        bytes[16..20].copy_from_slice(&width.to_be_bytes());
        bytes[20..24].copy_from_slice(&height.to_be_bytes());
        let mut crc = flate2::Crc::new();
        crc.update(&bytes[12..29]);
        bytes[29..33].copy_from_slice(&crc.sum().to_be_bytes());
        bytes
    }

    #[test]
    fn decompression_bombs_are_refused_from_their_header() {
        let message = decode(&png_claiming(100_000, 100_000))
            .unwrap_err()
            .to_string();
        assert!(message.contains("100000×100000 pixels"), "{message}");
        // Each side within the limit, too many pixels in all.
        let message = decode(&png_claiming(15_000, 15_000))
            .unwrap_err()
            .to_string();
        assert!(message.contains("15000×15000 pixels"), "{message}");
    }
}
