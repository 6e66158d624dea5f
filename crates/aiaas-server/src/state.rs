//! Shared state handed to every handler.

use std::sync::Arc;

use aiaas_engine::Engine;

use crate::gate::KeyStore;

#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<Engine>,
    pub keys: Arc<KeyStore>,
}

impl AppState {
    pub fn new(engine: Arc<Engine>, keys: Arc<KeyStore>) -> Self {
        Self { engine, keys }
    }
}
