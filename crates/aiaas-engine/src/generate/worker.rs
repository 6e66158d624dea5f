//! The per-model generation worker: a thread that owns the model's sequences in flight.
//!
//! Callers submit jobs through a bounded channel (full ⇒ the model is overloaded). The thread
//! admits up to `max_active` sequences and advances each by one step per round — a prefill
//! chunk or one decoded token — so a long prompt does not freeze the other streams. A sequence
//! whose caller has gone away (its event receiver dropped) is stopped at its next step.

use std::collections::VecDeque;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use aiaas_models::{Decoder, KvCache, TokenDecoder, Tokenizer};
use tokio::sync::mpsc;

use super::{
    Event, FinishReason, Finished, GenerationJob, GenerationUsage, Sampler, StopMatcher, StopScan,
    TokenEvent,
};
use crate::metrics::ModelMetrics;
use crate::{EngineError, Result};

#[derive(Debug, Clone, Copy)]
pub struct WorkerLimits {
    /// Sequences advanced together; more wait in the queue.
    pub max_active: usize,
    /// Jobs that may wait for a slot before new ones are refused.
    pub max_queued: usize,
    /// Prompt tokens processed per step of a prefilling sequence.
    pub prefill_chunk: usize,
    /// The most tokens one request may generate; `None`: up to the end of the context.
    pub max_completion_tokens: Option<usize>,
}

impl Default for WorkerLimits {
    fn default() -> Self {
        Self {
            max_active: 16,
            max_queued: 64,
            prefill_chunk: 256,
            max_completion_tokens: None,
        }
    }
}

pub struct GenerationWorker {
    model_id: String,
    queue_depth: prometheus::IntGauge,
    jobs: Option<mpsc::Sender<GenerationJob>>,
    thread: Option<JoinHandle<()>>,
}

