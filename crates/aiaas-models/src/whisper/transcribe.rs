//! From audio to timed text, as faster-whisper's `transcribe` does it: the audio's mel frames
//! are cut into 30 s windows; each is encoded, and the decoder writes its text with timestamp
//! tokens that close segments; the next window starts where the last complete segment ended.

use std::sync::atomic::{AtomicBool, Ordering};

use rand::distr::{weighted::WeightedIndex, Distribution};
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::encoder::{OUTPUTS, WINDOW_FRAMES};
use super::mel::{Mel, HOP, SAMPLE_RATE};
use super::{SpecialTokens, Whisper};
use crate::fast_math;
use crate::{ModelError, Result};

/// Seconds per timestamp step: an encoder output covers two mel frames of 10 ms.
const TIME_PRECISION: f64 = 0.02;
/// Mel frames per timestamp step.
const FRAMES_PER_TIMESTAMP: usize = WINDOW_FRAMES / OUTPUTS;
/// The first timestamp may be at most this many steps in (1 s).
const MAX_INITIAL_TIMESTAMP: u32 = 50;
/// A window whose no-speech probability is above this, and whose tokens are improbable (their
/// mean log-probability below `LOG_PROB_THRESHOLD`) or hold no word, is silence: it yields no
/// text. (The second test is ours: on faint noise Whisper writes confident runs of ". . ."
/// that faster-whisper keeps.)
const NO_SPEECH_THRESHOLD: f32 = 0.6;
const LOG_PROB_THRESHOLD: f32 = -1.0;
/// Above this temperature, a window's text is not carried into the next one's prompt.
const PROMPT_RESET_TEMPERATURE: f32 = 0.5;
/// The seed of each window's sampling.
const SAMPLING_SEED: u64 = 0x5EED;
/// A window's text that compresses better than this (zlib) is a repetition loop.
const COMPRESSION_RATIO_THRESHOLD: f32 = 2.4;
/// The temperatures a window is decoded at when the request asks for 0, each tried when the
/// one before gave a repetition loop or improbable text (OpenAI's and faster-whisper's rule).
const FALLBACK_TEMPERATURES: [f32; 6] = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0];

/// Transcribe in the spoken language, or translate into English.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Task {
    #[default]
    Transcribe,
    Translate,
}

#[derive(Debug, Clone, Default)]
pub struct TranscribeOptions {
    /// The spoken language's code (`en`, `de` ...); detected from the first window if `None`.
    pub language: Option<String>,
    pub task: Task,
    /// Text that comes before the audio: names, spelling, style.
    pub prompt: Option<String>,
    /// 0 writes the most probable token each time, and samples at rising temperatures a window
    /// whose text loops or is improbable; above 0, tokens are sampled at this temperature.
    pub temperature: f32,
    /// Whether each window's prompt carries the text of the windows before it.
    pub condition_on_previous_text: bool,
}

/// A stretch of speech and its text.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// Seconds from the start of the audio.
    pub start: f64,
    pub end: f64,
    pub text: String,
    pub tokens: Vec<u32>,
    /// The mean log-probability of the window's tokens.
    pub avg_logprob: f32,
    /// The probability that the window holds no speech.
    pub no_speech_prob: f32,
    /// The temperature the window's text was written at.
    pub temperature: f32,
    /// How well the window's text compresses (zlib): high for repetition loops.
    pub compression_ratio: f32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Transcript {
    pub language: String,
    /// The audio's length in seconds.
    pub duration: f64,
    pub segments: Vec<Segment>,
}

impl Transcript {
    /// The segments' text, joined.
    pub fn text(&self) -> String {
        let text: String = self.segments.iter().map(|s| s.text.as_str()).collect();
        text.trim().to_string()
    }
}

/// One window's decoding.
struct Decoded {
    /// The written tokens, timestamps included, the end of text not.
    tokens: Vec<u32>,
    avg_logprob: f32,
    no_speech_prob: f32,
    temperature: f32,
    compression_ratio: f32,
}

impl Decoded {
    /// Whether the window holds no speech: a likely silence whose text is improbable.
    fn is_silence(&self) -> bool {
        self.no_speech_prob > NO_SPEECH_THRESHOLD && self.avg_logprob < LOG_PROB_THRESHOLD
    }

