//! Image classifiers: a loaded network with its class names and its preprocessing, behind a
//! batch queue (`batch_queue`), so that images of requests arriving together share forward
//! passes. Decoding and preparing the uploads happens before the queue, on the callers' blocking
//! threads, so the worker only runs the network.

use std::path::Path;
use std::sync::Arc;

use aiaas_models::vision::{softmax, EfficientNet, ImagePreprocessing};
use tokio::sync::Semaphore;

use crate::batch_queue::{BatchModel, BatchQueue};
use crate::in_use::InUse;
use crate::metrics::ModelMetrics;
use crate::{EngineError, ModelManifest, Result};

/// Images one request may carry.
pub const MAX_IMAGES: usize = 16;
/// Images per forward pass.
const BATCH_IMAGES: usize = 16;
/// Requests that may wait before new ones are refused: with `MAX_IMAGES` prepared images each
/// (600 KB apiece at 224×224) that bounds the queue near 300 MB.
const MAX_QUEUED: usize = 32;

/// One class of an image, as a caller sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Class {
    pub index: usize,
    pub label: String,
    pub score: f32,
}

pub struct LoadedClassifier {
    pub manifest: ModelManifest,
    preprocessing: ImagePreprocessing,
    labels: Arc<[String]>,
    in_use: InUse,
    /// Uploads decoded at once: a 50-megapixel photo takes 150 MB while it is decoded, so
    /// requests take turns, one per core.
    decoding: Semaphore,
    batches: BatchQueue<NetworkBatches>,
}

impl LoadedClassifier {
    pub fn load(manifest: ModelManifest, dir: &Path, metrics: ModelMetrics) -> Result<Self> {
        let started = std::time::Instant::now();
        let network = EfficientNet::load(&dir.join(&manifest.file))?;
        let preprocessing =
            (manifest.preprocessing.clone()).unwrap_or_else(|| network.preprocessing());
        if preprocessing.crop as usize != network.input_size() {
            return Err(EngineError::Manifest {
                path: dir.display().to_string(),
                message: format!(
                    "the preprocessing crops {} pixels but the network takes {}",
                    preprocessing.crop,
                    network.input_size()
                ),
            });
        }
        let labels = read_labels(dir, &manifest, network.classes())?;
        let batches = NetworkBatches(network);
        let batches = BatchQueue::start(&manifest.id, batches, BATCH_IMAGES, MAX_QUEUED, metrics)?;
        tracing::info!(model = %manifest.id, elapsed_ms = started.elapsed().as_millis() as u64, "model loaded");
        Ok(Self {
            manifest,
            preprocessing,
            labels,
            in_use: InUse::default(),
            decoding: Semaphore::new(std::thread::available_parallelism().map_or(1, |n| n.get())),
            batches,
        })
    }

    pub(crate) fn in_use(&self) -> &InUse {
        &self.in_use
    }

    pub fn preprocessing(&self) -> &ImagePreprocessing {
        &self.preprocessing
    }

    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Decodes and prepares uploaded images (off the async threads). A bad image is an
    /// `InvalidRequest` naming `param` and the image's place in the request.
    pub async fn prepare(
        &self,
        param: &'static str,
        images: Vec<Vec<u8>>,
    ) -> Result<Vec<Vec<f32>>> {
        check_count(param, images.len())?;
        let _turn = (self.decoding.acquire().await)
            .map_err(|_| EngineError::Internal("the model closed".into()))?;
        let preprocessing = self.preprocessing.clone();
        let several = images.len() > 1;
        let work = tokio::task::spawn_blocking(move || {
            (images.iter().enumerate())
                .map(|(i, image)| {
                    preprocessing.prepare(image).map_err(|e| {
                        let place = if several {
                            format!("{param}[{i}]: ")
                        } else {
                            String::new()
                        };
                        EngineError::invalid(param, format!("{place}{e}"))
                    })
                })
                .collect()
        });
        work.await
            .map_err(|e| EngineError::Internal(format!("preparing the images failed: {e}")))?
    }

    /// Class probabilities of prepared images (each `3 × crop × crop`, as `prepare` makes
    /// them), in order.
    pub async fn probabilities(
        &self,
        param: &'static str,
        tensors: Vec<Vec<f32>>,
    ) -> Result<Vec<Vec<f32>>> {
        check_count(param, tensors.len())?;
        let expected = self.preprocessing.tensor_len();
        if let Some(i) = tensors.iter().position(|t| t.len() != expected) {
            return Err(EngineError::invalid(
                param,
                format!(
                    "{param}[{i}] has {} values; this model takes 3×{crop}×{crop} = {expected}",
                    tensors[i].len(),
                    crop = self.preprocessing.crop
                ),
            ));
        }
        if let Some(i) = tensors
            .iter()
            .position(|t| t.iter().any(|v| !v.is_finite()))
        {
            return Err(EngineError::invalid(
                param,
                format!("{param}[{i}] holds a value that is not a finite number"),
            ));
        }
        let _in_use = self.in_use.enter();
        self.batches.run(tensors).await
    }

    /// The `k` likeliest classes of each image, likeliest first.
    pub fn top(&self, probabilities: &[f32], k: usize) -> Vec<Class> {
        let mut order: Vec<usize> = (0..probabilities.len()).collect();
        order.sort_by(|&a, &b| {
            probabilities[b]
                .total_cmp(&probabilities[a])
                .then(a.cmp(&b))
        });
        (order.into_iter().take(k))
            .map(|index| Class {
                index,
                label: self.labels[index].clone(),
                score: probabilities[index],
            })
            .collect()
    }
}

fn check_count(param: &'static str, count: usize) -> Result<()> {
    match count {
        0 => Err(EngineError::invalid(param, "no image given")),
        1..=MAX_IMAGES => Ok(()),
        _ => Err(EngineError::invalid(
            param,
            format!("{count} images given; at most {MAX_IMAGES} are allowed per request"),
        )),
    }
}

/// The class names from the model's labels file, one a line; numbered names when it has none.
fn read_labels(dir: &Path, manifest: &ModelManifest, classes: usize) -> Result<Arc<[String]>> {
    let Some(file) = &manifest.labels else {
        return Ok((0..classes).map(|i| format!("class {i}")).collect());
    };
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path)
        .map_err(EngineError::io(format!("reading {}", path.display())))?;
    let labels: Arc<[String]> = text.lines().map(str::to_owned).collect();
    if labels.len() != classes {
        return Err(EngineError::Manifest {
            path: path.display().to_string(),
            message: format!(
                "{} labels for a network with {classes} classes",
                labels.len()
            ),
        });
    }
    Ok(labels)
}

/// The network as the batching worker drives it: an image costs one place in the batch.
struct NetworkBatches(EfficientNet);

impl BatchModel for NetworkBatches {
    type Item = Vec<f32>;
    type Output = Vec<f32>;

    fn cost(&self, _image: &Vec<f32>) -> usize {
        1
    }

    fn run(&self, images: &[&Vec<f32>]) -> Result<Vec<Vec<f32>>> {
        let batch: Vec<f32> = images
            .iter()
            .flat_map(|image| image.iter().copied())
            .collect();
        let logits = self.0.forward(&batch, images.len());
        Ok(logits.chunks(self.0.classes()).map(softmax).collect())
    }
}
