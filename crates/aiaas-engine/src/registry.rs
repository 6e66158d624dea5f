//! The models the server offers: manifests read from the repository, each with its place in
//! memory (see `residency`), loaded into a generator or an embedder when needed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::classify::LoadedClassifier;
use crate::embed::{EmbedLimits, LoadedEmbedder};
use crate::generate::{LoadedGenerator, WorkerLimits};
use crate::metrics::ModelMetrics;
use crate::phonemize::LoadedPhonemizer;
use crate::residency::{
    choose_evictions, release_all, LoadOutcome, LoadedModel, ModelState, ModelStatus, Next,
    ResidencyPolicy, Shortfall, Slot,
};
use crate::transcribe::{LoadedTranscriber, TranscribeLimits};
use crate::{EngineError, EngineMetrics, ModelManifest, ModelRepository, Result, Task};

/// What a caller told to retry while its model loads should wait, in seconds.
const LOADING_RETRY_AFTER_SECS: u64 = 2;

pub struct Engine {
    repository: ModelRepository,
    limits: WorkerLimits,
    embed_limits: EmbedLimits,
    policy: ResidencyPolicy,
    metrics: Arc<EngineMetrics>,
    slots: RwLock<HashMap<String, Arc<Slot>>>,
    /// Held while a load is admitted or models are unloaded, so that the memory budget is
    /// counted by one caller at a time. Taken before any slot's lock, never while holding one.
    admission: Mutex<()>,
}

impl Engine {
    pub fn new(
        repository: ModelRepository,
        limits: WorkerLimits,
        policy: ResidencyPolicy,
    ) -> Result<Self> {
        let engine = Self {
            repository,
            limits,
            embed_limits: EmbedLimits::default(),
            policy,
            metrics: Arc::default(),
            slots: RwLock::default(),
            admission: Mutex::default(),
        };
        engine.rescan()?;
        for id in &engine.policy.preload {
            if engine.find(id).is_none() {
                return Err(EngineError::invalid(
                    "preload",
                    format!(
                        "the preload model `{id}` is not in the repository {}",
                        engine.repository.root().display()
                    ),
                ));
            }
        }
        Ok(engine)
    }

    pub fn metrics(&self) -> &Arc<EngineMetrics> {
        &self.metrics
    }

    pub fn policy(&self) -> &ResidencyPolicy {
        &self.policy
    }

    /// Picks up models imported or removed since the last scan; loaded ones stay loaded.
    pub fn rescan(&self) -> Result<()> {
        let manifests = self.repository.list()?;
        let removed: Vec<Arc<Slot>> = {
            let mut slots = self.slots.write().expect("slot lock poisoned");
            let removed = slots
                .iter()
                .filter(|(id, _)| !manifests.iter().any(|m| &m.id == *id))
                .map(|(_, slot)| slot.clone())
                .collect();
            slots.retain(|id, _| manifests.iter().any(|m| &m.id == id));
            for manifest in manifests {
                if slots.contains_key(&manifest.id) {
                    continue;
                }
                let memory_bytes = std::fs::metadata(self.repository.weights_path(&manifest))
                    .map_or(0, |m| m.len());
                let preload = self.policy.preload.contains(&manifest.id);
                slots.insert(
                    manifest.id.clone(),
                    Arc::new(Slot::new(manifest, memory_bytes, preload)),
                );
            }
            removed
        };
        let gone: Vec<LoadedModel> = {
            let _admission = self.admit();
            removed
                .iter()
                .filter_map(|slot| self.evict(slot, "removed from the repository"))
                .collect()
        };
        if !gone.is_empty() {
            // Joining worker threads blocks; never on an async thread.
            std::thread::spawn(move || release_all(gone));
        }
        Ok(())
    }

    /// Every model, sorted by id, with its state.
    pub fn models(&self) -> Vec<ModelStatus> {
        let slots = self.slots.read().expect("slot lock poisoned");
        let mut models: Vec<_> = slots.values().map(|s| s.status()).collect();
        models.sort_by(|a, b| a.manifest.id.cmp(&b.manifest.id));
        models
    }

    pub fn status(&self, id: &str) -> Result<ModelStatus> {
        Ok(self.slot(id)?.status())
    }