impl GenerationWorker {
    pub fn spawn(
        model_id: String,
        decoder: Arc<Decoder>,
        tokenizer: Arc<Tokenizer>,
        limits: WorkerLimits,
        metrics: ModelMetrics,
    ) -> Result<Self> {
        let (jobs, receiver) = mpsc::channel(limits.max_queued.max(1));
        let runner = Runner {
            decoder,
            tokenizer,
            limits,
            metrics: metrics.clone(),
            model_id: model_id.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("gen-{model_id}"))
            .spawn(move || runner.run(receiver))
            .map_err(EngineError::io("starting the generation worker"))?;
        Ok(Self {
            model_id,
            queue_depth: metrics.queue_depth,
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    pub fn submit(&self, job: GenerationJob) -> Result<()> {
        let jobs = self
            .jobs
            .as_ref()
            .expect("the sender lives until drop. This is a bug.");
        jobs.try_send(job)
            .map_err(|_| EngineError::Overloaded(self.model_id.clone()))?;
        self.queue_depth.inc();
        Ok(())
    }
}

impl GenerationWorker {
    /// Stops taking jobs and waits for the thread to finish its sequences and exit, which
    /// frees the model's weights. Blocking.
    pub fn shutdown(mut self) {
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for GenerationWorker {
    fn drop(&mut self) {
        // Closing the channel lets the thread finish its sequences and exit on its own; a drop
        // may happen on an async thread, which must not wait for that.
        self.jobs.take();
    }
}

/// Tells the job's owner how many tokens were processed; prompt tokens count once prefilled.
fn report(job: &mut GenerationJob, prompt_tokens: usize, completion_tokens: usize) {
    if let Some(usage) = job.usage.take() {
        let _ = usage.send(GenerationUsage {
            prompt_tokens,
            completion_tokens,
        });
    }
}

struct Runner {
    decoder: Arc<Decoder>,
    tokenizer: Arc<Tokenizer>,
    limits: WorkerLimits,
    metrics: ModelMetrics,
    model_id: String,
}

struct Sequence {
    job: GenerationJob,
    sampler: Sampler,
    cache: KvCache,
    prefilled: usize,
    last_token: u32,
    generated: usize,
    text: TokenDecoder,
    stop: StopMatcher,
    /// When the last token was sent, for inter-token latency.
    last_token_at: Option<Instant>,
}

enum Step {
    Continue,
    Done,
}

impl Runner {
    fn run(self, mut receiver: mpsc::Receiver<GenerationJob>) {
        let mut waiting: VecDeque<GenerationJob> = VecDeque::new();
        let mut active: Vec<Sequence> = Vec::new();
        loop {
            if active.is_empty() && waiting.is_empty() {
                match receiver.blocking_recv() {
                    Some(job) => waiting.push_back(job),
                    None => return,
                }
            }
            while let Ok(job) = receiver.try_recv() {
                waiting.push_back(job);
            }
            while active.len() < self.limits.max_active {
                let Some(job) = waiting.pop_front() else {
                    break;
                };
                self.metrics.queue_depth.dec();
                if job.events.is_closed() {
                    self.cancelled(0);
                    continue;
                }
                active.push(self.admit(job));
            }
            self.metrics.batch_size.observe(active.len() as f64);
            active.retain_mut(|seq| matches!(self.step(seq), Step::Continue));
        }
    }

    fn admit(&self, job: GenerationJob) -> Sequence {
        self.metrics.prompt_tokens.inc_by(job.prompt.len() as u64);
        Sequence {
            sampler: Sampler::new(job.params.clone()),
            stop: StopMatcher::new(job.params.stop.clone()),
            cache: KvCache::new(&self.decoder.config),
            prefilled: 0,
            last_token: 0,
            generated: 0,
            text: TokenDecoder::default(),
            last_token_at: None,
            job,
        }
    }

    fn cancelled(&self, generated: usize) {
        self.metrics.generations_cancelled.inc();
        tracing::info!(
            model = %self.model_id,
            generated,
            "client went away; generation cancelled"
        );
    }

    fn step(&self, seq: &mut Sequence) -> Step {
        let step = if seq.job.events.is_closed() {
            self.cancelled(seq.generated);
            Step::Done
        } else {
            self.advance(seq).unwrap_or_else(|e| {
                tracing::error!(model = %self.model_id, "generation failed: {e}");
                let _ = seq.job.events.send(Event::Failed(e.to_string()));
                Step::Done
            })
        };
        if matches!(step, Step::Done) {
            report(&mut seq.job, seq.prefilled, seq.generated);
        }
        step
    }

    fn advance(&self, seq: &mut Sequence) -> Result<Step> {
        let prompt_len = seq.job.prompt.len();
        let mut logits = if seq.prefilled < prompt_len {
            let end = (seq.prefilled + self.limits.prefill_chunk).min(prompt_len);
            let logits = self
                .decoder
                .forward(&seq.job.prompt[seq.prefilled..end], &mut seq.cache)?;
            seq.prefilled = end;
            if end < prompt_len {
                return Ok(Step::Continue);
            }
            logits
        } else {
            self.decoder.forward(&[seq.last_token], &mut seq.cache)?
        };
        let (token, logprob) = seq.sampler.sample(&mut logits);
        seq.generated += 1;
        seq.last_token = token;
        self.metrics.generated_tokens.inc();
        let now = Instant::now();
        match seq.last_token_at.replace(now) {
            None => self
                .metrics
                .time_to_first_token
                .observe((now - seq.job.submitted).as_secs_f64()),
            Some(last) => self
                .metrics
                .inter_token_latency
                .observe((now - last).as_secs_f64()),
        }

        if self.tokenizer.is_end_of_generation(token) {
            return Ok(self.finish(seq, FinishReason::Stop, String::new()));
        }
        let piece = seq.text.push(&self.tokenizer, token);
        let (text, stopped) = match seq.stop.push(&piece) {
            StopScan::Continue(text) => (text, false),
            StopScan::Stopped(text) => (text, true),
        };
        let sent = seq.job.events.send(Event::Token(TokenEvent {
            token,
            text,
            logprob,
        }));
        if sent.is_err() {
            self.cancelled(seq.generated);
            return Ok(Step::Done);
        }
        if stopped {
            return Ok(self.finish(seq, FinishReason::Stop, String::new()));
        }
        let out_of_context = seq.cache.len() + 1 >= self.decoder.config.context_length;
        if seq.generated >= seq.sampler.params().max_tokens || out_of_context {
            let tail = seq.text.finish();
            let tail = match seq.stop.push(&tail) {
                StopScan::Continue(text) => text + &seq.stop.finish(),
                StopScan::Stopped(text) => text,
            };
            return Ok(self.finish(seq, FinishReason::Length, tail));
        }
        Ok(Step::Continue)
    }

    fn finish(&self, seq: &mut Sequence, reason: FinishReason, text: String) -> Step {
        self.metrics.generations_finished.inc();
        let _ = seq.job.events.send(Event::Finished(Finished {
            reason,
            text,
            prompt_tokens: seq.job.prompt.len(),
            completion_tokens: seq.generated,
        }));
        Step::Done
    }
}
