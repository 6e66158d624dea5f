//! Which models are in memory, and the rules that move them in and out: a model loads on first
//! use (once, however many ask) or at start when preloaded; it is unloaded when idle past the
//! keep-alive; and when loading one would exceed the memory budget, the least recently used idle
//! models make room.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

use crate::classify::LoadedClassifier;
use crate::embed::LoadedEmbedder;
use crate::generate::LoadedGenerator;
use crate::in_use::InUse;
use crate::phonemize::LoadedPhonemizer;
use crate::transcribe::LoadedTranscriber;
use crate::ModelManifest;

/// How long models stay loaded and how much memory they may take.
#[derive(Debug, Clone)]
pub struct ResidencyPolicy {
    /// Unload a model idle this long; `None` keeps models until evicted or unloaded.
    pub keep_alive: Option<Duration>,
    /// The most bytes loaded models may hold together; `None` for no limit.
    pub max_model_memory: Option<u64>,
    /// How long a request waits for its model to load before it is told to retry.
    pub load_wait: Duration,
    /// Models loaded at start and held: never unloaded for idleness or evicted for room.
    pub preload: Vec<String>,
}

impl Default for ResidencyPolicy {
    fn default() -> Self {
        Self {
            keep_alive: Some(Duration::from_secs(15 * 60)),
            max_model_memory: None,
            load_wait: Duration::from_secs(60),
            preload: Vec::new(),
        }
    }
}

/// Where a model is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelState {
    /// In the repository, not in memory.
    Available,
    Loading,
    Loaded,
}

/// A model as an operator sees it.
#[derive(Debug, Clone)]
pub struct ModelStatus {
    pub manifest: ModelManifest,
    pub state: ModelState,
    /// Bytes the model holds in memory now (while loading, what it will hold); 0 otherwise.
    pub memory_bytes: u64,
    pub preload: bool,
}

/// A model in memory, by what it does.
#[derive(Clone)]
pub enum LoadedModel {
    Generator(Arc<LoadedGenerator>),
    Embedder(Arc<LoadedEmbedder>),
    Transcriber(Arc<LoadedTranscriber>),
    Classifier(Arc<LoadedClassifier>),
    Phonemizer(Arc<LoadedPhonemizer>),
}

impl LoadedModel {
    /// What the model is: its manifest.
    pub fn manifest(&self) -> &ModelManifest {
        match self {
            Self::Generator(generator) => &generator.manifest,
            Self::Embedder(embedder) => &embedder.manifest,
            Self::Transcriber(transcriber) => &transcriber.manifest,
            Self::Classifier(classifier) => &classifier.manifest,
            Self::Phonemizer(phonemizer) => &phonemizer.manifest,
        }
    }

    fn in_use(&self) -> &InUse {
        match self {
            Self::Generator(generator) => generator.in_use(),
            Self::Embedder(embedder) => embedder.in_use(),
            Self::Transcriber(transcriber) => transcriber.in_use(),
            Self::Classifier(classifier) => classifier.in_use(),
            Self::Phonemizer(phonemizer) => phonemizer.in_use(),
        }
    }

    /// Frees the model. Blocking: a generator's worker thread is joined, so its weights are
    /// gone when this returns (unless a request still holds the model: then they go with it).
    fn release(self) {
        match self {
            Self::Generator(generator) => {
                if let Ok(generator) = Arc::try_unwrap(generator) {
                    generator.shutdown();
                }
            }
            Self::Embedder(embedder) => drop(embedder),
            Self::Transcriber(transcriber) => drop(transcriber),
            Self::Classifier(classifier) => drop(classifier),
            Self::Phonemizer(phonemizer) => drop(phonemizer),
        }
    }
}

/// Called after models are freed; see `set_release_hook`.
static RELEASE_HOOK: OnceLock<fn()> = OnceLock::new();

