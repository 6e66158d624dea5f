//! `POST /v1/images/classifications`: the likeliest classes of one or several images, sent as
//! multipart files (`file`, repeated for several) or in JSON as base64 strings or data URLs
//! (`image`: one string or a list).

use std::sync::Arc;
use std::time::Instant;

use aiaas_engine::classify::{Class, MAX_IMAGES};
use aiaas_engine::{EngineError, LoadedClassifier};
use axum::extract::{FromRequest, Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use super::params::{multipart_error, AppMultipart};
use super::{ApiError, AppJson};
use crate::gate::{Meter, Metered, Usage};
use crate::store::KeyRecord;
use crate::telemetry::ModelLabel;
use crate::AppState;

const ROUTE: &str = "/v1/images/classifications";
/// The largest request: room for `MAX_IMAGES` photos of a few megabytes, base64 included.
pub const MAX_REQUEST_BYTES: usize = 50 * 1024 * 1024;
const DEFAULT_TOP_K: usize = 5;

/// The JSON form of a request.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClassificationRequest {
    #[schema(example = "efficientnet-lite0")]
    pub model: String,
    /// An image (base64, or a `data:image/...;base64,` URL), or a list of them.
    #[schema(value_type = Object)]
    pub image: OneOrMany,
    /// How many classes to return per image, likeliest first (default 5).
    pub top_k: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// The multipart form (for the API document).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ClassificationForm {
    /// An image (JPEG, PNG, GIF, BMP, WebP); repeat the field for several.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
    #[schema(example = "efficientnet-lite0")]
    model: String,
    top_k: Option<i64>,
}

/// A request's fields, from either form.
struct Classification {
    model: String,
    images: Vec<Vec<u8>>,
    top_k: usize,
}

/// The likeliest classes of each image.
#[utoipa::path(post, path = "/images/classifications", tag = "images",
    request_body(content(
        (ClassificationRequest = "application/json"),
        (ClassificationForm = "multipart/form-data"))),
    responses((status = 200, description = "Per image, in order, its `top_k` classes \
        (`label`, `index`, `score`), likeliest first", body = serde_json::Value)))]
pub async fn classify(
    State(state): State<AppState>,
    Extension(key): Extension<KeyRecord>,
    request: Request,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let is_multipart = (request.headers().get(header::CONTENT_TYPE))
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("multipart/form-data"));
    let request = if is_multipart {
        let AppMultipart(form) = AppMultipart::from_request(request, &()).await?;
        read_form(form).await?
    } else {
        let AppJson(body) = AppJson::<ClassificationRequest>::from_request(request, &()).await?;
        read_json(body)?
    };
    if !key.allows_model(&request.model) {
        return Err(EngineError::ModelNotFound(request.model).into());
    }
    let classifier = state.engine.classifier(&request.model).await?;
    let images = Images::Encoded(request.images);
    let probabilities =
        classify_metered(&state, &key, classifier.clone(), images, ROUTE, started).await?;
    let count = probabilities.len();
    let data: Vec<Value> = (probabilities.iter().enumerate())
        .map(|(index, p)| {
            let classes: Vec<Value> = classifier.top(p, request.top_k).iter().map(class).collect();
            json!({"object": "classification", "index": index, "classes": classes})
        })
        .collect();
    let body = json!({
        "object": "list",
        "model": &request.model,
        "data": data,
        "usage": {"images": count},
    });
    let mut response = axum::Json(body).into_response();
    response.extensions_mut().insert(Metered);
    response.extensions_mut().insert(ModelLabel(request.model));
    Ok(response)
}

/// Images to classify, as a request carries them.
pub(super) enum Images {
    /// Image files (the request field `image`).
    Encoded(Vec<Vec<u8>>),
    /// Tensors already prepared as the model's preprocessing makes them (the field `input`).
    Prepared(Vec<Vec<f32>>),
}