    pub fn manifest(&self, id: &str) -> Result<ModelManifest> {
        Ok(self.slot(id)?.manifest.clone())
    }

    /// Ready to serve: every preloaded model is in memory.
    pub fn is_ready(&self) -> bool {
        self.policy.preload.iter().all(|id| {
            self.find(id)
                .is_some_and(|slot| slot.status().state == ModelState::Loaded)
        })
    }

    /// Loads the models marked `preload`, one after another.
    pub async fn preload(&self) -> Result<()> {
        for id in &self.policy.preload {
            self.load(id).await?;
        }
        Ok(())
    }

    /// The loaded generator for `id`, loading it if needed.
    pub async fn generator(&self, id: &str) -> Result<Arc<LoadedGenerator>> {
        match self.acquire(id, Some(self.policy.load_wait)).await? {
            LoadedModel::Generator(generator) => Ok(generator),
            other => Err(wrong_model(id, &other, "a text generation")),
        }
    }

    /// The loaded embedder for `id`, loading it if needed.
    pub async fn embedder(&self, id: &str) -> Result<Arc<LoadedEmbedder>> {
        match self.acquire(id, Some(self.policy.load_wait)).await? {
            LoadedModel::Embedder(embedder) => Ok(embedder),
            other => Err(wrong_model(id, &other, "an embedding")),
        }
    }

    /// The loaded speech recognizer for `id`, loading it if needed.
    pub async fn transcriber(&self, id: &str) -> Result<Arc<LoadedTranscriber>> {
        match self.acquire(id, Some(self.policy.load_wait)).await? {
            LoadedModel::Transcriber(transcriber) => Ok(transcriber),
            other => Err(wrong_model(id, &other, "a speech recognition")),
        }
    }

    /// The loaded image classifier for `id`, loading it if needed.
    pub async fn classifier(&self, id: &str) -> Result<Arc<LoadedClassifier>> {
        match self.acquire(id, Some(self.policy.load_wait)).await? {
            LoadedModel::Classifier(classifier) => Ok(classifier),
            other => Err(wrong_model(id, &other, "an image classification")),
        }
    }

    /// Any model, loaded if needed: what the inference protocol's routes serve.
    pub async fn any(&self, id: &str) -> Result<LoadedModel> {
        self.acquire(id, Some(self.policy.load_wait)).await
    }

    /// Loads `id` if it is not in memory, waiting as long as that takes.
    pub async fn load(&self, id: &str) -> Result<ModelStatus> {
        self.acquire(id, None).await?;
        self.status(id)
    }

    /// Unloads `id`; false if it was not loaded. A load in progress finishes first. Returns
    /// once the memory is freed, unless requests still hold the model (then it goes when they
    /// finish).
    pub async fn unload(&self, id: &str) -> Result<bool> {
        let slot = self.slot(id)?;
        loop {
            let unloaded = {
                let _admission = self.admit();
                match slot.loading() {
                    Some(outcome) => Err(outcome),
                    None => Ok(self.evict(&slot, "unload requested")),
                }
            };
            match unloaded {
                Ok(model) => {
                    let was_loaded = model.is_some();
                    release(model.into_iter().collect()).await;
                    return Ok(was_loaded);
                }
                Err(mut outcome) => {
                    let _ = outcome.wait_for(Option::is_some).await;
                }
            }
        }
    }