/// Sets what runs after models are unloaded: the program's allocator returning their pages to
/// the OS. Allocators that keep freed pages for reuse would otherwise hold an unloaded model's
/// memory, and resident memory would never go down.
pub fn set_release_hook(hook: fn()) {
    let _ = RELEASE_HOOK.set(hook);
}

/// Frees models (blocking; see `LoadedModel::release`), then runs the release hook.
pub(crate) fn release_all(models: Vec<LoadedModel>) {
    if models.is_empty() {
        return;
    }
    models.into_iter().for_each(LoadedModel::release);
    if let Some(hook) = RELEASE_HOOK.get() {
        hook();
    }
}

/// What every caller waiting for a load learns: `None` while it runs.
pub(crate) type LoadOutcome = Option<Result<(), String>>;

/// One model of the repository and its place in memory.
pub(crate) struct Slot {
    pub manifest: ModelManifest,
    /// What the model takes in memory once loaded: the size of its weights.
    pub memory_bytes: u64,
    pub preload: bool,
    state: Mutex<SlotState>,
}

enum SlotState {
    Available,
    Loading(watch::Receiver<LoadOutcome>),
    Loaded {
        model: LoadedModel,
        last_used: Instant,
    },
}

/// What a caller does next for a model it needs.
pub(crate) enum Next {
    Use(LoadedModel),
    Wait(watch::Receiver<LoadOutcome>),
    /// Not in memory and nobody loading it: the caller must start the load.
    Load,
}

