//! Text generation: validated requests, the events a generation emits, and the worker that runs
//! them.

mod loaded;
mod sampler;
mod stop;
mod worker;

pub use loaded::LoadedGenerator;
pub use sampler::{Sampler, SamplingParams, TokenLogprob, TopLogprob};
pub use stop::{StopMatcher, StopScan};
pub use worker::{GenerationWorker, WorkerLimits};

use tokio::sync::{mpsc, oneshot};

/// A generation the worker can run as is: the prompt is tokenized and fits the context.
#[derive(Debug)]
pub struct GenerationJob {
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    pub events: mpsc::UnboundedSender<Event>,
    /// Receives the tokens really processed when the generation ends in any way: finished,
    /// failed, or cancelled because the caller left (metering counts what was generated).
    pub usage: Option<oneshot::Sender<GenerationUsage>>,
    /// When the job was handed to the model, for time-to-first-token.
    pub submitted: std::time::Instant,
    /// Marks the model busy until the job is dropped (finished, failed or cancelled).
    pub in_use: crate::in_use::InUseGuard,
}

/// A started generation: its events and, at the end, its token counts.
pub struct Generation {
    pub events: mpsc::UnboundedReceiver<Event>,
    pub usage: oneshot::Receiver<GenerationUsage>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GenerationUsage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// What a generation reports, in order: any number of `Token`s, then one `Finished` or `Failed`.
#[derive(Debug, Clone)]
pub enum Event {
    Token(TokenEvent),
    Finished(Finished),
    Failed(String),
}

#[derive(Debug, Clone)]
pub struct TokenEvent {
    pub token: u32,
    /// Text released by this token: may be empty (an incomplete character, a possible stop
    /// sequence held back) or hold text held back by earlier tokens.
    pub text: String,
    pub logprob: Option<TokenLogprob>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// End of generation token or a stop sequence.
    Stop,
    /// `max_tokens` or the context window was reached.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Finished {
    pub reason: FinishReason,
    /// Text still held back when the generation ended.
    pub text: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}
