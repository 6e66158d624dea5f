//! What each kind of model takes and gives as named tensors, and running a request through it.
//! An input is a batch along its first dimension (`-1` in the metadata), except a prompt or an
//! audio file, one per request (their work is batched inside the engine anyway); an output with
//! one element per input element has the input's shape:
//!
//! | task | inputs | outputs |
//! |---|---|---|
//! | chat, completion | `text_input` BYTES [1] (a prompt; `parameters`: max_tokens, temperature, top_p, seed, stop …) | `text_output` BYTES [1] |
//! | embedding | `text` BYTES [-1] | `embedding` FP32 [-1, dimensions] |
//! | transcription | `audio` BYTES [1] (an audio file, at most 25 MB) | `text` BYTES [1] |
//! | image classification | `image` BYTES [-1] (image files) or `input` FP32 [-1, 3, S, S] (prepared) | `probabilities` FP32 [-1, classes]; with the `classification` parameter, the top k as `score:index:label` BYTES [-1, k] |
//! | grapheme to phoneme | `word` BYTES [-1] | `phonemes` BYTES [-1] (space-separated ARPAbet) |

use std::time::Instant;

use aiaas_engine::transcribe::TranscriptionJob;
use aiaas_engine::{EmbedInput, LoadedModel, ModelManifest, Task};
use aiaas_models::whisper::TranscribeOptions;
use serde_json::{json, Value};

use super::tensor::{InferRequest, Input, Output, Values};
use crate::api::images::{self, Images};
use crate::api::types::SamplingFields;
use crate::api::{audio, embeddings, generation, validate, ApiError};
use crate::gate::{Meter, Usage};
use crate::store::KeyRecord;
use crate::AppState;

const ROUTE: &str = "/v2/models/{id}/infer";
/// The most text one request may carry (the server's default body limit).
const MAX_TEXT_BYTES: usize = 8 * 1024 * 1024;
/// Tokens a generation may add when the request's parameters do not say.
const DEFAULT_MAX_TOKENS: i64 = 16;

/// A tensor in a model's metadata.
struct Spec {
    name: &'static str,
    datatype: &'static str,
    shape: Vec<i64>,
}

impl Spec {
    fn new(name: &'static str, datatype: &'static str, shape: &[i64]) -> Self {
        Self {
            name,
            datatype,
            shape: shape.to_vec(),
        }
    }

    fn json(&self) -> Value {
        json!({"name": self.name, "datatype": self.datatype, "shape": self.shape})
    }
}

/// The model's inputs and outputs.
fn signature(manifest: &ModelManifest) -> (Vec<Spec>, Vec<Spec>) {
    match manifest.task {
        Task::Chat | Task::Completion => (
            vec![Spec::new("text_input", "BYTES", &[1])],
            vec![Spec::new("text_output", "BYTES", &[1])],
        ),
        Task::Embedding => {
            let dimensions = manifest.dimensions.map_or(-1, |d| d as i64);
            (
                vec![Spec::new("text", "BYTES", &[-1])],
                vec![Spec::new("embedding", "FP32", &[-1, dimensions])],
            )
        }
        Task::Transcription => (
            vec![Spec::new("audio", "BYTES", &[1])],
            vec![Spec::new("text", "BYTES", &[1])],
        ),
        Task::ImageClassification => {
            let side = (manifest.preprocessing.as_ref()).map_or(-1, |p| i64::from(p.crop));
            let classes = manifest.dimensions.map_or(-1, |d| d as i64);
            (
                vec![
                    Spec::new("image", "BYTES", &[-1]),
                    Spec::new("input", "FP32", &[-1, 3, side, side]),
                ],
                vec![Spec::new("probabilities", "FP32", &[-1, classes])],
            )
        }
        Task::GraphemeToPhoneme => (
            vec![Spec::new("word", "BYTES", &[-1])],
            vec![Spec::new("phonemes", "BYTES", &[-1])],
        ),
    }
}

/// `GET /v2/models/{id}`'s body.
pub fn metadata(manifest: &ModelManifest) -> Value {
    let (inputs, outputs) = signature(manifest);
    json!({
        "name": manifest.id,
        "versions": ["1"],
        "platform": format!("aiaas/{}", manifest.architecture),
        "inputs": inputs.iter().map(Spec::json).collect::<Vec<_>>(),
        "outputs": outputs.iter().map(Spec::json).collect::<Vec<_>>(),
    })
}

