//! Metering: one durable usage row per keyed request, written before the response completes
//! (or, for a stream the client abandoned, as soon as the generation stops), and the settling
//! of the request's token reservation to what was really used.

use std::time::Instant;

use aiaas_engine::generate::GenerationUsage;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::Reservation;
use crate::store::{KeyRecord, Store, StoreError, UsageRecord};
use crate::{clock, AppState};

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
        self.insert(prompt_tokens, completion_tokens, 0.0, 0, status)
            .await
    }

    /// A speech request's row: the audio's length, and the tokens of its text.
    pub async fn record_audio(
        &self,
        audio_seconds: f64,
        text_tokens: i64,
        status: u16,
    ) -> Result<(), StoreError> {
        self.insert(0, text_tokens, audio_seconds, 0, status).await
    }

    /// An image request's row: the images classified.
    pub async fn record_images(&self, images: i64, status: u16) -> Result<(), StoreError> {
        self.insert(0, 0, 0.0, images, status).await
    }

    async fn insert(
        &self,
        prompt_tokens: i64,
        completion_tokens: i64,
        audio_seconds: f64,
        images: i64,
        status: u16,
    ) -> Result<(), StoreError> {
        self.store
            .insert_usage(&UsageRecord {
                key_id: self.key_id.clone(),
                model: self.model.clone(),
                route: self.route.clone(),
                created_at: clock::now(),
                prompt_tokens,
                completion_tokens,
                audio_seconds,
                images,
                status,
                latency_ms: self.started.elapsed().as_millis() as i64,
            })
            .await
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
