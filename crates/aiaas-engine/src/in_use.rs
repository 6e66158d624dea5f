//! Counting the work a loaded model has in hand, so that eviction can prefer idle models and
//! the idle timer never unloads one that is serving.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// How many requests a model is serving now.
#[derive(Clone, Default)]
pub struct InUse(Arc<AtomicUsize>);

impl InUse {
    /// Counts one request until the returned guard drops.
    pub fn enter(&self) -> InUseGuard {
        self.0.fetch_add(1, Ordering::Relaxed);
        InUseGuard(self.0.clone())
    }

    pub fn is_idle(&self) -> bool {
        self.0.load(Ordering::Relaxed) == 0
    }
}

/// One request in hand; it ends when this drops, however the request ends.
#[derive(Debug)]
pub struct InUseGuard(Arc<AtomicUsize>);

impl Drop for InUseGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_again_once_every_guard_drops() {
        let in_use = InUse::default();
        assert!(in_use.is_idle());
        let first = in_use.enter();
        let second = in_use.clone().enter();
        drop(first);
        assert!(!in_use.is_idle());
        drop(second);
        assert!(in_use.is_idle());
    }
}
