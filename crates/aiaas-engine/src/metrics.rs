//! Counters the engine keeps for operators; the server renders them on `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct EngineMetrics {
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub generations_finished: AtomicU64,
    /// Generations stopped because the caller went away (closed the stream or the connection).
    pub generations_cancelled: AtomicU64,
}

impl EngineMetrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