    /// Whether the text should be written again at a higher temperature.
    fn needs_fallback(&self) -> bool {
        let poor = self.compression_ratio > COMPRESSION_RATIO_THRESHOLD
            || self.avg_logprob < LOG_PROB_THRESHOLD;
        poor && !self.is_silence()
    }
}

impl Whisper {
    /// The speech in `samples` (mono, 16 kHz, in [-1, 1]) as timed text.
    pub fn transcribe(&self, samples: &[f32], options: &TranscribeOptions) -> Result<Transcript> {
        let never = AtomicBool::new(false);
        let (transcript, _) = self.transcribe_until(samples, options, &never)?;
        Ok(transcript)
    }

    /// `transcribe`, cut short before the next 30-second window once `cancelled` is set (a
    /// request whose client went away stops costing the server within a window): the segments
    /// so far, and the seconds of audio the windows covered (all of it if not cut short).
    pub fn transcribe_until(
        &self,
        samples: &[f32],
        options: &TranscribeOptions,
        cancelled: &AtomicBool,
    ) -> Result<(Transcript, f64)> {
        let mel = Mel::new(samples);
        // The last frame covers the padding only.
        let content_frames = mel.frames - 1;
        let duration = samples.len() as f64 / SAMPLE_RATE as f64;
        let mut language = options.language.clone();
        let mut previous: Vec<u32> = match &options.prompt {
            Some(prompt) if !prompt.trim().is_empty() => {
                self.encode(&format!(" {}", prompt.trim()))?
            }
            _ => Vec::new(),
        };
        let mut prompt_reset_since = 0;
        let mut segments = Vec::new();
        let mut seek = 0;
        let mut covered = duration;
        while seek < content_frames {
            if cancelled.load(Ordering::Relaxed) {
                covered = (seek * HOP) as f64 / SAMPLE_RATE as f64;
                break;
            }
            let time_offset = (seek * HOP) as f64 / SAMPLE_RATE as f64;
            let window_frames = WINDOW_FRAMES.min(content_frames - seek);
            let encoded = self
                .encoder
                .forward(&mel.window(seek, window_frames, WINDOW_FRAMES))?;
            let language = match &language {
                Some(code) => code.clone(),
                None => language.insert(self.detect_language(&encoded)).clone(),
            };
            let mut prompt = Vec::new();
            let carried = &previous[prompt_reset_since..];
            if !carried.is_empty() {
                let room = self.decoder.max_tokens() / 2 - 1;
                prompt.push(self.special.start_of_previous);
                prompt.extend_from_slice(&carried[carried.len().saturating_sub(room)..]);
            }
            prompt.extend(self.start_sequence(&language, options.task)?);
            let decoded = self.decode_with_fallback(&encoded, &prompt, options.temperature)?;
            if decoded.is_silence()
                || (decoded.no_speech_prob > NO_SPEECH_THRESHOLD
                    && !self.has_words(&decoded.tokens)?)
            {
                seek += window_frames;
                continue;
            }
            let (pieces, next_seek) = split_at_timestamps(
                &decoded.tokens,
                seek,
                window_frames,
                self.special.timestamp_begin,
            );
            seek = next_seek;
            for (start, end, tokens) in pieces {
                let text = self.decode_text(&tokens)?;
                if start == end || text.trim().is_empty() {
                    continue;
                }
                previous.extend_from_slice(&tokens);
                segments.push(Segment {
                    start: time_offset + start,
                    end: time_offset + end,
                    text,
                    tokens,
                    avg_logprob: decoded.avg_logprob,
                    no_speech_prob: decoded.no_speech_prob,
                    temperature: decoded.temperature,
                    compression_ratio: decoded.compression_ratio,
                });
            }
            if !options.condition_on_previous_text || decoded.temperature > PROMPT_RESET_TEMPERATURE
            {
                prompt_reset_since = previous.len();
            }
        }
        let transcript = Transcript {
            language: language.unwrap_or_else(|| "en".into()),
            duration,
            segments,
        };
        Ok((transcript, covered))
    }

