//! JPEG decoding with libjpeg-turbo's decoder (MozJPEG's copy of it, built from source): the
//! integer IDCT and "fancy" chroma upsampling that PIL uses, so that a photo gives a network the
//! pixels it was evaluated on. (zune-jpeg, the `image` crate's decoder, differs on about a
//! tenth of the pixels by up to 4 levels, enough to swap the top classes of a close call.)

use std::panic::{catch_unwind, AssertUnwindSafe};

use image::RgbImage;
use mozjpeg::{DctMethod, Decompress};

use super::preprocess::{check_size, ImageError};

/// The most scans a JPEG may have (progressive encoders write about ten).
const MAX_SCANS: usize = 100;

/// Decodes a JPEG to 8-bit RGB, refusing an oversized one from its header.
pub fn decode(encoded: &[u8]) -> Result<RgbImage, ImageError> {
    // The library reports a fatal error by unwinding out of the C code; it ends here.
    catch_unwind(AssertUnwindSafe(|| decode_unguarded(encoded))).unwrap_or_else(|panic| {
        let message = (panic.downcast_ref::<String>().cloned())
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "the JPEG decoder failed".into());
        Err(ImageError::Corrupt(
            message
                .trim_start_matches("libjpeg fatal error: ")
                .to_string(),
        ))
    })
}

fn decode_unguarded(encoded: &[u8]) -> Result<RgbImage, ImageError> {
    // libjpeg pads a truncated scan with grey and only warns; PIL refuses such a file, and so do
    // we: a whole JPEG ends with its end-of-image marker (possibly followed by other bytes).
    if !encoded.windows(2).any(|pair| pair == [0xFF, 0xD9]) {
        return Err(ImageError::Corrupt(
            "the JPEG data ends early (no end-of-image marker)".into(),
        ));
    }
    // Each scan of a progressive JPEG is a pass over the whole image: thousands of tiny scans
    // cost minutes. Start-of-scan markers cannot hide in the coded data (0xFF is stuffed there).
    let scans = encoded
        .windows(2)
        .filter(|pair| *pair == [0xFF, 0xDA])
        .count();
    if scans > MAX_SCANS {
        return Err(ImageError::Corrupt(format!(
            "the JPEG has {scans} scans, over the limit of {MAX_SCANS}"
        )));
    }
    let corrupt = |e: std::io::Error| ImageError::Corrupt(e.to_string());
    let mut header = Decompress::new_mem(encoded).map_err(corrupt)?;
    let (width, height) = header.size();
    check_size(
        u32::try_from(width).unwrap_or(u32::MAX),
        u32::try_from(height).unwrap_or(u32::MAX),
    )?;
    // libjpeg's defaults, named: PIL decodes with them.
    header.dct_method(DctMethod::IntegerSlow);
    header.do_fancy_upsampling(true);
    let mut started = header.rgb().map_err(corrupt)?;
    let pixels = started.read_scanlines::<u8>().map_err(corrupt)?;
    if pixels.len() != width * height * 3 {
        return Err(ImageError::Corrupt("the image data ends early".into()));
    }
    started.finish().map_err(corrupt)?;
    RgbImage::from_raw(width as u32, height as u32, pixels)
        .ok_or_else(|| ImageError::Corrupt("the image data ends early".into()))
}
