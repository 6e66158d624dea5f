//! Whisper against faster-whisper on real speech: the five LibriVox clips of Debian's
//! `pocketsphinx-testdata` (fetched by `scripts/fetch-test-audio`), transcribed by the real
//! model, compared by word error rate with faster-whisper's transcripts of the same clips
//! (`tests/reference/whisper-*.json`, made by `tests/reference/faster_whisper_expected.py`).

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use aiaas_engine::fetch;
use aiaas_models::audio;
use aiaas_models::whisper::mel::SAMPLE_RATE;
use aiaas_models::whisper::{Task, TranscribeOptions, Whisper};

/// The clips' folder; missing clips fail the test unless skips are allowed (and then say so).
fn clips() -> Option<PathBuf> {
    let folder = fetch::cache_dir().join("testdata/librivox");
    if folder.join(".complete").is_file() {
        return Some(folder);
    }
    if std::env::var("AIAAS_ALLOW_MODEL_SKIP").is_ok_and(|v| v == "1") {
        eprintln!("\n!!! SKIPPED Whisper reference test: run scripts/fetch-test-audio first\n");
        return None;
    }
    panic!(
        "no test audio in {}: run scripts/fetch-test-audio",
        folder.display()
    );
}

/// Lower-cased words without punctuation (hyphens split words), as the WER is counted.
fn words(text: &str) -> Vec<String> {
    let cleaned: String = (text.to_lowercase().chars())
        .map(|c| {
            if c.is_alphanumeric() || c == '\'' {
                c
            } else {
                ' '
            }
        })
        .collect();
    cleaned.split_whitespace().map(str::to_string).collect()
}

/// Word-level edit distance: substitutions, insertions and deletions.
fn word_errors(reference: &[String], hypothesis: &[String]) -> usize {
    let mut previous: Vec<usize> = (0..=hypothesis.len()).collect();
    for (i, r) in reference.iter().enumerate() {
        let mut row = vec![i + 1];
        for (j, h) in hypothesis.iter().enumerate() {
            let substitution = previous[j] + usize::from(r != h);
            row.push(substitution.min(previous[j + 1] + 1).min(row[j] + 1));
        }
        previous = row;
    }
    previous[hypothesis.len()]
}

fn check(model_id: &str, max_word_error_rate: f64) {
    let (Some(folder), Some(clips)) = (common::model_file(model_id), clips()) else {
        return;
    };
    let model = Whisper::load(&folder).unwrap();
    let reference = common::reference(model_id);
    let options = TranscribeOptions {
        language: Some("en".into()),
        ..Default::default()
    };
    let (mut errors, mut total) = (0, 0);
    for case in reference["cases"].as_array().unwrap() {
        let clip = case["clip"].as_str().unwrap();
        let bytes = std::fs::read(clips.join(clip)).unwrap();
        let audio = audio::decode(bytes, Some("wav"), SAMPLE_RATE as u32, 600).unwrap();
        let transcript = model.transcribe(&audio.samples, &options).unwrap();
        let expected = words(case["text"].as_str().unwrap());
        let got = words(&transcript.text());
        let clip_errors = word_errors(&expected, &got);
        println!(
            "{clip}: {clip_errors} errors in {} words\n  ours:   {}\n  theirs: {}",
            expected.len(),
            transcript.text(),
            case["text"]
        );
        errors += clip_errors;
        total += expected.len();
        let last = transcript.segments.last().expect("speech gives segments");
        assert!(
            last.end <= audio.duration() + 0.5,
            "{clip}: a segment ends after the audio"
        );
    }
    let rate = errors as f64 / total as f64;
    println!(
        "{model_id}: word error rate {:.1}% ({errors} of {total} words)",
        100.0 * rate
    );
    assert!(
        rate <= max_word_error_rate,
        "{model_id}: WER {rate:.3} > {max_word_error_rate}"
    );
}

