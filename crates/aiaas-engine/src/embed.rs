//! Embedding models: a loaded sentence encoder and the worker thread that batches every
//! caller's inputs together by a token budget.
//!
//! Requests arriving together share forward passes: the worker drains its queue, fills one
//! packed batch with up to `batch_tokens` tokens taken from the waiting requests in arrival
//! order (a request larger than the budget spans several batches), and sends each caller its own
//! vectors, in its own order, once all of them are done. Packing means no padding, so mixing
//! short and long inputs wastes nothing.

use std::collections::VecDeque;
use std::sync::Arc;
use std::thread::JoinHandle;

use aiaas_models::SentenceEncoder;
use tokio::sync::{mpsc, oneshot};

use crate::in_use::InUse;
use crate::metrics::ModelMetrics;
use crate::{EngineError, ModelManifest, Result};

/// OpenAI's limit on inputs per embeddings request.
pub const MAX_INPUTS: usize = 2048;

#[derive(Debug, Clone, Copy)]
pub struct EmbedLimits {
    /// Tokens per forward pass.
    pub batch_tokens: usize,
    /// Requests that may wait before new ones are refused.
    pub max_queued: usize,
}

impl Default for EmbedLimits {
    fn default() -> Self {
        Self {
            batch_tokens: 8192,
            max_queued: 256,
        }
    }
}

/// What a caller asks to embed.
pub enum EmbedInput {
    Texts(Vec<String>),
    /// Token ids without special tokens; they are framed like a text's.
    Tokens(Vec<Vec<u32>>),
}

pub struct LoadedEmbedder {
    pub manifest: ModelManifest,
    encoder: Arc<SentenceEncoder>,
    queue_depth: prometheus::IntGauge,
    in_use: InUse,
    jobs: mpsc::Sender<EmbedJob>,
    /// Declared after `jobs`, so the channel closes (and the thread ends) before the join.
    _worker: WorkerThread,
}

struct EmbedJob {
    sequences: Vec<Vec<u32>>,
    reply: oneshot::Sender<Result<Vec<Vec<f32>>>>,
}

impl LoadedEmbedder {
    pub fn load(
        manifest: ModelManifest,
        dir: &std::path::Path,
        limits: EmbedLimits,
        metrics: ModelMetrics,
    ) -> Result<Self> {
        let started = std::time::Instant::now();
        let encoder = Arc::new(SentenceEncoder::load(dir)?);
        let (jobs, receiver) = mpsc::channel(limits.max_queued.max(1));
        let batcher = Batcher {
            encoder: encoder.clone(),
            metrics: metrics.clone(),
            batch_tokens: limits.batch_tokens.max(encoder.settings.max_tokens),
        };
        let thread = std::thread::Builder::new()
            .name(format!("embed-{}", manifest.id))
            .spawn(move || batcher.run(receiver))
            .map_err(EngineError::io("starting the embedding worker"))?;
        tracing::info!(model = %manifest.id, elapsed_ms = started.elapsed().as_millis() as u64, "model loaded");
        Ok(Self {
            manifest,
            encoder,
            queue_depth: metrics.queue_depth,
            in_use: InUse::default(),
            jobs,
            _worker: WorkerThread(Some(thread)),
        })
    }

    pub(crate) fn in_use(&self) -> &InUse {
        &self.in_use
    }

    pub fn dimensions(&self) -> usize {
        self.encoder.dimensions()
    }

    /// Tokenizes and checks every input (off the async threads: 2,048 long texts take a while).
    pub async fn tokenize(&self, input: EmbedInput) -> Result<Vec<Vec<u32>>> {
        let encoder = self.encoder.clone();
        tokio::task::spawn_blocking(move || tokenize(&encoder, input))
            .await
            .map_err(|e| EngineError::Internal(format!("tokenizing panicked: {e}")))?
    }

