//! Whisper's input: the log-mel spectrogram of 16 kHz audio, as faster-whisper computes it
//! (`FeatureExtractor`): a 400-sample periodic Hann window every 160 samples over the audio
//! padded by 160 zeros and reflected by 200 at both ends, power spectra through 80 Slaney mel
//! filters, log10 clamped at 1e-10 and at 8 below the loudest value, then `(x + 4) / 4`.

use std::sync::Arc;

use rayon::prelude::*;
use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};

pub const SAMPLE_RATE: usize = 16_000;
pub const MEL_BINS: usize = 80;
const WINDOW: usize = 400;
pub const HOP: usize = 160;
const BINS: usize = WINDOW / 2 + 1;
/// The mel scale's value at 8 kHz, the highest frequency at 16 kHz.
const MAX_MEL: f64 = 45.245_640_471_924_965;

/// Mel frames, bin-major: `values[bin * frames + frame]`.
pub struct Mel {
    pub frames: usize,
    pub values: Vec<f32>,
}

impl Mel {
    /// The audio's spectrogram; one frame per 10 ms.
    pub fn new(samples: &[f32]) -> Self {
        let mut padded = samples.to_vec();
        padded.resize(samples.len() + HOP, 0.0);
        let reflected = reflect(&padded, WINDOW / 2);
        // The STFT yields one frame more than faster-whisper keeps (it drops the last).
        let frames = (reflected.len() - WINDOW) / HOP;
        let filters = filters();
        let window: Vec<f32> = (0..WINDOW)
            .map(|i| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / WINDOW as f64).cos())
            .map(|w| w as f32)
            .collect();
        let fft: Arc<dyn Fft<f32>> = FftPlanner::new().plan_fft_forward(WINDOW);
        const FRAMES_PER_TASK: usize = 64;
        let mut frame_major = vec![0f32; frames * MEL_BINS];
        frame_major
            .par_chunks_mut(FRAMES_PER_TASK * MEL_BINS)
            .enumerate()
            .for_each(|(task, out)| {
                let mut buffer = vec![Complex::default(); WINDOW];
                let mut scratch = vec![Complex::default(); fft.get_inplace_scratch_len()];
                let mut power = [0f32; BINS];
                for (i, mels) in out.chunks_exact_mut(MEL_BINS).enumerate() {
                    let start = (task * FRAMES_PER_TASK + i) * HOP;
                    let samples = &reflected[start..start + WINDOW];
                    for ((b, s), w) in buffer.iter_mut().zip(samples).zip(&window) {
                        *b = Complex::new(s * w, 0.0);
                    }
                    fft.process_with_scratch(&mut buffer, &mut scratch);
                    for (p, c) in power.iter_mut().zip(&buffer) {
                        *p = c.norm_sqr();
                    }
                    for (mel, filter) in mels.iter_mut().zip(filters.chunks_exact(BINS)) {
                        let energy: f32 = filter.iter().zip(&power).map(|(f, p)| f * p).sum();
                        *mel = energy.max(1e-10).log10();
                    }
                }
            });
        let loudest = frame_major
            .iter()
            .copied()
            .fold(f32::NEG_INFINITY, f32::max);
        let mut values = vec![0f32; frames * MEL_BINS];
        for (frame, mels) in frame_major.chunks_exact(MEL_BINS).enumerate() {
            for (bin, mel) in mels.iter().enumerate() {
                values[bin * frames + frame] = (mel.max(loudest - 8.0) + 4.0) / 4.0;
            }
        }
        Self { frames, values }
    }

    /// Frames `start..start + len` padded with zeros to `width` frames, bin-major.
    pub fn window(&self, start: usize, len: usize, width: usize) -> Vec<f32> {
        let mut out = vec![0f32; MEL_BINS * width];
        let len = len.min(width);
        for (bin, row) in out.chunks_exact_mut(width).enumerate() {
            row[..len].copy_from_slice(&self.values[bin * self.frames + start..][..len]);
        }
        out
    }
}

/// `samples` with `pad` samples mirrored onto each end (numpy's `reflect`: the edge sample is
/// not repeated). Short inputs are mirrored back and forth.
fn reflect(samples: &[f32], pad: usize) -> Vec<f32> {
    let n = samples.len() as isize;
    let period = (2 * (n - 1)).max(1);
    (-(pad as isize)..n + pad as isize)
        .map(|i| {
            let mut j = i.rem_euclid(period);
            if j >= n {
                j = period - j;
            }
            samples[j as usize]
        })
        .collect()
}

/// The 80 × 201 Slaney mel filterbank (librosa's `mel(sr=16000, n_fft=400, norm="slaney")`),
/// computed in f64 as numpy does and rounded once.
fn filters() -> Vec<f32> {
    let to_hz = |mel: f64| {
        let (f_sp, min_log_hz) = (200.0 / 3.0, 1000.0);
        let min_log_mel = min_log_hz / f_sp;
        if mel >= min_log_mel {
            min_log_hz * ((6.4f64).ln() / 27.0 * (mel - min_log_mel)).exp()
        } else {
            f_sp * mel
        }
    };
    let freqs: Vec<f64> = (0..MEL_BINS + 2)
        .map(|i| to_hz(MAX_MEL * i as f64 / (MEL_BINS + 1) as f64))
        .collect();
    let fft_freqs: Vec<f64> = (0..BINS)
        .map(|i| i as f64 * SAMPLE_RATE as f64 / WINDOW as f64)
        .collect();
    let mut weights = Vec::with_capacity(MEL_BINS * BINS);
    for m in 0..MEL_BINS {
        let norm = 2.0 / (freqs[m + 2] - freqs[m]);
        for f in &fft_freqs {
            let lower = (f - freqs[m]) / (freqs[m + 1] - freqs[m]);
            let upper = (freqs[m + 2] - f) / (freqs[m + 2] - freqs[m + 1]);
            weights.push((lower.min(upper).max(0.0) * norm) as f32);
        }
    }
    weights
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflection_mirrors_without_repeating_the_edge() {
        assert_eq!(
            reflect(&[1.0, 2.0, 3.0], 2),
            [3.0, 2.0, 1.0, 2.0, 3.0, 2.0, 1.0]
        );
    }

    #[test]
    fn a_tone_lights_the_mel_bins_around_its_frequency() {
        let tone: Vec<f32> = (0..SAMPLE_RATE)
            .map(|i| (2.0 * std::f32::consts::PI * 1000.0 * i as f32 / SAMPLE_RATE as f32).sin())
            .collect();
        let mel = Mel::new(&tone);
        // One frame per hop, and one more over the 160 samples of padding.
        assert_eq!(mel.frames, SAMPLE_RATE / HOP + 1);
        let frame = mel.frames / 2;
        let loudest = (0..MEL_BINS)
            .max_by(|&a, &b| {
                mel.values[a * mel.frames + frame].total_cmp(&mel.values[b * mel.frames + frame])
            })
            .unwrap();
        // 1 kHz is mel 15; filter m peaks at mel (m + 1) · MAX_MEL / 81: filter 26, at 15.08.
        assert_eq!(loudest, 26);
    }
}