#[test]
fn whisper_tiny_en_transcribes_the_librivox_clips_as_faster_whisper_does() {
    check("whisper-tiny.en", 0.12);
}

#[test]
fn whisper_base_transcribes_the_librivox_clips_as_faster_whisper_does() {
    check("whisper-base", 0.05);
}

#[test]
fn a_multilingual_model_detects_english_and_translates_it_to_itself() {
    let (Some(folder), Some(clips)) = (common::model_file("whisper-base"), clips()) else {
        return;
    };
    let model = Whisper::load(&folder).unwrap();
    assert!(model.is_multilingual());
    let reference = common::reference("whisper-base");
    let case = &reference["cases"][0];
    let bytes = std::fs::read(clips.join(case["clip"].as_str().unwrap())).unwrap();
    let audio = audio::decode(bytes, Some("wav"), SAMPLE_RATE as u32, 600).unwrap();
    let expected = words(case["text"].as_str().unwrap());
    for task in [Task::Transcribe, Task::Translate] {
        let options = TranscribeOptions {
            task,
            ..Default::default()
        };
        let transcript = model.transcribe(&audio.samples, &options).unwrap();
        assert_eq!(transcript.language, "en", "{task:?}");
        let errors = word_errors(&expected, &words(&transcript.text()));
        assert!(errors <= 1, "{task:?}: {}", transcript.text());
    }
}

/// The CTranslate2 variable `name` under its Hugging Face names (`transformers`'
/// `WhisperForConditionalGeneration`), split where CTranslate2 fuses projections.
fn hugging_face_tensors(
    name: &str,
    dims: &[usize],
    values: &[f32],
) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let parts: Vec<&str> = name.split('/').collect();
    let rename = |layer: &str| -> String {
        let (side, rest) = layer.split_once('/').unwrap();
        match rest.strip_prefix("layer_") {
            Some(i) => format!("model.{side}.layers.{i}"),
            None => format!("model.{side}.{rest}"),
        }
    };
    let split = |prefix: String, projections: &[&str], leaf: &str| {
        let rows = dims[0] / projections.len();
        let width = values.len() / dims[0];
        (projections.iter().enumerate())
            .filter(|(_, p)| !(leaf == "bias" && **p == "k_proj"))
            .map(|(i, p)| {
                let part = values[i * rows * width..(i + 1) * rows * width].to_vec();
                let shape = if leaf == "bias" {
                    vec![rows]
                } else {
                    vec![rows, width]
                };
                (format!("{prefix}.{p}.{leaf}"), shape, part)
            })
            .collect()
    };
    let one = |hf: String| vec![(hf, dims.to_vec(), values.to_vec())];
    let leaf = |ct2: &str| match ct2 {
        "gamma" | "weight" => "weight",
        _ => "bias",
    };
    match parts.as_slice() {
        [_, "num_heads"] => Vec::new(),
        [side, "position_encodings", _] => one(format!("model.{side}.embed_positions.weight")),
        ["decoder", "embeddings", _] => one("model.decoder.embed_tokens.weight".into()),
        ["decoder", "projection", _] => Vec::new(),
        [side, "layer_norm", l] => one(format!("model.{side}.layer_norm.{}", leaf(l))),
        ["encoder", conv, l] => one(format!("model.encoder.{conv}.{}", leaf(l))),
        [side, layer, block, part, l] => {
            let hf = rename(&format!("{side}/{layer}"));
            match (*block, *part) {
                ("self_attention", "linear_0") => split(
                    format!("{hf}.self_attn"),
                    &["q_proj", "k_proj", "v_proj"],
                    leaf(l),
                ),
                ("self_attention", "linear_1") => {
                    one(format!("{hf}.self_attn.out_proj.{}", leaf(l)))
                }
                ("self_attention", "layer_norm") => {
                    one(format!("{hf}.self_attn_layer_norm.{}", leaf(l)))
                }
                ("attention", "linear_0") => one(format!("{hf}.encoder_attn.q_proj.{}", leaf(l))),
                ("attention", "linear_1") => {
                    split(format!("{hf}.encoder_attn"), &["k_proj", "v_proj"], leaf(l))
                }
                ("attention", "linear_2") => one(format!("{hf}.encoder_attn.out_proj.{}", leaf(l))),
                ("attention", "layer_norm") => {
                    one(format!("{hf}.encoder_attn_layer_norm.{}", leaf(l)))
                }
                ("ffn", "linear_0") => one(format!("{hf}.fc1.{}", leaf(l))),
                ("ffn", "linear_1") => one(format!("{hf}.fc2.{}", leaf(l))),
                ("ffn", "layer_norm") => one(format!("{hf}.final_layer_norm.{}", leaf(l))),
                other => panic!("unexpected variable {name}: {other:?}"),
            }
        }
        _ => Vec::new(),
    }
}