    /// Unloads, every so often, the models idle longer than the keep-alive. Runs until the
    /// engine is dropped.
    pub fn spawn_keep_alive(self: &Arc<Self>) {
        let Some(keep_alive) = self.policy.keep_alive else {
            return;
        };
        let period = (keep_alive / 4).clamp(Duration::from_millis(250), Duration::from_secs(30));
        let engine = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(period);
            loop {
                ticks.tick().await;
                let Some(engine) = engine.upgrade() else {
                    return;
                };
                engine.unload_idle(keep_alive).await;
            }
        });
    }

    async fn unload_idle(&self, keep_alive: Duration) {
        let Some(deadline) = Instant::now().checked_sub(keep_alive) else {
            return;
        };
        let idle: Vec<LoadedModel> = {
            let _admission = self.admit();
            self.all_slots()
                .iter()
                .filter(|slot| slot.idle_since_before(deadline))
                .filter_map(|slot| self.evict(slot, "idle past the keep-alive"))
                .collect()
        };
        release(idle).await;
    }

    /// The model `id` in memory: loading it if nobody is, waiting (at most `wait`) for a load
    /// in progress. A model unloaded again before this caller could take it is loaded again.
    async fn acquire(&self, id: &str, wait: Option<Duration>) -> Result<LoadedModel> {
        let slot = self.slot(id)?;
        let deadline = wait.map(|wait| tokio::time::Instant::now() + wait);
        loop {
            let mut outcome = match slot.next() {
                Next::Use(model) => return Ok(model),
                Next::Wait(outcome) => outcome,
                Next::Load => self.start_load(&slot)?,
            };
            let finished = outcome.wait_for(Option::is_some);
            let finished = match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, finished)
                    .await
                    .map_err(|_| self.loading(&slot))?,
                None => finished.await,
            };
            let failure = match finished {
                Ok(outcome) => outcome.clone().and_then(std::result::Result::err),
                Err(_) => Some("the load was abandoned".to_string()),
            };
            if let Some(message) = failure {
                return Err(EngineError::Internal(format!(
                    "loading the model `{id}` failed: {message}"
                )));
            }
        }
    }

    /// Admits a load of `slot`, evicting what must go to make room, and starts it in the
    /// background (it completes even if every caller stops waiting).
    fn start_load(&self, slot: &Arc<Slot>) -> Result<watch::Receiver<LoadOutcome>> {
        let (evicted, done) = {
            let _admission = self.admit();
            // Another caller may have got here first.
            match slot.next() {
                Next::Use(_) => return Ok(watch::channel(Some(Ok(()))).1),
                Next::Wait(outcome) => return Ok(outcome),
                Next::Load => {}
            }
            (self.make_room(slot)?, slot.start_loading())
        };
        let outcome = done.subscribe();
        let job = LoadJob {
            manifest: slot.manifest.clone(),
            dir: self.repository.model_dir(&slot.manifest),
            weights: self.repository.weights_path(&slot.manifest),
            limits: self.limits,
            embed_limits: self.embed_limits,
            metrics: self.metrics.model(&slot.manifest.id),
        };
        let (slot, metrics) = (slot.clone(), self.metrics.clone());
        tokio::spawn(async move {
            let loaded = tokio::task::spawn_blocking(move || {
                // What was evicted for room goes first, so the two never share memory.
                release_all(evicted);
                job.run()
            })
            .await
            .unwrap_or_else(|e| {
                Err(EngineError::Internal(format!(
                    "model loading panicked: {e}"
                )))
            });
            let id = &slot.manifest.id;
            let report = match loaded {
                Ok(model) => {
                    slot.finish_loading(Some(model));
                    metrics.set_loaded(id, Some(slot.memory_bytes));
                    Ok(())
                }
                Err(e) => {
                    tracing::error!(model = %id, "loading failed: {e}");
                    slot.finish_loading(None);
                    Err(e.to_string())
                }
            };
            done.send_replace(Some(report));
        });
        Ok(outcome)
    }

    /// Evicts the least recently used idle models until `slot` fits the memory budget.
    fn make_room(&self, slot: &Arc<Slot>) -> Result<Vec<LoadedModel>> {
        let Some(budget) = self.policy.max_model_memory else {
            return Ok(Vec::new());
        };
        let others: Vec<Arc<Slot>> = self
            .all_slots()
            .into_iter()
            .filter(|other| !Arc::ptr_eq(other, slot))
            .collect();
        let holdings: Vec<_> = others.iter().map(|other| other.holding()).collect();
        let chosen =
            choose_evictions(&holdings, slot.memory_bytes, budget).map_err(|shortfall| {
                let (model, needed) = (slot.manifest.id.clone(), slot.memory_bytes);
                match shortfall {
                    Shortfall::TooLarge => EngineError::ModelTooLarge {
                        model,
                        needed,
                        budget,
                    },
                    Shortfall::Busy => EngineError::ModelMemoryBusy {
                        model,
                        needed,
                        budget,
                    },
                }
            })?;
        Ok(chosen
            .into_iter()
            .filter_map(|index| self.evict(&others[index], "memory budget"))
            .collect())
    }

    /// Takes a loaded model out of its slot and accounts for it; the caller releases it.
    fn evict(&self, slot: &Slot, reason: &str) -> Option<LoadedModel> {
        let model = slot.evict()?;
        self.metrics.set_loaded(&slot.manifest.id, None);
        tracing::info!(model = %slot.manifest.id, reason, "model unloaded");
        Some(model)
    }

    fn loading(&self, slot: &Slot) -> EngineError {
        EngineError::Loading {
            model: slot.manifest.id.clone(),
            retry_after_secs: LOADING_RETRY_AFTER_SECS,
        }
    }

    fn admit(&self) -> MutexGuard<'_, ()> {
        self.admission.lock().expect("admission lock poisoned")
    }

    fn all_slots(&self) -> Vec<Arc<Slot>> {
        let slots = self.slots.read().expect("slot lock poisoned");
        slots.values().cloned().collect()
    }

    fn find(&self, id: &str) -> Option<Arc<Slot>> {
        let slots = self.slots.read().expect("slot lock poisoned");
        slots.get(id).cloned()
    }

    fn slot(&self, id: &str) -> Result<Arc<Slot>> {
        if let Some(slot) = self.find(id) {
            return Ok(slot);
        }
        self.rescan()?;
        self.find(id)
            .ok_or_else(|| EngineError::ModelNotFound(id.to_string()))
    }
}

