//! Audio files as speech models hear them: decoded (WAV of 8/16/24/32-bit integers or floats,
//! FLAC, MP3, OGG/Vorbis), mixed down to mono and resampled to the model's rate.

use std::io::Cursor;

use rubato::audioadapter_buffers::owned::InterleavedOwned;
use rubato::{Fft, FixedSync, Resampler};
use symphonia::core::codecs::audio::AudioDecoderOptions;
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, TrackType};
use symphonia::core::io::{MediaSourceStream, MediaSourceStreamOptions};
use symphonia::core::meta::MetadataOptions;

/// Why a file could not be turned into samples; each is the uploader's problem (a 4xx).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AudioError {
    #[error("the audio file is empty")]
    Empty,
    #[error("not an audio file this server reads (WAV, FLAC, MP3, OGG/Vorbis)")]
    Unrecognized,
    #[error("the file holds no audio track")]
    NoAudioTrack,
    #[error("the audio track holds no samples")]
    NoSamples,
    #[error("unsupported audio codec: {0}")]
    UnsupportedCodec(String),
    #[error("the audio is damaged or truncated: {0}")]
    Damaged(String),
    #[error("the audio is longer than the limit of {limit} s")]
    TooLong { limit: u64 },
    #[error("a sample rate of {0} Hz is outside the supported 1,000–384,000 Hz")]
    UnsupportedRate(u32),
}

/// The sample rates a file may have: beyond these lie crafted headers (a resampler from a rate
/// sharing no factor with the target would need memory in proportion to the rate).
const RATES: std::ops::RangeInclusive<u32> = 1_000..=384_000;
/// Samples kept per second of the limit, whatever the file's rate: what a 48 kHz recording
/// needs. A file of a higher rate may be proportionally shorter; memory stays bounded.
const SAMPLES_PER_LIMIT_SECOND: u64 = 48_000;

/// Mono samples in [-1, 1] at the rate asked for.
#[derive(Debug, Clone)]
pub struct Audio {
    pub samples: Vec<f32>,
    pub sample_rate: u32,
}

impl Audio {
    /// The length in seconds.
    pub fn duration(&self) -> f64 {
        self.samples.len() as f64 / self.sample_rate as f64
    }
}

/// Decodes `bytes` (any supported container; `extension`, such as `wav`, is a hint), mixes
/// the channels down to mono and resamples to `sample_rate`. Audio longer than `max_seconds`
/// is refused as soon as decoding reaches that length, so that a small file of a long
/// stretch of audio cannot take unbounded memory.
pub fn decode(
    bytes: Vec<u8>,
    extension: Option<&str>,
    sample_rate: u32,
    max_seconds: u64,
) -> Result<Audio, AudioError> {
    if bytes.is_empty() {
        return Err(AudioError::Empty);
    }
    let (mono, source_rate) = decode_mono(bytes, extension, max_seconds)?;
    let samples = resample(mono, source_rate, sample_rate)?;
    Ok(Audio {
        samples,
        sample_rate,
    })
}