/// Class probabilities of images, billed to `key` by the image on `route`. The key's limits
/// are checked before any image is decoded.
pub(super) async fn classify_metered(
    state: &AppState,
    key: &KeyRecord,
    classifier: Arc<LoadedClassifier>,
    images: Images,
    route: &str,
    started: Instant,
) -> Result<Vec<Vec<f32>>, ApiError> {
    let reservation = state.limiter.reserve(state.store(), key, 0).await?;
    let (param, tensors) = match images {
        Images::Encoded(files) => ("image", classifier.prepare("image", files).await?),
        Images::Prepared(tensors) => ("input", tensors),
    };
    let count = tensors.len() as i64;
    let meter = Meter::new(state, key, &classifier.manifest.id, route, started);
    let work = async move { classifier.probabilities(param, tensors).await };
    let usage = move |_: &Vec<Vec<f32>>| Usage {
        images: count,
        ..Usage::default()
    };
    Ok(meter.run(reservation, work, usage).await?)
}

fn class(class: &Class) -> Value {
    json!({"label": class.label, "index": class.index, "score": class.score})
}

fn read_json(body: ClassificationRequest) -> Result<Classification, ApiError> {
    let strings = match body.image {
        OneOrMany::One(image) => vec![image],
        OneOrMany::Many(images) => images,
    };
    let several = strings.len() > 1;
    let images = (strings.iter().enumerate())
        .map(|(i, text)| {
            decode_base64(text).map_err(|reason| {
                let place = if several {
                    format!("image[{i}] ")
                } else {
                    "image ".into()
                };
                ApiError::invalid("image", format!("{place}{reason}"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Classification {
        model: body.model,
        images,
        top_k: top_k(body.top_k)?,
    })
}

/// The bytes of a base64 image or of a `data:` URL carrying one.
fn decode_base64(text: &str) -> Result<Vec<u8>, String> {
    let payload = match text.strip_prefix("data:") {
        Some(url) => {
            let (kind, data) =
                (url.split_once(',')).ok_or("is a data URL without a comma before its data")?;
            if !kind.ends_with(";base64") {
                return Err("is a data URL that is not base64-encoded (`;base64,`)".into());
            }
            data
        }
        None => text,
    };
    let payload: String = payload
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(payload)
        .map_err(|e| format!("is not valid base64 ({e}); send base64 or a data URL"))
}

fn top_k(asked: Option<i64>) -> Result<usize, ApiError> {
    match asked {
        None => Ok(DEFAULT_TOP_K),
        Some(k) if (1..=1000).contains(&k) => Ok(k as usize),
        Some(k) => Err(ApiError::invalid(
            "top_k",
            format!("top_k must be between 1 and 1000; got {k}"),
        )),
    }
}

async fn read_form(mut form: axum::extract::Multipart) -> Result<Classification, ApiError> {
    let mut images = Vec::new();
    let mut model = None;
    let mut asked_top_k = None;
    while let Some(mut field) = form.next_field().await.map_err(form_error)? {
        let name = field.name().unwrap_or_default().to_string();
        match name.as_str() {
            "file" | "file[]" | "image" | "image[]" => {
                if images.len() == MAX_IMAGES {
                    return Err(ApiError::invalid(
                        "file",
                        format!("at most {MAX_IMAGES} images are allowed per request"),
                    ));
                }
                let mut bytes = Vec::new();
                while let Some(chunk) = field.chunk().await.map_err(form_error)? {
                    bytes.extend_from_slice(&chunk);
                }
                images.push(bytes);
            }
            "model" => model = Some(field.text().await.map_err(form_error)?),
            "top_k" => {
                let value = field.text().await.map_err(form_error)?;
                asked_top_k = Some(value.trim().parse().map_err(|_| {
                    ApiError::invalid("top_k", format!("top_k must be a number; got `{value}`"))
                })?);
            }
            _ => {}
        }
    }
    if images.is_empty() {
        return Err(ApiError::invalid("file", "`file` is required"));
    }
    Ok(Classification {
        model: model.ok_or_else(|| ApiError::invalid("model", "`model` is required"))?,
        images,
        top_k: top_k(asked_top_k)?,
    })
}

fn form_error(error: axum::extract::multipart::MultipartError) -> ApiError {
    multipart_error(error, MAX_REQUEST_BYTES, "file")
}
