//! `POST /v1/audio/transcriptions` and `/v1/audio/translations`: speech to text, as OpenAI's
//! audio API takes it (a multipart form: `file`, `model`, `language`, `prompt`, `temperature`,
//! `response_format`) and answers it (`json`, `text`, `srt`, `vtt`, `verbose_json`).

use std::sync::Arc;
use std::time::Instant;

use aiaas_engine::transcribe::Transcription;
use aiaas_engine::{CancelOnDrop, EngineError, LoadedTranscriber, TranscriptionJob};
use aiaas_models::whisper::{Task, TranscribeOptions};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde_json::{json, Value};

use super::params::{multipart_error, AppMultipart};
use super::ApiError;
use crate::gate::{Meter, Metered, Usage};
use crate::store::KeyRecord;
use crate::telemetry::ModelLabel;
use crate::AppState;

/// OpenAI's limit on an audio upload.
pub const MAX_AUDIO_BYTES: usize = 25 * 1024 * 1024;

/// How the text comes back.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Text,
    Srt,
    Vtt,
    VerboseJson,
}

impl Format {
    fn parse(name: &str) -> Result<Self, ApiError> {
        Ok(match name {
            "json" => Self::Json,
            "text" => Self::Text,
            "srt" => Self::Srt,
            "vtt" => Self::Vtt,
            "verbose_json" => Self::VerboseJson,
            other => {
                return Err(ApiError::invalid(
                    "response_format",
                    format!(
                        "response_format must be one of json, text, srt, verbose_json, vtt; \
                         got `{other}`"
                    ),
                ))
            }
        })
    }
}

/// The multipart form (for the API document).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct AudioForm {
    /// The audio: WAV, FLAC, MP3 or OGG/Vorbis, any rate, mono or stereo; at most 25 MB.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
    #[schema(example = "whisper-tiny.en")]
    model: String,
    /// The spoken language (ISO-639-1, e.g. `en`); detected when absent.
    language: Option<String>,
    /// Text that precedes the audio: names, spelling, style.
    prompt: Option<String>,
    /// `json` (default), `text`, `srt`, `verbose_json` or `vtt`.
    response_format: Option<String>,
    /// 0 (default) for the most likely text; up to 1 samples.
    temperature: Option<f32>,
}

/// A request's fields, read from the form.
struct AudioRequest {
    file: Vec<u8>,
    extension: Option<String>,
    model: String,
    format: Format,
    options: TranscribeOptions,
}

/// Speech to text in the spoken language.
#[utoipa::path(post, path = "/audio/transcriptions", tag = "openai",
    request_body(content = AudioForm, content_type = "multipart/form-data"),
    responses((status = 200, description = "The transcript, in the asked format",
        body = serde_json::Value)))]
pub async fn transcriptions(
    State(state): State<AppState>,
    Extension(key): Extension<KeyRecord>,
    AppMultipart(form): AppMultipart,
) -> Result<Response, ApiError> {
    let request = read_form(form, Task::Transcribe).await?;
    run(state, key, request, "/v1/audio/transcriptions").await
}

/// Speech in any language to English text (multilingual models).
#[utoipa::path(post, path = "/audio/translations", tag = "openai",
    request_body(content = AudioForm, content_type = "multipart/form-data"),
    responses((status = 200, description = "The English text, in the asked format",
        body = serde_json::Value)))]
pub async fn translations(
    State(state): State<AppState>,
    Extension(key): Extension<KeyRecord>,
    AppMultipart(form): AppMultipart,
) -> Result<Response, ApiError> {
    let request = read_form(form, Task::Translate).await?;
    run(state, key, request, "/v1/audio/translations").await
}

async fn run(
    state: AppState,
    key: KeyRecord,
    request: AudioRequest,
    route: &str,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    if !key.allows_model(&request.model) {
        return Err(EngineError::ModelNotFound(request.model).into());
    }
    let transcriber = state.engine.transcriber(&request.model).await?;
    let job = TranscriptionJob {
        file: request.file,
        extension: request.extension,
        options: request.options.clone(),
    };
    let transcription = transcribe_metered(&state, &key, transcriber, job, route, started).await?;
    let mut response = respond(&transcription, request.format, request.options.task);
    response.extensions_mut().insert(Metered);
    response.extensions_mut().insert(ModelLabel(request.model));
    Ok(response)
}

/// Transcribes an upload, billed to `key` by the audio's length on `route`.
pub(super) async fn transcribe_metered(
    state: &AppState,
    key: &KeyRecord,
    transcriber: Arc<LoadedTranscriber>,
    job: TranscriptionJob,
    route: &str,
    started: Instant,
) -> Result<Transcription, ApiError> {
    // Billed by the audio's length, known once decoded: nothing is reserved ahead, but a key
    // past its limits is refused here.
    let reservation = state.limiter.reserve(state.store(), key, 0).await?;
    let meter = Meter::new(state, key, &transcriber.manifest.id, route, started);
    let usage = |done: &Transcription| Usage {
        completion_tokens: text_tokens(done),
        audio_seconds: done.audio_seconds,
        ..Usage::default()
    };
    // The work runs in a task of its own (so that what it did is metered however the request
    // ends); this handler's future is dropped when the client goes away, and with it `cancel`,
    // which stops the work at its next window.
    let cancel = CancelOnDrop::default();
    let cancelled = cancel.flag();
    let work = async move { transcriber.transcribe(job, cancelled).await };
    Ok(meter.run(reservation, work, usage).await?)
}