/// Runs the request through the model, metered to `key`.
pub async fn infer(
    state: &AppState,
    key: &KeyRecord,
    model: LoadedModel,
    request: &InferRequest,
) -> Result<Vec<Output>, ApiError> {
    let started = Instant::now();
    let (inputs, outputs) = signature(model.manifest());
    check_names(request, &inputs, &outputs)?;
    let mut results = Vec::new();
    match model {
        LoadedModel::Generator(generator) => {
            let prompt = one(texts(request, "text_input")?, "text_input")?;
            let fields: SamplingFields =
                serde_json::from_value(Value::Object(request.parameters.clone())).map_err(|e| {
                    ApiError::invalid("parameters", format!("invalid generation parameters: {e}"))
                })?;
            if fields.stream {
                return Err(ApiError::invalid(
                    "parameters",
                    "stream is not supported here; use /v1/completions",
                ));
            }
            let max_tokens = fields.max_tokens.or(Some(DEFAULT_MAX_TOKENS));
            let sampling = validate::sampling(&fields, max_tokens, None)?;
            let tokens = generator.text_prompt(&prompt);
            let running =
                generation::start_metered(state, key, ROUTE, &generator, tokens, &sampling).await?;
            let collected = generation::collect(running.events).await;
            if running.metering.await.is_err() {
                tracing::error!("the metering task failed");
            }
            let text = collected?.text.into_bytes();
            results.push((
                "text_output",
                shape_of(request, "text_input"),
                Values::Bytes(vec![text]),
            ));
        }
        LoadedModel::Embedder(embedder) => {
            let inputs = texts(request, "text")?;
            let count = inputs.len();
            let sequences = embedder.tokenize(EmbedInput::Texts(inputs)).await?;
            let dimensions = embedder.dimensions();
            let vectors =
                embeddings::embed_metered(state, key, embedder, sequences, ROUTE, started).await?;
            let values = vectors.into_iter().flatten().collect();
            results.push(("embedding", vec![count, dimensions], Values::Floats(values)));
        }
        LoadedModel::Transcriber(transcriber) => {
            let file = one(bytes(request, "audio")?, "audio")?;
            if file.len() > audio::MAX_AUDIO_BYTES {
                return Err(ApiError::PayloadTooLarge(audio::MAX_AUDIO_BYTES));
            }
            let job = TranscriptionJob {
                file,
                extension: None,
                options: TranscribeOptions {
                    condition_on_previous_text: true,
                    ..Default::default()
                },
            };
            let done =
                audio::transcribe_metered(state, key, transcriber, job, ROUTE, started).await?;
            let text = done.transcript.text().trim().as_bytes().to_vec();
            results.push((
                "text",
                shape_of(request, "audio"),
                Values::Bytes(vec![text]),
            ));
        }
        LoadedModel::Classifier(classifier) => {
            let images = match (request.input("image"), request.input("input")) {
                (Some(_), None) => Images::Encoded(bytes(request, "image")?),
                (None, Some(input)) => Images::Prepared(prepared_images(
                    input,
                    classifier.preprocessing().crop as usize,
                )?),
                _ => return Err(ApiError::invalid(
                    "inputs",
                    "send either `image` (BYTES: image files) or `input` (FP32: prepared images)",
                )),
            };
            let probabilities =
                images::classify_metered(state, key, classifier.clone(), images, ROUTE, started)
                    .await?;
            let count = probabilities.len();
            match request
                .wants("probabilities")
                .and_then(|w| w.classification)
            {
                Some(k) => {
                    let k = k.min(classifier.labels().len());
                    let tops: Vec<Vec<u8>> = (probabilities.iter())
                        .flat_map(|p| classifier.top(p, k))
                        .map(|class| {
                            format!("{}:{}:{}", class.score, class.index, class.label).into_bytes()
                        })
                        .collect();
                    results.push(("probabilities", vec![count, k], Values::Bytes(tops)));
                }
                None => {
                    let classes = classifier.labels().len();
                    let values = probabilities.into_iter().flatten().collect();
                    results.push((
                        "probabilities",
                        vec![count, classes],
                        Values::Floats(values),
                    ));
                }
            }
        }
        LoadedModel::Phonemizer(phonemizer) => {
            let words = texts(request, "word")?;
            aiaas_engine::phonemize::check("word", &words)?;
            let graphemes: usize = words.iter().map(|w| w.chars().count()).sum();
            let amount = graphemes as i64;
            let reservation = state.limiter.reserve(state.store(), key, amount).await?;
            let meter = Meter::new(state, key, &phonemizer.manifest.id, ROUTE, started);
            let work = async move { phonemizer.phonemes("word", words).await };
            let usage = move |_: &Vec<Vec<&str>>| Usage {
                prompt_tokens: amount,
                ..Usage::default()
            };
            let phonemes = meter.run(reservation, work, usage).await?;
            let phonemes: Vec<Vec<u8>> =
                phonemes.iter().map(|p| p.join(" ").into_bytes()).collect();
            results.push((
                "phonemes",
                shape_of(request, "word"),
                Values::Bytes(phonemes),
            ));
        }
    }
    Ok(results
        .into_iter()
        .filter_map(|(name, shape, values)| {
            let wanted = request.wants(name)?;
            let datatype = match values {
                Values::Floats(_) => "FP32",
                Values::Integers(_) => "INT64",
                Values::Bytes(_) => "BYTES",
            };
            Some(Output {
                name: name.to_string(),
                shape,
                values,
                datatype,
                binary: wanted.binary,
            })
        })
        .collect())
}

