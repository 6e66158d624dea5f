//! Speech to text over HTTP: the real Whisper tiny.en on real speech, sent as multipart forms
//! the way OpenAI's SDKs send them.

use reqwest::multipart::{Form, Part};
use serde_json::Value;

use crate::common::{error, TestServer, KEY, MINILM};

pub const WHISPER: &str = "whisper-tiny.en";
/// One LibriVox clip (`scripts/fetch-test-audio`) and what faster-whisper hears in it
/// (`tests/reference/whisper-tiny.en.json`).
const CLIP: &str = "sense_and_sensibility_01_austen_64kb-0930.wav";
pub const CLIP_TEXT: &str = "He might even have been made amiable himself.";

pub fn clip_path() -> std::path::PathBuf {
    let folder = aiaas_engine::fetch::cache_dir().join("testdata/librivox");
    assert!(
        folder.join(".complete").is_file(),
        "no test audio in {}: run scripts/fetch-test-audio",
        folder.display()
    );
    folder.join(CLIP)
}

fn clip() -> Vec<u8> {
    std::fs::read(clip_path()).unwrap()
}

/// A form with `file` (named `file_name`), `model` and any other text fields.
fn form(file: Vec<u8>, file_name: &str, model: &str, fields: &[(&str, &str)]) -> Form {
    let mut form = Form::new()
        .part("file", Part::bytes(file).file_name(file_name.to_string()))
        .text("model", model.to_string());
    for (name, value) in fields {
        form = form.text(name.to_string(), value.to_string());
    }
    form
}

