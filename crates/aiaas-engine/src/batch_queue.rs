//! A worker thread that runs every caller's items through a model in shared batches.
//!
//! Requests arriving together share forward passes: the worker drains its queue, fills one batch
//! with items taken from the waiting requests in arrival order until the batch's budget (tokens,
//! images, words) is spent — a request larger than the budget spans several batches — and sends
//! each caller its own outputs, in its own order, once all of them are done.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::thread::JoinHandle;

use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::metrics::ModelMetrics;
use crate::{EngineError, Result};

/// A model that maps many items at once.
pub(crate) trait BatchModel: Send + 'static {
    type Item: Send + 'static;
    type Output: Send + 'static;

    /// How much of a batch's budget the item takes.
    fn cost(&self, item: &Self::Item) -> usize;

    /// One output per item, in order.
    fn run(&self, items: &[&Self::Item]) -> Result<Vec<Self::Output>>;
}

/// The caller's side: a bounded queue in front of the worker thread.
pub(crate) struct BatchQueue<M: BatchModel> {
    model_id: String,
    queue_depth: prometheus::IntGauge,
    /// One place per request in hand (waiting or running), held until its caller has its
    /// answer or leaves: what bounds the worker's backlog.
    places: Semaphore,
    jobs: mpsc::Sender<Job<M>>,
    /// Declared after `jobs`, so the channel closes (and the thread ends) before the join.
    _worker: WorkerThread,
}

struct Job<M: BatchModel> {
    items: Vec<M::Item>,
    reply: oneshot::Sender<Result<Vec<M::Output>>>,
}

impl<M: BatchModel> BatchQueue<M> {
    /// Starts the worker. `budget` is the most a batch may cost (a single item costing more
    /// still runs, alone); `max_queued` requests may wait before new ones are refused.
    pub fn start(
        model_id: &str,
        model: M,
        budget: usize,
        max_queued: usize,
        metrics: ModelMetrics,
    ) -> Result<Self> {
        let (jobs, receiver) = mpsc::channel(max_queued.max(1));
        let queue_depth = metrics.queue_depth.clone();
        let worker = Worker {
            model,
            metrics,
            budget,
        };
        let thread = std::thread::Builder::new()
            .name(format!("batch-{model_id}"))
            .spawn(move || worker.run(receiver))
            .map_err(EngineError::io("starting the batching worker"))?;
        Ok(Self {
            model_id: model_id.to_string(),
            queue_depth,
            places: Semaphore::new(max_queued.max(1)),
            jobs,
            _worker: WorkerThread(Some(thread)),
        })
    }

    /// Queues the items and waits for their outputs, in order. A full queue is `Overloaded`.
    pub async fn run(&self, items: Vec<M::Item>) -> Result<Vec<M::Output>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let _place = (self.places.try_acquire())
            .map_err(|_| EngineError::Overloaded(self.model_id.clone()))?;
        let (reply, receiver) = oneshot::channel();
        self.queue_depth.inc();
        if let Err(e) = self.jobs.try_send(Job { items, reply }) {
            self.queue_depth.dec();
            return Err(match e {
                TrySendError::Full(_) => EngineError::Overloaded(self.model_id.clone()),
                TrySendError::Closed(_) => {
                    EngineError::Internal("the batching worker stopped".into())
                }
            });
        }
        receiver
            .await
            .map_err(|_| EngineError::Internal("the batching worker stopped".into()))?
    }
}

/// A request in the worker: its items, how many are done, and their outputs.
struct InFlight<M: BatchModel> {
    job: Job<M>,
    next: usize,
    outputs: Vec<M::Output>,
    failed: bool,
}

impl<M: BatchModel> InFlight<M> {
    fn new(job: Job<M>) -> Self {
        let capacity = job.items.len();
        Self {
            job,
            next: 0,
            outputs: Vec::with_capacity(capacity),
            failed: false,
        }
    }

    fn is_complete(&self) -> bool {
        self.next == self.job.items.len()
    }
}

struct Worker<M: BatchModel> {
    model: M,
    metrics: ModelMetrics,
    budget: usize,
}