    /// Queues tokenized inputs for the batching worker and waits for their vectors, in order.
    pub async fn embed(&self, sequences: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>> {
        let _in_use = self.in_use.enter();
        let (reply, receiver) = oneshot::channel();
        self.jobs
            .try_send(EmbedJob { sequences, reply })
            .map_err(|_| EngineError::Overloaded(self.manifest.id.clone()))?;
        self.queue_depth.inc();
        receiver
            .await
            .map_err(|_| EngineError::Internal("the embedding worker stopped".into()))?
    }
}

fn tokenize(encoder: &SentenceEncoder, input: EmbedInput) -> Result<Vec<Vec<u32>>> {
    let count = match &input {
        EmbedInput::Texts(t) => t.len(),
        EmbedInput::Tokens(t) => t.len(),
    };
    if count == 0 {
        return Err(EngineError::invalid("input", "input must not be empty"));
    }
    if count > MAX_INPUTS {
        return Err(EngineError::invalid(
            "input",
            format!("input has {count} items; at most {MAX_INPUTS} are allowed per request"),
        ));
    }
    let vocab = encoder.vocab_size();
    let sequences = match input {
        EmbedInput::Texts(texts) => texts
            .iter()
            .enumerate()
            .map(|(i, text)| {
                if text.is_empty() {
                    return Err(EngineError::invalid(
                        "input",
                        format!("input[{i}] is an empty string"),
                    ));
                }
                Ok(encoder.tokenize(text)?)
            })
            .collect::<Result<Vec<_>>>()?,
        EmbedInput::Tokens(lists) => lists
            .iter()
            .enumerate()
            .map(|(i, ids)| {
                if ids.is_empty() {
                    return Err(EngineError::invalid(
                        "input",
                        format!("input[{i}] is an empty token list"),
                    ));
                }
                if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
                    return Err(EngineError::invalid(
                        "input",
                        format!("input[{i}]: token id {bad} is outside the vocabulary of {vocab}"),
                    ));
                }
                Ok(encoder.frame(ids))
            })
            .collect::<Result<Vec<_>>>()?,
    };
    let limit = encoder.settings.max_tokens;
    if let Some((i, s)) = sequences.iter().enumerate().find(|(_, s)| s.len() > limit) {
        return Err(EngineError::invalid(
            "input",
            format!(
                "input[{i}] has {} tokens, more than this model's limit of {limit} tokens \
                 (special tokens included); shorten or split it",
                s.len()
            ),
        ));
    }
    Ok(sequences)
}

/// A request in the worker: its sequences, how many are embedded so far, and their vectors.
struct InFlight {
    job: EmbedJob,
    next: usize,
    vectors: Vec<Vec<f32>>,
    failed: bool,
}

struct Batcher {
    encoder: Arc<SentenceEncoder>,
    metrics: ModelMetrics,
    batch_tokens: usize,
}

impl Batcher {
    fn run(self, mut receiver: mpsc::Receiver<EmbedJob>) {
        let mut waiting: VecDeque<InFlight> = VecDeque::new();
        loop {
            if waiting.is_empty() {
                match receiver.blocking_recv() {
                    Some(job) => waiting.push_back(InFlight::new(job)),
                    None => return,
                }
            }
            while let Ok(job) = receiver.try_recv() {
                waiting.push_back(InFlight::new(job));
            }
            // A caller that went away needs no vectors.
            waiting.retain(|w| {
                let gone = w.job.reply.is_closed();
                if gone {
                    self.metrics.queue_depth.dec();
                }
                !gone
            });
            self.step(&mut waiting);
        }
    }

    /// Runs one packed batch and replies to every request it completes.
    fn step(&self, waiting: &mut VecDeque<InFlight>) {
        let mut picked: Vec<(usize, usize)> = Vec::new();
        let mut tokens = 0;
        'fill: for (w, request) in waiting.iter().enumerate() {
            for s in request.next..request.job.sequences.len() {
                let len = request.job.sequences[s].len();
                if tokens > 0 && tokens + len > self.batch_tokens {
                    break 'fill;
                }
                picked.push((w, s));
                tokens += len;
            }
        }
        self.metrics.batch_size.observe(picked.len() as f64);
        self.metrics.prompt_tokens.inc_by(tokens as u64);
        let batch: Vec<&[u32]> = picked
            .iter()
            .map(|&(w, s)| waiting[w].job.sequences[s].as_slice())
            .collect();
        match self.encoder.embed(&batch) {
            Ok(vectors) => {
                for ((w, _), vector) in picked.into_iter().zip(vectors) {
                    waiting[w].vectors.push(vector);
                    waiting[w].next += 1;
                }
            }
            Err(e) => {
                tracing::error!("embedding batch failed: {e}");
                for &(w, _) in &picked {
                    waiting[w].failed = true;
                }
            }
        }
        let mut still_waiting = VecDeque::with_capacity(waiting.len());
        for request in waiting.drain(..) {
            let done = request.failed || request.next == request.job.sequences.len();
            if done {
                self.metrics.queue_depth.dec();
            }
            if request.failed {
                let _ = request.job.reply.send(Err(EngineError::Internal(
                    "the embedding batch failed".into(),
                )));
            } else if request.next == request.job.sequences.len() {
                let _ = request.job.reply.send(Ok(request.vectors));
            } else {
                still_waiting.push_back(request);
            }
        }
        *waiting = still_waiting;
    }
}

impl InFlight {
    fn new(job: EmbedJob) -> Self {
        let capacity = job.sequences.len();
        Self {
            job,
            next: 0,
            vectors: Vec::with_capacity(capacity),
            failed: false,
        }
    }
}

/// Joins the worker thread on drop; the thread ends once every sender is gone.
struct WorkerThread(Option<JoinHandle<()>>);

impl Drop for WorkerThread {
    fn drop(&mut self) {
        if let Some(thread) = self.0.take() {
            let _ = thread.join();
        }
    }
}