    /// `<|startoftranscript|>`, then for a multilingual model the language and the task.
    fn start_sequence(&self, language: &str, task: Task) -> Result<Vec<u32>> {
        let mut sequence = vec![self.special.start_of_transcript];
        if self.is_multilingual() {
            let id = (self.languages.iter())
                .find(|(code, _)| code == language)
                .map(|(_, id)| *id)
                .ok_or_else(|| ModelError::Format(format!("unknown language `{language}`")))?;
            sequence.push(id);
            sequence.push(match task {
                Task::Transcribe => self.special.transcribe,
                Task::Translate => self.special.translate,
            });
        }
        Ok(sequence)
    }

    /// The most probable language token after `<|startoftranscript|>`.
    fn detect_language(&self, encoded: &[f32]) -> String {
        if !self.is_multilingual() {
            return "en".into();
        }
        let mut state = self.decoder.start(encoded);
        let hidden = self
            .decoder
            .step(&mut state, &[self.special.start_of_transcript]);
        let logits = self.decoder.logits(&hidden);
        let (code, _) = (self.languages.iter())
            .max_by(|(_, a), (_, b)| logits[*a as usize].total_cmp(&logits[*b as usize]))
            .expect("a multilingual model has languages");
        code.clone()
    }

    /// Decodes a window at `temperature`; at 0, again at each higher fallback temperature while
    /// the text loops or is improbable, keeping the first good result, or else the most
    /// probable of those that do not loop (of all, if every one loops).
    fn decode_with_fallback(
        &self,
        encoded: &[f32],
        prompt: &[u32],
        temperature: f32,
    ) -> Result<Decoded> {
        let temperatures = if temperature == 0.0 {
            &FALLBACK_TEMPERATURES[..]
        } else {
            std::slice::from_ref(&temperature)
        };
        let mut tried = Vec::new();
        for &temperature in temperatures {
            let decoded = self.decode_window(encoded, prompt, temperature)?;
            if !decoded.needs_fallback() {
                return Ok(decoded);
            }
            tried.push(decoded);
        }
        let not_looping = (tried.iter())
            .filter(|d| d.compression_ratio <= COMPRESSION_RATIO_THRESHOLD)
            .count();
        let mut best = (tried.into_iter())
            .filter(|d| not_looping == 0 || d.compression_ratio <= COMPRESSION_RATIO_THRESHOLD)
            .max_by(|a, b| a.avg_logprob.total_cmp(&b.avg_logprob))
            .expect("at least one temperature is tried");
        // As faster-whisper: the window counts as written at the last temperature tried, so
        // that its doubtful text is not carried into the next window's prompt.
        best.temperature = *temperatures.last().expect("at least one temperature");
        Ok(best)
    }

    /// Writes one window's tokens after `prompt`, until the end of text or the window's room.
    fn decode_window(&self, encoded: &[f32], prompt: &[u32], temperature: f32) -> Result<Decoded> {
        let special = &self.special;
        let mut state = self.decoder.start(encoded);
        let hidden = self.decoder.step(&mut state, prompt);
        let width = hidden.len() / prompt.len();
        let start_at = (prompt.iter())
            .position(|&t| t == special.start_of_transcript)
            .expect("prompts hold the start of transcript");
        let no_speech_prob = {
            let logits = self.decoder.logits(&hidden[start_at * width..][..width]);
            softmax(&logits)[special.no_speech as usize]
        };
        let mut logits = self.decoder.logits(&hidden[hidden.len() - width..]);
        let mut tokens = Vec::new();
        let mut total_logprob = 0.0;
        let room = self.decoder.max_tokens() - prompt.len();
        // Seeded: the same audio and options give the same text, sampled or not.
        let mut rng = StdRng::seed_from_u64(SAMPLING_SEED);
        loop {
            let logprobs = self.constrain(&mut logits, &tokens);
            let token = if temperature > 0.0 {
                let max = fast_math::max(&logits);
                let weights = logits.iter().map(|l| ((l - max) / temperature).exp());
                match WeightedIndex::new(weights) {
                    Ok(distribution) => distribution.sample(&mut rng) as u32,
                    Err(_) => argmax(&logits),
                }
            } else {
                argmax(&logits)
            };
            total_logprob += logprobs[token as usize];
            if token == special.end_of_text || tokens.len() + 1 >= room {
                break;
            }
            tokens.push(token);
            let hidden = self.decoder.step(&mut state, &[token]);
            logits = self.decoder.logits(&hidden);
        }
        Ok(Decoded {
            avg_logprob: total_logprob / (tokens.len() + 1) as f32,
            compression_ratio: compression_ratio(self.decode_text(&tokens)?.trim()),
            tokens,
            no_speech_prob,
            temperature,
        })
    }