/// The file's first audio track, channels averaged, at its own rate.
fn decode_mono(
    bytes: Vec<u8>,
    extension: Option<&str>,
    max_seconds: u64,
) -> Result<(Vec<f32>, u32), AudioError> {
    let source = MediaSourceStream::new(
        Box::new(Cursor::new(bytes)),
        MediaSourceStreamOptions::default(),
    );
    let mut hint = Hint::new();
    if let Some(extension) = extension {
        hint.with_extension(extension);
    }
    let mut format = symphonia::default::get_probe()
        .probe(
            &hint,
            source,
            FormatOptions::default(),
            MetadataOptions::default(),
        )
        .map_err(|e| match e {
            // No reader knows the container; otherwise a reader knew it and not its content.
            SymphoniaError::Unsupported(what) if what.contains("no suitable format reader") => {
                AudioError::Unrecognized
            }
            SymphoniaError::Unsupported(what) => AudioError::UnsupportedCodec(what.to_string()),
            other => AudioError::Damaged(other.to_string()),
        })?;
    let track = format
        .default_track(TrackType::Audio)
        .ok_or(AudioError::NoAudioTrack)?;
    let track_id = track.id;
    let params = (track.codec_params.as_ref())
        .and_then(|p| p.audio())
        .ok_or(AudioError::NoAudioTrack)?
        .clone();
    let mut decoder = symphonia::default::get_codecs()
        .make_audio_decoder(&params, &AudioDecoderOptions::default())
        .map_err(|e| AudioError::UnsupportedCodec(e.to_string()))?;
    let mut rate = params.sample_rate;
    let mut mono = Vec::new();
    let mut interleaved: Vec<f32> = Vec::new();
    loop {
        let packet = match format.next_packet() {
            Ok(Some(packet)) => packet,
            Ok(None) => break,
            Err(SymphoniaError::IoError(e)) => {
                return Err(AudioError::Damaged(format!("the file ends early ({e})")))
            }
            Err(e) => return Err(AudioError::Damaged(e.to_string())),
        };
        if packet.track_id != track_id {
            continue;
        }
        let buffer = (decoder.decode(&packet)).map_err(|e| AudioError::Damaged(e.to_string()))?;
        let spec = buffer.spec();
        let channels = spec.channels().count().max(1);
        if !RATES.contains(&spec.rate()) {
            return Err(AudioError::UnsupportedRate(spec.rate()));
        }
        rate = Some(spec.rate());
        buffer.copy_to_vec_interleaved(&mut interleaved);
        // Float files can carry NaN or infinite samples, which would poison every feature
        // after them: they are heard as silence; samples beyond full scale are clipped, as a
        // converter would.
        mono.extend((interleaved.chunks_exact(channels)).map(|frame| {
            let mixed = frame.iter().sum::<f32>() / channels as f32;
            if mixed.is_finite() {
                mixed.clamp(-1.0, 1.0)
            } else {
                0.0
            }
        }));
        let limit = max_seconds * u64::from(spec.rate()).min(SAMPLES_PER_LIMIT_SECOND);
        if mono.len() as u64 > limit {
            return Err(AudioError::TooLong { limit: max_seconds });
        }
    }
    let rate = rate.filter(|&r| r > 0).ok_or(AudioError::NoAudioTrack)?;
    if mono.is_empty() {
        return Err(AudioError::NoSamples);
    }
    Ok((mono, rate))
}

