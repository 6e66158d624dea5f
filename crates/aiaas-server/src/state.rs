//! Shared state handed to every handler.

use std::sync::Arc;

use aiaas_engine::{Engine, LoadedGenerator, ModelManifest};

use crate::api::ApiError;
use crate::gate::{Keys, Limiter};
use crate::storage::FileStorage;
use crate::store::{KeyRecord, Store};
use crate::telemetry::HttpMetrics;

#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<Engine>,
    pub keys: Keys,
    pub limiter: Arc<Limiter>,
    pub http_metrics: Arc<HttpMetrics>,
    pub files: Arc<FileStorage>,
}

impl AppState {
    pub fn new(engine: Arc<Engine>, keys: Keys, files: FileStorage) -> Self {
        let http_metrics = Arc::new(HttpMetrics::register(engine.metrics().registry()));
        Self {
            engine,
            keys,
            limiter: Arc::default(),
            http_metrics,
            files: Arc::new(files),
        }
    }

    pub fn store(&self) -> &Store {
        self.keys.store()
    }

    /// The manifest of `model` if the key may use it. A model outside the key's scope is
    /// reported exactly like a missing one, so keys cannot probe what exists.
    pub fn manifest_for(&self, key: &KeyRecord, model: &str) -> Result<ModelManifest, ApiError> {
        if !key.allows_model(model) {
            return Err(aiaas_engine::EngineError::ModelNotFound(model.to_string()).into());
        }
        Ok(self.engine.manifest(model)?)
    }

    /// The generator for `model` if the key may use it (reported like `manifest_for`).
    pub async fn generator_for(
        &self,
        key: &KeyRecord,
        model: &str,
    ) -> Result<Arc<LoadedGenerator>, ApiError> {
        if !key.allows_model(model) {
            return Err(aiaas_engine::EngineError::ModelNotFound(model.to_string()).into());
        }
        Ok(self.engine.generator(model).await?)
    }
}