impl Slot {
    pub fn new(manifest: ModelManifest, memory_bytes: u64, preload: bool) -> Self {
        Self {
            manifest,
            memory_bytes,
            preload,
            state: Mutex::new(SlotState::Available),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SlotState> {
        self.state.lock().expect("slot state lock poisoned")
    }

    pub fn status(&self) -> ModelStatus {
        let state = match &*self.lock() {
            SlotState::Available => ModelState::Available,
            SlotState::Loading(_) => ModelState::Loading,
            SlotState::Loaded { .. } => ModelState::Loaded,
        };
        ModelStatus {
            manifest: self.manifest.clone(),
            state,
            memory_bytes: if state == ModelState::Available {
                0
            } else {
                self.memory_bytes
            },
            preload: self.preload,
        }
    }

    /// The model if loaded (marking it used now), else what to do about it.
    pub fn next(&self) -> Next {
        match &mut *self.lock() {
            SlotState::Loaded { model, last_used } => {
                *last_used = Instant::now();
                Next::Use(model.clone())
            }
            SlotState::Loading(outcome) => Next::Wait(outcome.clone()),
            SlotState::Available => Next::Load,
        }
    }

    /// Marks the slot loading; the caller reports the end through `finish_loading`.
    pub fn start_loading(&self) -> watch::Sender<LoadOutcome> {
        let (sender, receiver) = watch::channel(None);
        *self.lock() = SlotState::Loading(receiver);
        sender
    }

    pub fn finish_loading(&self, loaded: Option<LoadedModel>) {
        *self.lock() = match loaded {
            Some(model) => SlotState::Loaded {
                model,
                last_used: Instant::now(),
            },
            None => SlotState::Available,
        };
    }

    /// Takes the model out of memory if it is loaded; a load in progress is left alone.
    pub fn evict(&self) -> Option<LoadedModel> {
        let mut state = self.lock();
        if !matches!(*state, SlotState::Loaded { .. }) {
            return None;
        }
        match std::mem::replace(&mut *state, SlotState::Available) {
            SlotState::Loaded { model, .. } => Some(model),
            _ => unreachable!("checked above"),
        }
    }

    /// The outcome to wait for if a load is in progress.
    pub fn loading(&self) -> Option<watch::Receiver<LoadOutcome>> {
        match &*self.lock() {
            SlotState::Loading(outcome) => Some(outcome.clone()),
            _ => None,
        }
    }

    /// The slot as the memory budget sees it.
    pub fn holding(&self) -> Holding {
        match &*self.lock() {
            SlotState::Available => Holding {
                bytes: 0,
                evictable_since: None,
            },
            SlotState::Loading(_) => Holding {
                bytes: self.memory_bytes,
                evictable_since: None,
            },
            SlotState::Loaded { model, last_used } => Holding {
                bytes: self.memory_bytes,
                evictable_since: (!self.preload && model.in_use().is_idle()).then_some(*last_used),
            },
        }
    }

    /// Whether the model is loaded, not held, and unused since `deadline`.
    pub fn idle_since_before(&self, deadline: Instant) -> bool {
        self.holding()
            .evictable_since
            .is_some_and(|last_used| last_used < deadline)
    }
}

/// Memory a model holds, and whether it may be evicted (then: when it was last used).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Holding {
    pub bytes: u64,
    pub evictable_since: Option<Instant>,
}

/// Why a model cannot be given memory.
#[derive(Debug, PartialEq)]
pub(crate) enum Shortfall {
    /// More than the whole budget: it can never load.
    TooLarge,
    /// The models holding the memory are busy or preloaded now.
    Busy,
}

/// Which holdings to evict, least recently used first, so that `needed` more bytes fit within
/// `budget`. Only idle models are chosen; if evicting all of them is not enough, none are.
pub(crate) fn choose_evictions(
    holdings: &[Holding],
    needed: u64,
    budget: u64,
) -> Result<Vec<usize>, Shortfall> {
    if needed > budget {
        return Err(Shortfall::TooLarge);
    }
    let mut used: u64 = holdings.iter().map(|h| h.bytes).sum();
    let mut idle: Vec<(usize, Instant)> = holdings
        .iter()
        .enumerate()
        .filter_map(|(index, h)| Some((index, h.evictable_since?)))
        .collect();
    idle.sort_by_key(|&(_, last_used)| last_used);
    let mut chosen = Vec::new();
    let mut idle = idle.into_iter();
    while used + needed > budget {
        let (index, _) = idle.next().ok_or(Shortfall::Busy)?;
        used -= holdings[index].bytes;
        chosen.push(index);
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    fn loaded(bytes: u64, used_seconds_ago: u64) -> Holding {
        Holding {
            bytes,
            evictable_since: Some(Instant::now() - Duration::from_secs(used_seconds_ago)),
        }
    }

    fn held(bytes: u64) -> Holding {
        Holding {
            bytes,
            evictable_since: None,
        }
    }

    #[test]
    fn nothing_is_evicted_while_the_model_fits() {
        let holdings = [loaded(100 * MB, 5), held(100 * MB)];
        assert_eq!(choose_evictions(&holdings, 100 * MB, 300 * MB), Ok(vec![]));
    }

    #[test]
    fn least_recently_used_idle_models_go_first_and_only_as_many_as_needed() {
        let holdings = [
            loaded(100 * MB, 10),
            loaded(100 * MB, 60),
            loaded(100 * MB, 30),
        ];
        assert_eq!(choose_evictions(&holdings, 100 * MB, 300 * MB), Ok(vec![1]));
        assert_eq!(
            choose_evictions(&holdings, 200 * MB, 300 * MB),
            Ok(vec![1, 2])
        );
    }

    #[test]
    fn busy_and_preloaded_models_are_never_chosen() {
        let holdings = [held(200 * MB), loaded(50 * MB, 100)];
        assert_eq!(choose_evictions(&holdings, 100 * MB, 300 * MB), Ok(vec![1]));
        assert_eq!(
            choose_evictions(&holdings, 150 * MB, 300 * MB),
            Err(Shortfall::Busy)
        );
    }

    #[test]
    fn a_model_larger_than_the_budget_never_fits() {
        assert_eq!(
            choose_evictions(&[], 301 * MB, 300 * MB),
            Err(Shortfall::TooLarge)
        );
    }
}