impl<M: BatchModel> Worker<M> {
    fn run(self, mut receiver: mpsc::Receiver<Job<M>>) {
        let mut waiting: VecDeque<InFlight<M>> = VecDeque::new();
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
            // A caller that went away needs no outputs.
            waiting.retain(|w| {
                let gone = w.job.reply.is_closed();
                if gone {
                    self.metrics.queue_depth.dec();
                }
                !gone
            });
            if !waiting.is_empty() {
                self.step(&mut waiting);
            }
        }
    }

    /// Runs one batch and replies to every request it completes.
    fn step(&self, waiting: &mut VecDeque<InFlight<M>>) {
        let mut picked: Vec<(usize, usize)> = Vec::new();
        let mut spent = 0;
        'fill: for (w, request) in waiting.iter().enumerate() {
            for i in request.next..request.job.items.len() {
                let cost = self.model.cost(&request.job.items[i]);
                if spent > 0 && spent + cost > self.budget {
                    break 'fill;
                }
                picked.push((w, i));
                spent += cost;
            }
        }
        self.metrics.batch_size.observe(picked.len() as f64);
        let batch: Vec<&M::Item> = (picked.iter())
            .map(|&(w, i)| &waiting[w].job.items[i])
            .collect();
        // A panicking model fails its batch, not the worker (and with it every later request).
        let outputs = catch_unwind(AssertUnwindSafe(|| self.model.run(&batch)))
            .unwrap_or_else(|_| Err(EngineError::Internal("the model panicked".into())))
            .and_then(|outputs| {
                if outputs.len() == batch.len() {
                    Ok(outputs)
                } else {
                    Err(EngineError::Internal(format!(
                        "the model gave {} outputs for {} inputs",
                        outputs.len(),
                        batch.len()
                    )))
                }
            });
        match outputs {
            Ok(outputs) => {
                for ((w, _), output) in picked.into_iter().zip(outputs) {
                    waiting[w].outputs.push(output);
                    waiting[w].next += 1;
                }
            }
            Err(e) => {
                tracing::error!("a batch failed: {e}");
                for &(w, _) in &picked {
                    waiting[w].failed = true;
                }
            }
        }
        let mut still_waiting = VecDeque::with_capacity(waiting.len());
        for request in waiting.drain(..) {
            if request.failed {
                self.metrics.queue_depth.dec();
                let _ = (request.job.reply).send(Err(EngineError::Internal(
                    "the model's batch failed".into(),
                )));
            } else if request.is_complete() {
                self.metrics.queue_depth.dec();
                let _ = request.job.reply.send(Ok(request.outputs));
            } else {
                still_waiting.push_back(request);
            }
        }
        *waiting = still_waiting;
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

#[cfg(test)]
mod tests {
    use std::sync::mpsc as std_mpsc;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::EngineMetrics;

    /// Doubles numbers and records its batches; its first batch waits for `release`, so that
    /// requests can pile up behind it.
    struct Doubler {
        batches: Arc<Mutex<Vec<Vec<u32>>>>,
        started: std_mpsc::Sender<()>,
        release: Mutex<std_mpsc::Receiver<()>>,
    }

    impl BatchModel for Doubler {
        type Item = u32;
        type Output = u32;

        fn cost(&self, item: &u32) -> usize {
            *item as usize
        }

        fn run(&self, items: &[&u32]) -> Result<Vec<u32>> {
            let first = self.batches.lock().unwrap().is_empty();
            self.batches
                .lock()
                .unwrap()
                .push(items.iter().map(|&&i| i).collect());
            if first {
                self.started.send(()).unwrap();
                self.release.lock().unwrap().recv().unwrap();
            }
            Ok(items.iter().map(|&&i| 2 * i).collect())
        }
    }

    #[tokio::test]
    async fn requests_waiting_together_share_batches_within_the_budget() {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let (started, model_started) = std_mpsc::channel();
        let (release, released) = std_mpsc::channel();
        let model = Doubler {
            batches: batches.clone(),
            started,
            release: Mutex::new(released),
        };
        let metrics = EngineMetrics::default().model("doubler");
        let queue = Arc::new(BatchQueue::start("doubler", model, 10, 8, metrics.clone()).unwrap());
        let run = |items: Vec<u32>| {
            let queue = queue.clone();
            tokio::spawn(async move { queue.run(items).await })
        };
        let first = run(vec![1]);
        tokio::task::spawn_blocking(move || model_started.recv().unwrap())
            .await
            .unwrap();
        // The worker is busy: these two wait in the queue, then go together.
        let second = run(vec![2, 3]);
        let third = run(vec![4, 6, 4]);
        while metrics.queue_depth.get() < 3 {
            tokio::task::yield_now().await;
        }
        release.send(()).unwrap();
        assert_eq!(first.await.unwrap().unwrap(), [2]);
        assert_eq!(second.await.unwrap().unwrap(), [4, 6]);
        assert_eq!(third.await.unwrap().unwrap(), [8, 12, 8]);
        // 2 + 3 + 4 fit the budget of 10; 6 starts the next batch.
        assert_eq!(
            *batches.lock().unwrap(),
            [vec![1], vec![2, 3, 4], vec![6, 4]]
        );
        assert_eq!(metrics.queue_depth.get(), 0);
    }

    /// Panics on a zero; doubles anything else.
    struct Fragile;

    impl BatchModel for Fragile {
        type Item = u32;
        type Output = u32;

        fn cost(&self, _: &u32) -> usize {
            1
        }

        fn run(&self, items: &[&u32]) -> Result<Vec<u32>> {
            assert!(items.iter().all(|&&i| i != 0), "a zero");
            Ok(items.iter().map(|&&i| 2 * i).collect())
        }
    }

    #[tokio::test]
    async fn a_panicking_batch_fails_its_requests_and_the_worker_goes_on() {
        let metrics = EngineMetrics::default().model("fragile");
        let queue = BatchQueue::start("fragile", Fragile, 4, 2, metrics.clone()).unwrap();
        let failed = queue.run(vec![0]).await.unwrap_err();
        assert!(matches!(failed, EngineError::Internal(_)), "{failed}");
        assert_eq!(queue.run(vec![1, 2]).await.unwrap(), [2, 4]);
        assert_eq!(metrics.queue_depth.get(), 0);
    }
}
