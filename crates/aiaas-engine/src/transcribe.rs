//! Speech-to-text models: a loaded Whisper, fed one transcription at a time (each already uses
//! every core), with a bounded number of requests waiting behind it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use aiaas_models::audio::{self, Audio};
use aiaas_models::whisper::mel::SAMPLE_RATE;
use aiaas_models::whisper::{Task, TranscribeOptions, Transcript};
use aiaas_models::Whisper;
use tokio::sync::Semaphore;

use crate::in_use::InUse;
use crate::metrics::ModelMetrics;
use crate::{EngineError, ModelManifest, Result};

/// The longest audio one request may carry, decoded (OpenAI's 25 MB upload of compressed
/// audio can hold hours): two hours keep one request's samples and features near 2 GB at most.
pub const MAX_AUDIO_SECONDS: u64 = 2 * 60 * 60;

#[derive(Debug, Clone, Copy)]
pub struct TranscribeLimits {
    /// Requests that may wait (decoding or queued) before new ones are refused.
    pub max_queued: usize,
}

impl Default for TranscribeLimits {
    fn default() -> Self {
        Self { max_queued: 16 }
    }
}

/// A flag set when this is dropped: held by a request's handler, whose future is dropped when
/// its client goes away, while the transcription runs in a task of its own (to be metered).
#[derive(Default)]
pub struct CancelOnDrop(Arc<AtomicBool>);

impl CancelOnDrop {
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.0.clone()
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// An uploaded audio file and what to do with it.
pub struct TranscriptionJob {
    pub file: Vec<u8>,
    /// The upload's file name extension (`wav`, `mp3` ...), a hint for the container.
    pub extension: Option<String>,
    pub options: TranscribeOptions,
}

/// The transcript and the seconds of audio it covers, which is what the request is billed by
/// (less than the audio's length only where the transcription was cancelled).
pub struct Transcription {
    pub transcript: Transcript,
    pub audio_seconds: f64,
}

pub struct LoadedTranscriber {
    pub manifest: ModelManifest,
    model: Arc<Whisper>,
    in_use: InUse,
    metrics: ModelMetrics,
    /// Places for requests in hand (running or waiting).
    places: Arc<Semaphore>,
    /// The one transcription running at a time.
    running: Arc<Semaphore>,
}

impl LoadedTranscriber {
    pub fn load(
        manifest: ModelManifest,
        dir: &std::path::Path,
        limits: TranscribeLimits,
        metrics: ModelMetrics,
    ) -> Result<Self> {
        let started = std::time::Instant::now();
        let model = Arc::new(Whisper::load(dir)?);
        tracing::info!(model = %manifest.id, elapsed_ms = started.elapsed().as_millis() as u64, "model loaded");
        Ok(Self {
            manifest,
            model,
            in_use: InUse::default(),
            metrics,
            places: Arc::new(Semaphore::new(limits.max_queued.max(1))),
            running: Arc::new(Semaphore::new(1)),
        })
    }

    pub(crate) fn in_use(&self) -> &InUse {
        &self.in_use
    }

    /// Whether the model translates (a multilingual one) as well as transcribes.
    pub fn is_multilingual(&self) -> bool {
        self.model.is_multilingual()
    }

    /// Decodes the upload and transcribes it, until `cancelled` is set (see `CancelOnDrop`).
    /// Bad audio and options are `InvalidRequest`s naming the field; a full queue is
    /// `Overloaded`.
    pub async fn transcribe(
        &self,
        job: TranscriptionJob,
        cancelled: Arc<AtomicBool>,
    ) -> Result<Transcription> {
        let _in_use = self.in_use.enter();
        self.check(&job.options)?;
        let _place = (self.places.clone().try_acquire_owned())
            .map_err(|_| EngineError::Overloaded(self.manifest.id.clone()))?;
        self.metrics.queue_depth.inc();
        let running = self.running.clone().acquire_owned().await;
        self.metrics.queue_depth.dec();
        let running = running.map_err(|_| EngineError::Internal("the model closed".into()))?;
        let model = self.model.clone();
        let work = tokio::task::spawn_blocking(move || {
            // The work holds the running place until it ends, so that one whose future was
            // dropped never runs beside the next.
            let _running = running;
            let audio = decode(job.file, job.extension.as_deref())?;
            let (transcript, covered) =
                model.transcribe_until(&audio.samples, &job.options, &cancelled)?;
            Ok(Transcription {
                transcript,
                audio_seconds: covered,
            })
        });
        let transcription: Result<Transcription> = (work.await)
            .map_err(|e| EngineError::Internal(format!("the transcription failed: {e}")))?;
        let transcription = transcription?;
        let tokens: usize = (transcription.transcript.segments.iter())
            .map(|s| s.tokens.len())
            .sum();
        self.metrics.generated_tokens.inc_by(tokens as u64);
        Ok(transcription)
    }

    /// Options the model cannot honour, refused before any work.
    fn check(&self, options: &TranscribeOptions) -> Result<()> {
        let id = &self.manifest.id;
        if !self.model.is_multilingual() {
            if options.task == Task::Translate {
                return Err(EngineError::invalid(
                    "model",
                    format!("`{id}` is an English-only model and cannot translate; use a multilingual Whisper"),
                ));
            }
            if options.language.as_deref().is_some_and(|l| l != "en") {
                return Err(EngineError::invalid(
                    "language",
                    format!("`{id}` is an English-only model; `language` can only be `en`"),
                ));
            }
        } else if let Some(language) = &options.language {
            if !self.model.languages().any(|code| code == language) {
                return Err(EngineError::invalid(
                    "language",
                    format!("`{language}` is not a language `{id}` knows (ISO-639-1 codes such as `en`, `de`, `fr`)"),
                ));
            }
        }
        if !(0.0..=1.0).contains(&options.temperature) {
            return Err(EngineError::invalid(
                "temperature",
                "temperature must be between 0 and 1",
            ));
        }
        Ok(())
    }
}

fn decode(file: Vec<u8>, extension: Option<&str>) -> Result<Audio> {
    audio::decode(file, extension, SAMPLE_RATE as u32, MAX_AUDIO_SECONDS)
        .map_err(|e| EngineError::invalid("file", format!("{e}")))
}