/// `samples` at `from` Hz resampled to `to` Hz with a band-limited (FFT) resampler.
fn resample(samples: Vec<f32>, from: u32, to: u32) -> Result<Vec<f32>, AudioError> {
    if from == to || samples.is_empty() {
        return Ok(samples);
    }
    let frames = samples.len();
    let mut resampler = Fft::<f32>::new(from as usize, to as usize, 1024, 1, FixedSync::Input)
        .map_err(|e| AudioError::UnsupportedCodec(format!("a sample rate of {from} Hz: {e}")))?;
    let input = InterleavedOwned::new_from(samples, 1, frames).expect("one channel");
    let output = (resampler.process_all(&input, frames, None))
        .map_err(|e| AudioError::Damaged(format!("resampling: {e}")))?;
    Ok(output.take_data())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A RIFF/WAVE file of one format: `format` 1 (integers) or 3 (floats).
    fn wav(format: u16, bits: u16, channels: u16, rate: u32, data: &[u8]) -> Vec<u8> {
        let block = channels * bits / 8;
        let mut out = Vec::new();
        out.extend(b"RIFF");
        out.extend((36 + data.len() as u32).to_le_bytes());
        out.extend(b"WAVEfmt ");
        out.extend(16u32.to_le_bytes());
        out.extend(format.to_le_bytes());
        out.extend(channels.to_le_bytes());
        out.extend(rate.to_le_bytes());
        out.extend(rate.wrapping_mul(u32::from(block)).to_le_bytes());
        out.extend(block.to_le_bytes());
        out.extend(bits.to_le_bytes());
        out.extend(b"data");
        out.extend((data.len() as u32).to_le_bytes());
        out.extend(data);
        out
    }

    fn tone(rate: u32, seconds: f32) -> Vec<f32> {
        let count = (rate as f32 * seconds) as usize;
        (0..count)
            .map(|i| 0.5 * (2.0 * std::f32::consts::PI * 440.0 * i as f32 / rate as f32).sin())
            .collect()
    }

    #[test]
    fn integer_and_float_wavs_of_any_rate_come_out_mono_at_16_khz() {
        let samples = tone(44_100, 1.0);
        let pcm16: Vec<u8> = (samples.iter())
            .flat_map(|s| {
                let v = (s * 32767.0) as i16;
                // Two channels: the tone and its negation average to silence; use the same.
                [v.to_le_bytes(), v.to_le_bytes()].concat()
            })
            .collect();
        let float: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        let pcm24: Vec<u8> = (samples.iter())
            .flat_map(|s| ((s * 8_388_607.0) as i32).to_le_bytes()[..3].to_vec())
            .collect();
        for (file, what) in [
            (wav(1, 16, 2, 44_100, &pcm16), "16-bit stereo"),
            (wav(3, 32, 1, 44_100, &float), "float mono"),
            (wav(1, 24, 1, 44_100, &pcm24), "24-bit mono"),
        ] {
            let audio = decode(file, Some("wav"), 16_000, 60).unwrap();
            assert!(
                (audio.duration() - 1.0).abs() < 0.01,
                "{what}: {} s",
                audio.duration()
            );
            let peak = audio.samples.iter().fold(0f32, |m, s| m.max(s.abs()));
            assert!((peak - 0.5).abs() < 0.02, "{what}: peak {peak}");
        }
    }

    #[test]
    fn bad_files_are_errors_not_panics() {
        assert_eq!(
            decode(Vec::new(), None, 16_000, 60).unwrap_err(),
            AudioError::Empty
        );
        let text = b"this is not audio at all, just some text".to_vec();
        assert_eq!(
            decode(text, Some("wav"), 16_000, 60).unwrap_err(),
            AudioError::Unrecognized
        );
        let data: Vec<u8> = tone(16_000, 1.0)
            .iter()
            .flat_map(|s| ((s * 32767.0) as i16).to_le_bytes())
            .collect();
        let whole = wav(1, 16, 1, 16_000, &data);
        // Cut anywhere: an error, never a panic or a silently shorter recording.
        for len in [4, 12, 30, 44, 100, whole.len() / 2, whole.len() - 200] {
            let cut = decode(whole[..len].to_vec(), Some("wav"), 16_000, 60);
            assert!(
                cut.is_err(),
                "cut at {len} of {}: {:?}",
                whole.len(),
                cut.map(|a| a.duration())
            );
        }
        let long = decode(whole, Some("wav"), 16_000, 0).unwrap_err();
        assert_eq!(long, AudioError::TooLong { limit: 0 });
        let no_samples = decode(wav(1, 16, 1, 16_000, &[]), Some("wav"), 16_000, 60);
        assert_eq!(no_samples.unwrap_err(), AudioError::NoSamples);
    }

    #[test]
    fn non_finite_float_samples_are_silence_and_loud_ones_are_clipped() {
        let samples = [0.25f32, f32::NAN, f32::INFINITY, -0.25, 1e30];
        let data: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        let audio = decode(wav(3, 32, 1, 16_000, &data), Some("wav"), 16_000, 60).unwrap();
        assert_eq!(audio.samples, [0.25, 0.0, 0.0, -0.25, 1.0]);
    }

    #[test]
    fn a_crafted_sample_rate_is_refused_before_any_work() {
        let data = 1000i16.to_le_bytes();
        let file = wav(1, 16, 1, 4_294_967_291, &data);
        let error = decode(file, Some("wav"), 16_000, 60).unwrap_err();
        assert_eq!(error, AudioError::UnsupportedRate(4_294_967_291));
    }
}