#[test]
fn a_hugging_face_folder_transcribes_as_the_ctranslate2_one_does() {
    let (Some(folder), Some(clips)) = (common::model_file("whisper-tiny.en"), clips()) else {
        return;
    };
    // The catalog's CTranslate2 folder rewritten as a Hugging Face one (f16 safetensors).
    let ct2 = aiaas_models::ctranslate2::Ct2Model::read(&folder.join("model.bin")).unwrap();
    let mut tensors = std::collections::HashMap::new();
    for (name, variable) in ct2.variables() {
        for (hf, dims, values) in hugging_face_tensors(name, &variable.dims, &variable.values) {
            let tensor =
                candle_core::Tensor::from_vec(values, dims, &candle_core::Device::Cpu).unwrap();
            tensors.insert(hf, tensor.to_dtype(candle_core::DType::F16).unwrap());
        }
    }
    let hf = std::env::temp_dir().join(format!("aiaas-hf-whisper-{}", std::process::id()));
    std::fs::create_dir_all(&hf).unwrap();
    candle_core::safetensors::save(&tensors, hf.join("model.safetensors")).unwrap();
    std::fs::copy(folder.join("tokenizer.json"), hf.join("tokenizer.json")).unwrap();
    let ct2_config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(folder.join("config.json")).unwrap())
            .unwrap();
    let config = serde_json::json!({
        "model_type": "whisper", "encoder_layers": 4, "decoder_layers": 4,
        "encoder_attention_heads": 6, "decoder_attention_heads": 6,
        "suppress_tokens": ct2_config["suppress_ids"], "begin_suppress_tokens": null,
    });
    std::fs::write(hf.join("config.json"), config.to_string()).unwrap();
    let generation = serde_json::json!({"begin_suppress_tokens": ct2_config["suppress_ids_begin"]});
    std::fs::write(hf.join("generation_config.json"), generation.to_string()).unwrap();

    let from_ct2 = Whisper::load(&folder).unwrap();
    let from_hf = Whisper::load(&hf).unwrap();
    assert_eq!(from_hf.parameter_count(), from_ct2.parameter_count());
    let options = TranscribeOptions::default();
    for case in common::reference("whisper-tiny.en")["cases"]
        .as_array()
        .unwrap()
    {
        let bytes = std::fs::read(clips.join(case["clip"].as_str().unwrap())).unwrap();
        let audio = audio::decode(bytes, Some("wav"), SAMPLE_RATE as u32, 600).unwrap();
        let expected = from_ct2.transcribe(&audio.samples, &options).unwrap();
        assert_eq!(
            from_hf.transcribe(&audio.samples, &options).unwrap(),
            expected
        );
    }
    // And `aiaas models import` takes the folder as a speech model.
    let repository = aiaas_engine::ModelRepository::open(hf.join("repository")).unwrap();
    let manifest = repository.import(&hf, Some("whisper-hf"), None).unwrap();
    assert_eq!(
        (manifest.task, manifest.format.as_str()),
        (aiaas_engine::Task::Transcription, "safetensors")
    );
    assert!(repository
        .model_dir(&manifest)
        .join("generation_config.json")
        .is_file());
    std::fs::remove_dir_all(&hf).unwrap();
}