/// The error for a request that names a model of another kind than its route serves.
fn wrong_model(id: &str, loaded: &LoadedModel, wanted: &str) -> EngineError {
    let (is, routes) = match loaded {
        LoadedModel::Generator(_) => (
            "a text generation model",
            "/v1/chat/completions or /v1/completions",
        ),
        LoadedModel::Embedder(_) => ("an embedding model", "/v1/embeddings"),
        LoadedModel::Transcriber(_) => ("a speech recognition model", "/v1/audio/transcriptions"),
        LoadedModel::Classifier(_) => (
            "an image classification model",
            "/v1/images/classifications",
        ),
        LoadedModel::Phonemizer(_) => ("a grapheme-to-phoneme model", "/v2/models/{id}/infer"),
    };
    EngineError::invalid(
        "model",
        format!("`{id}` is {is}, not {wanted} model; use {routes}"),
    )
}

/// Frees unloaded models off the async threads and waits until they are gone.
async fn release(models: Vec<LoadedModel>) {
    if models.is_empty() {
        return;
    }
    let freed = tokio::task::spawn_blocking(move || release_all(models));
    if let Err(e) = freed.await {
        tracing::error!("unloading a model panicked: {e}");
    }
}

/// Everything a load needs, detached from the engine so it can run on a blocking thread.
struct LoadJob {
    manifest: ModelManifest,
    dir: PathBuf,
    weights: PathBuf,
    limits: WorkerLimits,
    embed_limits: EmbedLimits,
    metrics: ModelMetrics,
}

impl LoadJob {
    fn run(self) -> Result<LoadedModel> {
        match self.manifest.task {
            Task::Embedding => {
                LoadedEmbedder::load(self.manifest, &self.dir, self.embed_limits, self.metrics)
                    .map(|e| LoadedModel::Embedder(Arc::new(e)))
            }
            Task::Transcription => LoadedTranscriber::load(
                self.manifest,
                &self.dir,
                TranscribeLimits::default(),
                self.metrics,
            )
            .map(|t| LoadedModel::Transcriber(Arc::new(t))),
            Task::ImageClassification => {
                LoadedClassifier::load(self.manifest, &self.dir, self.metrics)
                    .map(|c| LoadedModel::Classifier(Arc::new(c)))
            }
            Task::GraphemeToPhoneme => {
                LoadedPhonemizer::load(self.manifest, &self.dir, self.metrics)
                    .map(|p| LoadedModel::Phonemizer(Arc::new(p)))
            }
            Task::Chat | Task::Completion => {
                LoadedGenerator::load(self.manifest, &self.weights, self.limits, self.metrics)
                    .map(|g| LoadedModel::Generator(Arc::new(g)))
            }
        }
    }
}