    /// Sets to minus infinity the scores of tokens that may not come next: suppressed tokens,
    /// and what the timestamp rules forbid (faster-whisper's and OpenAI Whisper's: text opens
    /// with a timestamp of at most 1 s; timestamps come in pairs that close a segment and open
    /// the next, and never go back; when timestamps together are likelier than any text token,
    /// a timestamp comes next).
    /// Returns the log-probabilities of what remains allowed.
    fn constrain(&self, logits: &mut [f32], written: &[u32]) -> Vec<f32> {
        let SpecialTokens {
            end_of_text,
            no_timestamps,
            timestamp_begin,
            ..
        } = self.special;
        let (eot, begin) = (end_of_text as usize, timestamp_begin as usize);
        let mut forbid = |range: std::ops::Range<usize>| {
            let end = range.end.min(logits.len());
            logits[range.start.min(end)..end].fill(f32::NEG_INFINITY);
        };
        for &token in &self.suppressed {
            forbid(token as usize..token as usize + 1);
        }
        forbid(no_timestamps as usize..no_timestamps as usize + 1);
        let is_timestamp = |t: &u32| *t >= timestamp_begin;
        match written {
            [] => {
                for &token in &self.suppressed_at_begin {
                    forbid(token as usize..token as usize + 1);
                }
                forbid(0..begin);
                forbid(begin + MAX_INITIAL_TIMESTAMP as usize + 1..usize::MAX);
            }
            [.., last] => {
                let last_was_timestamp = is_timestamp(last);
                let penultimate_was_timestamp =
                    written.len() < 2 || is_timestamp(&written[written.len() - 2]);
                if last_was_timestamp {
                    if penultimate_was_timestamp {
                        forbid(begin..usize::MAX);
                    } else {
                        forbid(0..eot);
                    }
                }
                if let Some(&latest) = written.iter().rev().find(|t| is_timestamp(t)) {
                    let latest = latest as usize;
                    let limit = match last_was_timestamp && !penultimate_was_timestamp {
                        true => latest,
                        false => latest + 1,
                    };
                    forbid(begin..limit);
                }
            }
        }
        let logprobs = log_softmax(logits);
        let begin = begin.min(logprobs.len());
        let timestamps = log_sum_exp(&logprobs[begin..]);
        if timestamps > fast_math::max(&logprobs[..begin]) {
            logits[..begin].fill(f32::NEG_INFINITY);
            return log_softmax(logits);
        }
        logprobs
    }

    /// Whether the text of `tokens` holds a letter or a digit.
    fn has_words(&self, tokens: &[u32]) -> Result<bool> {
        Ok(self.decode_text(tokens)?.chars().any(char::is_alphanumeric))
    }

    /// The tokens of a prompt's text; special tokens typed into it are left out, so that a
    /// prompt cannot end the text or move the start of the transcript.
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = (self.tokenizer.encode(text, false))
            .map_err(|e| ModelError::Format(format!("tokenizing the prompt: {e}")))?;
        let text_tokens = encoding.get_ids().iter().copied();
        Ok(text_tokens
            .filter(|&t| t < self.special.end_of_text)
            .collect())
    }

    /// The text of `tokens`, timestamps and control tokens left out.
    fn decode_text(&self, tokens: &[u32]) -> Result<String> {
        let text: Vec<u32> = (tokens.iter())
            .copied()
            .filter(|&t| t < self.special.end_of_text)
            .collect();
        (self.tokenizer.decode(&text, false))
            .map_err(|e| ModelError::Format(format!("decoding tokens: {e}")))
    }
}