#[test]
fn audio_longer_than_a_window_is_transcribed_window_by_window_with_true_times() {
    let (Some(folder), Some(clips)) = (common::model_file("whisper-tiny.en"), clips()) else {
        return;
    };
    let model = Whisper::load(&folder).unwrap();
    let reference = common::reference("whisper-tiny.en");
    // The five clips twice over, two seconds of silence after each: about 70 s.
    let (mut samples, mut expected) = (Vec::new(), Vec::new());
    for case in reference["cases"]
        .as_array()
        .unwrap()
        .iter()
        .cycle()
        .take(10)
    {
        let bytes = std::fs::read(clips.join(case["clip"].as_str().unwrap())).unwrap();
        samples.extend(
            audio::decode(bytes, Some("wav"), SAMPLE_RATE as u32, 600)
                .unwrap()
                .samples,
        );
        samples.extend(vec![0f32; 2 * SAMPLE_RATE]);
        expected.extend(words(case["text"].as_str().unwrap()));
    }
    let duration = samples.len() as f64 / SAMPLE_RATE as f64;
    let transcript = model
        .transcribe(&samples, &TranscribeOptions::default())
        .unwrap();
    let got = words(&transcript.text());
    let rate = word_errors(&expected, &got) as f64 / expected.len() as f64;
    println!(
        "{duration:.1} s: word error rate {:.1}%\n{}",
        100.0 * rate,
        transcript.text()
    );
    assert!(rate <= 0.12, "WER {rate:.3}");
    let mut previous_end = 0.0;
    for segment in &transcript.segments {
        println!(
            "[{:6.2} -> {:6.2}] {}",
            segment.start, segment.end, segment.text
        );
        assert!(
            segment.start >= previous_end - 0.01 && segment.end > segment.start,
            "{segment:?}"
        );
        previous_end = segment.end;
    }
    assert!(
        previous_end > 60.0 && previous_end <= duration + 0.5,
        "last end {previous_end}"
    );
}

#[test]
fn silence_gives_an_empty_transcript() {
    let Some(folder) = common::model_file("whisper-tiny.en") else {
        return;
    };
    let model = Whisper::load(&folder).unwrap();
    let options = TranscribeOptions::default();
    // Ten seconds of digital silence, and of faint noise (a microphone in a quiet room).
    let silence = vec![0f32; 10 * SAMPLE_RATE];
    let mut state = 12345u32;
    let noise: Vec<f32> = (0..10 * SAMPLE_RATE)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 8) as f32 / (1u32 << 24) as f32 * 2e-3 - 1e-3
        })
        .collect();
    for (samples, what) in [(silence, "silence"), (noise, "faint noise")] {
        let transcript = model.transcribe(&samples, &options).unwrap();
        assert_eq!(transcript.text(), "", "{what} was heard as text");
    }
}

/// A transcription whose flag is set stops before its next window, with the segments so far
/// and the seconds its windows covered (what the request is billed by): what the server's
/// transcriptions do once their request is dropped (the client went away).
#[test]
fn a_cancelled_transcription_stops_before_its_next_window() {
    let Some(folder) = common::model_file("whisper-tiny.en") else {
        return;
    };
    let model = Whisper::load(&folder).unwrap();
    let options = TranscribeOptions::default();
    let samples = vec![0f32; 40 * SAMPLE_RATE];
    let cancelled = AtomicBool::new(true);
    let (transcript, covered) = (model.transcribe_until(&samples, &options, &cancelled)).unwrap();
    assert_eq!((transcript.segments.len(), covered), (0, 0.0));
    cancelled.store(false, Ordering::Relaxed);
    let (transcript, covered) = (model.transcribe_until(&samples, &options, &cancelled)).unwrap();
    assert_eq!((transcript.duration, covered), (40.0, 40.0));
}
