//! What the engine reports to operators, as Prometheus metrics in one registry that the server
//! renders on `/metrics` (and adds its HTTP metrics to). Every series is labelled by model only:
//! models are few, so cardinality stays bounded.

use prometheus::core::Collector;
use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry,
};

pub struct EngineMetrics {
    registry: Registry,
    prompt_tokens: IntCounterVec,
    generated_tokens: IntCounterVec,
    generations_finished: IntCounterVec,
    generations_cancelled: IntCounterVec,
    time_to_first_token: HistogramVec,
    inter_token_latency: HistogramVec,
    queue_depth: IntGaugeVec,
    batch_size: HistogramVec,
    loaded: IntGaugeVec,
    memory: IntGaugeVec,
}

/// One model's series, resolved once so workers update them without label lookups.
#[derive(Clone)]
pub struct ModelMetrics {
    pub prompt_tokens: IntCounter,
    pub generated_tokens: IntCounter,
    pub generations_finished: IntCounter,
    pub generations_cancelled: IntCounter,
    pub time_to_first_token: Histogram,
    pub inter_token_latency: Histogram,
    /// Requests accepted by the model's worker and not yet started.
    pub queue_depth: IntGauge,
    /// Sequences advanced together per step, or inputs per embedding batch.
    pub batch_size: Histogram,
}

impl Default for EngineMetrics {
    fn default() -> Self {
        let registry = Registry::new();
        let model = &["model"];
        let counter = |name: &str, help: &str| {
            registered(&registry, IntCounterVec::new(Opts::new(name, help), model))
        };
        let gauge = |name: &str, help: &str| {
            registered(&registry, IntGaugeVec::new(Opts::new(name, help), model))
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let opts = HistogramOpts::new(name, help).buckets(buckets);
            registered(&registry, HistogramVec::new(opts, model))
        };
        let seconds = || exponential_buckets(0.001, 2.0, 16).expect("valid buckets");
        Self {
            prompt_tokens: counter(
                "aiaas_prompt_tokens_total",
                "Input tokens processed (prompts and embedding inputs).",
            ),
            generated_tokens: counter("aiaas_generated_tokens_total", "Tokens generated."),
            generations_finished: counter(
                "aiaas_generations_finished_total",
                "Generations that ran to a stop or a length limit.",
            ),
            generations_cancelled: counter(
                "aiaas_generations_cancelled_total",
                "Generations stopped because the client went away.",
            ),
            time_to_first_token: histogram(
                "aiaas_time_to_first_token_seconds",
                "From a generation's arrival at its model to its first token.",
                seconds(),
            ),
            inter_token_latency: histogram(
                "aiaas_inter_token_latency_seconds",
                "Between consecutive tokens of one generation.",
                seconds(),
            ),
            queue_depth: gauge(
                "aiaas_queue_depth",
                "Requests waiting for their model's worker.",
            ),
            batch_size: histogram(
                "aiaas_batch_size",
                "Sequences advanced per generation step, or inputs per embedding batch.",
                exponential_buckets(1.0, 2.0, 12).expect("valid buckets"),
            ),
            loaded: gauge(
                "aiaas_model_loaded",
                "1 while the model is in memory, 0 once unloaded.",
            ),
            memory: gauge(
                "aiaas_model_memory_bytes",
                "Bytes of weights the loaded model holds.",
            ),
            registry,
        }
    }
}

/// Adds a newly made metric to `registry` and returns it. The definitions are the program's
/// own constants, so a failure is a bug.
pub fn registered<M>(registry: &Registry, metric: prometheus::Result<M>) -> M
where
    M: Collector + Clone + 'static,
{
    let metric = metric.expect("valid metric definition");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

impl EngineMetrics {
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn model(&self, id: &str) -> ModelMetrics {
        let labels = &[id];
        ModelMetrics {
            prompt_tokens: self.prompt_tokens.with_label_values(labels),
            generated_tokens: self.generated_tokens.with_label_values(labels),
            generations_finished: self.generations_finished.with_label_values(labels),
            generations_cancelled: self.generations_cancelled.with_label_values(labels),
            time_to_first_token: self.time_to_first_token.with_label_values(labels),
            inter_token_latency: self.inter_token_latency.with_label_values(labels),
            queue_depth: self.queue_depth.with_label_values(labels),
            batch_size: self.batch_size.with_label_values(labels),
        }
    }

    /// Records a model entering (with its weight bytes) or leaving memory.
    pub fn set_loaded(&self, id: &str, bytes: Option<u64>) {
        self.loaded
            .with_label_values(&[id])
            .set(i64::from(bytes.is_some()));
        self.memory
            .with_label_values(&[id])
            .set(bytes.map_or(0, |b| i64::try_from(b).unwrap_or(i64::MAX)));
    }
}