/// A window's tokens cut into segments at each pair of timestamps: `(start, end, tokens)`
/// with times in seconds from the window's start; and where the next window starts.
/// When the text ends inside a segment, that segment is dropped and the next window starts at
/// its opening timestamp, to hear it whole.
fn split_at_timestamps(
    tokens: &[u32],
    seek: usize,
    window_frames: usize,
    timestamp_begin: u32,
) -> (Vec<(f64, f64, Vec<u32>)>, usize) {
    let is_timestamp = |t: u32| t >= timestamp_begin;
    let seconds = |t: u32| t.saturating_sub(timestamp_begin) as f64 * TIME_PRECISION;
    let single_timestamp_ending = tokens.len() >= 2
        && !is_timestamp(tokens[tokens.len() - 2])
        && is_timestamp(tokens[tokens.len() - 1]);
    let mut cuts: Vec<usize> = (1..tokens.len())
        .filter(|&i| is_timestamp(tokens[i]) && is_timestamp(tokens[i - 1]))
        .collect();
    if cuts.is_empty() {
        // No closed segment: the whole window is one, ending at its last timestamp if any.
        let last = tokens
            .iter()
            .rev()
            .copied()
            .find(|&t| is_timestamp(t) && t != timestamp_begin);
        let window_seconds = (window_frames * HOP) as f64 / SAMPLE_RATE as f64;
        let end = last.map_or(window_seconds, seconds);
        return (vec![(0.0, end, tokens.to_vec())], seek + window_frames);
    }
    if single_timestamp_ending {
        cuts.push(tokens.len());
    }
    let mut pieces = Vec::new();
    let mut from = 0;
    for &cut in &cuts {
        let piece = &tokens[from..cut];
        pieces.push((
            seconds(piece[0]),
            seconds(piece[piece.len() - 1]),
            piece.to_vec(),
        ));
        from = cut;
    }
    let next = if single_timestamp_ending {
        seek + window_frames
    } else {
        let last_timestamp = tokens[from - 1] - timestamp_begin;
        seek + last_timestamp as usize * FRAMES_PER_TIMESTAMP
    };
    (pieces, next)
}

/// The text's length over its zlib-compressed length (as Python's `zlib.compress` at its
/// default level makes it): a text that repeats itself compresses far better than speech.
fn compression_ratio(text: &str) -> f32 {
    use std::io::Write;
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    encoder
        .write_all(text.as_bytes())
        .expect("writing to memory");
    let compressed = encoder.finish().expect("writing to memory");
    text.len() as f32 / compressed.len() as f32
}

fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best as u32
}

fn log_sum_exp(values: &[f32]) -> f32 {
    let max = fast_math::max(values);
    if max == f32::NEG_INFINITY {
        return max;
    }
    max + values.iter().map(|v| (v - max).exp()).sum::<f32>().ln()
}

fn log_softmax(values: &[f32]) -> Vec<f32> {
    let total = log_sum_exp(values);
    values.iter().map(|v| v - total).collect()
}

fn softmax(values: &[f32]) -> Vec<f32> {
    log_softmax(values).into_iter().map(f32::exp).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEGIN: u32 = 100;

    #[test]
    fn repetition_loops_compress_far_better_than_speech() {
        let speech = "He might even have been made amiable himself.";
        assert!(
            compression_ratio(speech) < 1.2,
            "{}",
            compression_ratio(speech)
        );
        let looping = "I'm going to go to the store. ".repeat(10);
        assert!(compression_ratio(&looping) > COMPRESSION_RATIO_THRESHOLD);
    }

    #[test]
    fn closed_segments_are_cut_at_timestamp_pairs() {
        // <0.00> a b <1.00><1.00> c <2.50><eot>: two segments; the window was all heard.
        let tokens = [BEGIN, 1, 2, BEGIN + 50, BEGIN + 50, 3, BEGIN + 125];
        let (pieces, next) = split_at_timestamps(&tokens, 0, 3000, BEGIN);
        assert_eq!(pieces.len(), 2);
        assert_eq!((pieces[0].0, pieces[0].1), (0.0, 1.0));
        assert_eq!((pieces[1].0, pieces[1].1), (1.0, 2.5));
        assert_eq!(next, 3000);
    }

    #[test]
    fn an_unfinished_segment_is_heard_again_in_the_next_window() {
        // <0.00> a <4.00><4.00> b (cut off): the next window starts at 4 s.
        let tokens = [BEGIN, 1, BEGIN + 200, BEGIN + 200, 2];
        let (pieces, next) = split_at_timestamps(&tokens, 1000, 3000, BEGIN);
        assert_eq!(pieces, vec![(0.0, 4.0, vec![BEGIN, 1, BEGIN + 200])]);
        assert_eq!(next, 1000 + 400);
    }
}