fn text_tokens(transcription: &Transcription) -> i64 {
    let count: usize = (transcription.transcript.segments.iter())
        .map(|s| s.tokens.len())
        .sum();
    count as i64
}

async fn read_form(
    mut form: axum::extract::Multipart,
    task: Task,
) -> Result<AudioRequest, ApiError> {
    let mut file = None;
    let mut model = None;
    let mut format = Format::Json;
    let mut options = TranscribeOptions {
        task,
        condition_on_previous_text: true,
        ..Default::default()
    };
    while let Some(mut field) = form.next_field().await.map_err(form_error)? {
        let name = field.name().unwrap_or_default().to_string();
        if name == "file" {
            if file.is_some() {
                return Err(ApiError::invalid("file", "send one audio file per request"));
            }
            let extension = (field.file_name())
                .and_then(|n| n.rsplit_once('.'))
                .map(|(_, extension)| extension.to_ascii_lowercase());
            let mut bytes = Vec::new();
            while let Some(chunk) = field.chunk().await.map_err(form_error)? {
                if bytes.len() + chunk.len() > MAX_AUDIO_BYTES {
                    return Err(ApiError::PayloadTooLarge(MAX_AUDIO_BYTES));
                }
                bytes.extend_from_slice(&chunk);
            }
            file = Some((bytes, extension));
            continue;
        }
        let value = field.text().await.map_err(form_error)?;
        match name.as_str() {
            "model" => model = Some(value),
            "language" if !value.is_empty() => options.language = Some(value.to_lowercase()),
            "prompt" => options.prompt = Some(value),
            "response_format" => format = Format::parse(&value)?,
            "temperature" => {
                options.temperature = value.trim().parse().map_err(|_| {
                    ApiError::invalid(
                        "temperature",
                        format!("temperature must be a number; got `{value}`"),
                    )
                })?
            }
            // Other fields (`timestamp_granularities[]`, `stream` ...) are not used.
            _ => {}
        }
    }
    let (file, extension) = file.ok_or_else(|| ApiError::invalid("file", "`file` is required"))?;
    let model = model.ok_or_else(|| ApiError::invalid("model", "`model` is required"))?;
    if task == Task::Translate {
        // Translations are always into English; the spoken language is detected.
        options.language = None;
    }
    Ok(AudioRequest {
        file,
        extension,
        model,
        format,
        options,
    })
}

fn respond(transcription: &Transcription, format: Format, task: Task) -> Response {
    let transcript = &transcription.transcript;
    let text = transcript.text();
    let usage = json!({"type": "duration", "seconds": transcription.audio_seconds.ceil() as u64});
    match format {
        Format::Json => axum::Json(json!({"text": text, "usage": usage})).into_response(),
        Format::Text => plain(format!("{text}\n"), "text/plain; charset=utf-8"),
        Format::Srt => plain(subtitles(transcription, ','), "application/x-subrip"),
        Format::Vtt => plain(
            format!("WEBVTT\n\n{}", subtitles(transcription, '.')),
            "text/vtt",
        ),
        Format::VerboseJson => {
            let segments: Vec<Value> = (transcript.segments.iter().enumerate())
                .map(|(id, s)| {
                    json!({
                        "id": id,
                        "start": round_ms(s.start),
                        "end": round_ms(s.end),
                        "text": s.text,
                        "tokens": s.tokens,
                        "temperature": s.temperature,
                        "avg_logprob": s.avg_logprob,
                        "compression_ratio": s.compression_ratio,
                        "no_speech_prob": s.no_speech_prob,
                    })
                })
                .collect();
            axum::Json(json!({
                "task": match task { Task::Transcribe => "transcribe", Task::Translate => "translate" },
                "language": transcript.language,
                "duration": round_ms(transcript.duration),
                "text": text,
                "segments": segments,
                "usage": usage,
            }))
            .into_response()
        }
    }
}

fn plain(body: String, content_type: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

fn round_ms(seconds: f64) -> f64 {
    (seconds * 1000.0).round() / 1000.0
}

/// Numbered cues (SRT) or bare ones (WebVTT, whose header the caller writes), one per
/// segment; `separator` comes before the milliseconds (`,` in SRT, `.` in WebVTT).
fn subtitles(transcription: &Transcription, separator: char) -> String {
    let mut out = String::new();
    for (i, segment) in transcription.transcript.segments.iter().enumerate() {
        if separator == ',' {
            out.push_str(&format!("{}\n", i + 1));
        }
        out.push_str(&format!(
            "{} --> {}\n{}\n\n",
            timestamp(segment.start, separator),
            timestamp(segment.end, separator),
            segment.text.trim()
        ));
    }
    out
}

/// `HH:MM:SS,mmm` (or with `.`).
fn timestamp(seconds: f64, separator: char) -> String {
    let ms = (seconds.max(0.0) * 1000.0).round() as u64;
    let (h, m, s, ms) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    format!("{h:02}:{m:02}:{s:02}{separator}{ms:03}")
}

fn form_error(error: axum::extract::multipart::MultipartError) -> ApiError {
    multipart_error(error, MAX_AUDIO_BYTES, "file")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_written_as_subtitles_expect() {
        assert_eq!(timestamp(0.0, ','), "00:00:00,000");
        assert_eq!(timestamp(3723.456, '.'), "01:02:03.456");
    }
}