async fn send(server: &TestServer, route: &str, form: Form) -> (u16, String) {
    let response = server
        .client
        .post(server.url(route))
        .bearer_auth(KEY)
        .multipart(form)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

async fn transcribe(server: &TestServer, fields: &[(&str, &str)]) -> (u16, String) {
    let form = form(clip(), CLIP, WHISPER, fields);
    send(server, "/v1/audio/transcriptions", form).await
}

#[tokio::test]
async fn a_clip_is_transcribed_in_every_response_format_and_metered_in_seconds() {
    let server = TestServer::start(&[WHISPER]).await;
    let (status, body) = transcribe(&server, &[]).await;
    assert_eq!(status, 200, "{body}");
    let json: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["text"], CLIP_TEXT, "{json}");
    // The clip is 3.2 s long: billed as OpenAI bills, in whole seconds.
    assert_eq!(json["usage"]["type"], "duration");
    assert_eq!(json["usage"]["seconds"], 4);

    let (status, text) = transcribe(&server, &[("response_format", "text")]).await;
    assert_eq!(
        (status, text.as_str()),
        (200, format!("{CLIP_TEXT}\n").as_str())
    );

    // A prompt (context before the audio) and sampling are honoured, not refused.
    let (status, srt) = transcribe(
        &server,
        &[
            ("response_format", "srt"),
            ("prompt", "Sense and Sensibility, by Jane Austen."),
            ("temperature", "0.2"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{srt}");
    let cue = srt.lines().collect::<Vec<_>>();
    assert_eq!(cue[0], "1");
    assert!(cue[1].starts_with("00:00:00,000 --> 00:00:0"), "{srt}");
    assert!(cue[2].contains("amiable"), "{srt}");

    let (status, vtt) = transcribe(&server, &[("response_format", "vtt")]).await;
    assert_eq!(status, 200, "{vtt}");
    assert!(
        vtt.starts_with("WEBVTT\n\n00:00:00.000 --> 00:00:0"),
        "{vtt}"
    );
    assert!(vtt.contains(CLIP_TEXT), "{vtt}");

    let (status, body) = transcribe(
        &server,
        &[("response_format", "verbose_json"), ("language", "en")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let verbose: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(verbose["task"], "transcribe");
    assert_eq!(verbose["language"], "en");
    let duration = verbose["duration"].as_f64().unwrap();
    assert!((3.0..3.5).contains(&duration), "{verbose}");
    let segments = verbose["segments"].as_array().unwrap();
    assert_eq!(segments.len(), 1, "{verbose}");
    assert_eq!(segments[0]["start"], 0.0);
    assert!(segments[0]["end"].as_f64().unwrap() <= duration + 0.5);
    assert_eq!(segments[0]["text"].as_str().unwrap().trim(), CLIP_TEXT);

    // Five requests, each billed the clip's length.
    let (status, usage) = server.get("/admin/usage?by=model").await;
    assert_eq!(status, 200, "{usage}");
    let group = &usage["data"][0];
    assert_eq!(
        (group["group"].as_str(), group["requests"].as_i64()),
        (Some(WHISPER), Some(5)),
        "{usage}"
    );
    let billed = group["audio_seconds"].as_f64().unwrap();
    assert!((billed - 5.0 * duration).abs() < 0.01, "{usage}");
}

#[tokio::test]
async fn flac_ogg_mp3_and_other_wavs_of_any_rate_and_channels_are_heard_alike() {
    let server = TestServer::start(&[WHISPER]).await;
    let folder = server.home.join("encoded");
    std::fs::create_dir_all(&folder).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/encode_audio.py");
    let python = std::env::var("AIAAS_PYTHON").unwrap_or_else(|_| "python3".into());
    let output = std::process::Command::new(python)
        .args([script.as_ref(), clip_path().as_os_str(), folder.as_os_str()])
        .output()
        .expect("python3 must be installed (scripts/test installs soundfile)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for name in [
        "clip.flac",
        "clip.ogg",
        "clip.mp3",
        "clip-u8.wav",
        "clip-float.wav",
    ] {
        let file = std::fs::read(folder.join(name)).unwrap();
        let (status, body) = send(
            &server,
            "/v1/audio/transcriptions",
            form(file, name, WHISPER, &[]),
        )
        .await;
        assert_eq!(status, 200, "{name}: {body}");
        let text = serde_json::from_str::<Value>(&body).unwrap()["text"].clone();
        // Lossy codecs and resampling may move punctuation, not the words.
        let words = |t: &str| -> Vec<String> {
            (t.to_lowercase().split(|c: char| !c.is_alphanumeric()))
                .filter(|w| !w.is_empty())
                .map(str::to_string)
                .collect()
        };
        assert_eq!(words(text.as_str().unwrap()), words(CLIP_TEXT), "{name}");
    }
}

#[tokio::test]
async fn bad_audio_and_bad_options_get_clear_client_errors() {
    let server = TestServer::start(&[WHISPER, MINILM]).await;
    let whole = clip();
    // A WAV header that promises an unknown codec (format tag 0x0161, WMA).
    let mut foreign = whole.clone();
    foreign[20..22].copy_from_slice(&0x0161u16.to_le_bytes());
    let cases: Vec<(Vec<u8>, &str, &str)> = vec![
        (Vec::new(), "clip.wav", "empty"),
        (
            b"<html>not audio</html>".repeat(50),
            "clip.wav",
            "not an audio file",
        ),
        (
            whole[..whole.len() / 2].to_vec(),
            "clip.wav",
            "damaged or truncated",
        ),
        (foreign, "clip.wav", "unsupported audio codec"),
    ];
    for (file, name, expected) in cases {
        let (status, body) = send(
            &server,
            "/v1/audio/transcriptions",
            form(file, name, WHISPER, &[]),
        )
        .await;
        assert_eq!(status, 400, "{expected}: {body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(error(&body)["param"], "file", "{body}");
        let message = error(&body)["message"].as_str().unwrap();
        assert!(message.contains(expected), "{expected}: {message}");
    }
    // Over OpenAI's 25 MB limit: 413, before the model sees it.
    let huge = vec![0u8; 25 * 1024 * 1024 + 1];
    let (status, body) = send(
        &server,
        "/v1/audio/transcriptions",
        form(huge, "big.wav", WHISPER, &[]),
    )
    .await;
    assert_eq!(status, 413, "{body}");

    let refusals: [(&str, Form, &str); 5] = [
        (
            "/v1/audio/transcriptions",
            form(clip(), CLIP, WHISPER, &[("response_format", "xml")]),
            "response_format",
        ),
        (
            "/v1/audio/transcriptions",
            form(clip(), CLIP, WHISPER, &[("language", "de")]),
            "language",
        ),
        (
            "/v1/audio/transcriptions",
            form(clip(), CLIP, WHISPER, &[("temperature", "hot")]),
            "temperature",
        ),
        (
            "/v1/audio/translations",
            form(clip(), CLIP, WHISPER, &[]),
            "model",
        ),
        (
            "/v1/audio/transcriptions",
            form(clip(), CLIP, MINILM, &[]),
            "model",
        ),
    ];
    for (route, form, param) in refusals {
        let (status, body) = send(&server, route, form).await;
        assert_eq!(status, 400, "{param}: {body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(error(&body)["param"], param, "{body}");
    }
    let no_file = Form::new().text("model", WHISPER);
    let (status, body) = send(&server, "/v1/audio/transcriptions", no_file).await;
    assert_eq!(status, 400, "{body}");
    // The model still serves after all of that.
    assert_eq!(transcribe(&server, &[]).await.0, 200);
}

#[tokio::test]
async fn an_embedding_or_chat_route_refuses_a_speech_model() {
    let server = TestServer::start(&[WHISPER]).await;
    let (status, body) = server
        .post(
            "/v1/embeddings",
            &serde_json::json!({"model": WHISPER, "input": "hi"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let message = error(&body)["message"].as_str().unwrap();
    assert!(message.contains("speech recognition model"), "{message}");
}