/// Refuses inputs and outputs the model does not have, naming the ones it has.
fn check_names(request: &InferRequest, inputs: &[Spec], outputs: &[Spec]) -> Result<(), ApiError> {
    let list = |specs: &[Spec]| {
        (specs.iter())
            .map(|s| format!("`{}` ({})", s.name, s.datatype))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(input) = (request.inputs.iter()).find(|i| !inputs.iter().any(|s| s.name == i.name))
    {
        return Err(ApiError::invalid(
            "inputs",
            format!(
                "this model has no input `{}`; its inputs: {}",
                input.name,
                list(inputs)
            ),
        ));
    }
    if let Some(output) =
        (request.outputs.iter()).find(|o| !outputs.iter().any(|s| s.name == o.name))
    {
        return Err(ApiError::invalid(
            "outputs",
            format!(
                "this model has no output `{}`; its outputs: {}",
                output.name,
                list(outputs)
            ),
        ));
    }
    Ok(())
}

/// The one element of an input that takes one at a time (a prompt, an audio file).
fn one<T>(mut elements: Vec<T>, name: &str) -> Result<T, ApiError> {
    match elements.len() {
        1 => Ok(elements.remove(0)),
        n => Err(ApiError::invalid(
            "inputs",
            format!("`{name}` takes one element per request; got {n}: send several requests"),
        )),
    }
}

/// The shape of the input `name`: an output with one element per input element has it too.
fn shape_of(request: &InferRequest, name: &str) -> Vec<usize> {
    request
        .input(name)
        .map_or_else(Vec::new, |input| input.shape.clone())
}

/// The elements of the BYTES input `name`.
fn bytes(request: &InferRequest, name: &str) -> Result<Vec<Vec<u8>>, ApiError> {
    let input = request.input(name).ok_or_else(|| {
        ApiError::invalid("inputs", format!("the input `{name}` (BYTES) is required"))
    })?;
    match &input.values {
        Values::Bytes(values) => Ok(values.clone()),
        _ => Err(wrong_type(input, "BYTES")),
    }
}

/// The elements of the BYTES input `name`, as UTF-8 text of at most `MAX_TEXT_BYTES` in all.
fn texts(request: &InferRequest, name: &str) -> Result<Vec<String>, ApiError> {
    let elements = bytes(request, name)?;
    let total: usize = elements.iter().map(Vec::len).sum();
    if total > MAX_TEXT_BYTES {
        return Err(ApiError::PayloadTooLarge(MAX_TEXT_BYTES));
    }
    (elements.into_iter().enumerate())
        .map(|(i, b)| {
            String::from_utf8(b).map_err(|_| {
                ApiError::invalid("inputs", format!("`{name}`[{i}] is not valid UTF-8 text"))
            })
        })
        .collect()
}

/// Prepared images: an FP32 tensor [N, 3, side, side], split per image.
fn prepared_images(input: &Input, side: usize) -> Result<Vec<Vec<f32>>, ApiError> {
    let Values::Floats(values) = &input.values else {
        return Err(wrong_type(input, "FP32"));
    };
    match input.shape.as_slice() {
        [count, 3, h, w] if *h == side && *w == side && *count > 0 => Ok(values
            .chunks(3 * side * side)
            .map(<[f32]>::to_vec)
            .collect()),
        shape => Err(ApiError::invalid(
            "inputs",
            format!("`input` has the shape {shape:?}; this model takes [N, 3, {side}, {side}]"),
        )),
    }
}

fn wrong_type(input: &Input, expected: &str) -> ApiError {
    ApiError::invalid(
        "inputs",
        format!(
            "`{}` is {}; this model takes {expected}",
            input.name, input.datatype
        ),
    )
}
