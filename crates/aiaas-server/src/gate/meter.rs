//! Metering: one durable usage row per keyed request, written before the response completes
//! (or, for a stream the client abandoned, as soon as the generation stops), and the settling
//! of the request's token reservation to what was really used.

use std::future::Future;
use std::time::Instant;

use aiaas_engine::generate::GenerationUsage;
use aiaas_engine::EngineError;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::Reservation;
use crate::store::{KeyRecord, Store, StoreError, UsageRecord};
use crate::{clock, AppState};

/// What one request used, as its usage row records it.
#[derive(Debug, Default, Clone, Copy)]
pub struct Usage {
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    /// The length of the audio a speech request carried.
    pub audio_seconds: f64,
    /// The images an image request classified.
    pub images: i64,
}

/// Marks a response whose usage a handler has recorded itself.
#[derive(Clone, Copy)]
pub struct Metered;

pub struct Meter {
    store: Store,
    key_id: String,
    model: String,
    route: String,
    started: Instant,
}

impl Meter {
    pub fn new(
        state: &AppState,
        key: &KeyRecord,
        model: &str,
        route: &str,
        started: Instant,
    ) -> Self {
        Self {
            store: state.store().clone(),
            key_id: key.id.clone(),
            model: model.to_string(),
            route: route.to_string(),
            started,
        }
    }

    pub async fn record(
        &self,
        prompt_tokens: i64,
        completion_tokens: i64,
        status: u16,
    ) -> Result<(), StoreError> {
        let usage = Usage {
            prompt_tokens,
            completion_tokens,
            ..Usage::default()
        };
        self.insert(&usage, status).await
    }

    async fn insert(&self, usage: &Usage, status: u16) -> Result<(), StoreError> {
        self.store
            .insert_usage(&UsageRecord {
                key_id: self.key_id.clone(),
                model: self.model.clone(),
                route: self.route.clone(),
                created_at: clock::now(),
                prompt_tokens: usage.prompt_tokens,
                completion_tokens: usage.completion_tokens,
                audio_seconds: usage.audio_seconds,
                images: usage.images,
                status,
                latency_ms: self.started.elapsed().as_millis() as i64,
            })
            .await
    }

    /// Runs `work` in its own task and, if it succeeds, records the usage `usage` reads from
    /// its result and settles the reservation to its tokens: a client that leaves early is still
    /// billed for the work done, and the row is never lost.
    pub async fn run<T: Send + 'static>(
        self,
        reservation: Reservation,
        work: impl Future<Output = Result<T, EngineError>> + Send + 'static,
        usage: impl FnOnce(&T) -> Usage + Send + 'static,
    ) -> Result<T, EngineError> {
        let task = tokio::spawn(async move {
            let done = work.await?;
            let usage = usage(&done);
            if let Err(e) = self.insert(&usage, 200).await {
                tracing::error!("could not record usage: {e}");
            }
            reservation.settle(usage.prompt_tokens + usage.completion_tokens);
            Ok(done)
        });
        (task.await).map_err(|e| EngineError::Internal(format!("the metered work failed: {e}")))?
    }

    /// Waits (in its own task, so a departed client cannot stop it) for the generation's final
    /// counts, records them and settles the reservation. The handle resolves once the row is
    /// durable.
    pub fn spawn(
        self,
        usage: oneshot::Receiver<GenerationUsage>,
        reservation: Reservation,
    ) -> JoinHandle<()> {
        tokio::spawn(async move {
            // A worker that vanished without reporting processed nothing we can count.
            let usage = usage.await.unwrap_or_default();
            let (prompt, completion) = (usage.prompt_tokens as i64, usage.completion_tokens as i64);
            if let Err(e) = self.record(prompt, completion, 200).await {
                tracing::error!("could not record usage: {e}");
            }
            reservation.settle(prompt + completion);
        })
    }
}
