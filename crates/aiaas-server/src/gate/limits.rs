//! Rate limits and quotas, exact under concurrency: every check and its recording happen under
//! one lock, so 200 simultaneous requests against `rpm = 50` admit exactly 50.
//!
//! - Requests and tokens per minute: sliding 60-second windows.
//! - Tokens are reserved before generation (prompt + the most the request may generate) and
//!   settled to the real count afterwards; an unsettled reservation is released when dropped.
//! - Daily and monthly token quotas (UTC calendar): what the database has recorded for the
//!   period, plus what this process has settled since, plus what is reserved in flight.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::clock;
use crate::store::{KeyRecord, Store, StoreError};

const WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error("Rate limit reached: {limit} requests per minute. Retry after {retry_after:?}.")]
    Requests { limit: i64, retry_after: Duration },
    #[error("Rate limit reached: {limit} tokens per minute; this request needs {requested}. Retry after {retry_after:?}.")]
    Tokens {
        limit: i64,
        requested: i64,
        retry_after: Duration,
    },
    #[error("You exceeded your {period} token quota of {limit}; this request needs {requested} more and {remaining} remain.")]
    Quota {
        period: &'static str,
        limit: i64,
        requested: i64,
        remaining: i64,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The numbers behind the `x-ratelimit-*` headers.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub requests: Option<(i64, i64, Duration)>,
    pub tokens: Option<(i64, i64, Duration)>,
}

#[derive(Default)]
struct KeyState {
    requests: VecDeque<Instant>,
    /// `(when, reservation id, tokens)`.
    tokens: VecDeque<(Instant, u64, i64)>,
    /// Tokens reserved by requests still in flight.
    reserved: i64,
    /// `(period start, tokens used in it)` for the day and the month.
    day: Option<(i64, i64)>,
    month: Option<(i64, i64)>,
    next_id: u64,
}

#[derive(Default)]
pub struct Limiter {
    keys: Mutex<HashMap<String, KeyState>>,
}

impl Limiter {
    /// Counts a request against the key's per-minute request limit.
    pub fn admit_request(&self, key: &KeyRecord) -> Result<(), LimitError> {
        let Some(rpm) = key.rpm else { return Ok(()) };
        let now = Instant::now();
        let mut keys = self.keys.lock().expect("limiter lock poisoned");
        let state = keys.entry(key.id.clone()).or_default();
        prune(&mut state.requests, now, |t| *t);
        if state.requests.len() as i64 >= rpm {
            let oldest = state.requests.front().copied().unwrap_or(now);
            return Err(LimitError::Requests {
                limit: rpm,
                retry_after: (oldest + WINDOW).saturating_duration_since(now),
            });
        }
        state.requests.push_back(now);
        Ok(())
    }

    /// Reserves `amount` tokens against the key's per-minute and quota limits.
    pub async fn reserve(
        self: &Arc<Self>,
        store: &Store,
        key: &KeyRecord,
        amount: i64,
    ) -> Result<Reservation, LimitError> {
        self.load_periods(store, key).await?;
        let now = Instant::now();
        let mut keys = self.keys.lock().expect("limiter lock poisoned");
        let state = keys.entry(key.id.clone()).or_default();
        prune(&mut state.tokens, now, |e| e.0);
        if let Some(tpm) = key.tpm {
            let used: i64 = state.tokens.iter().map(|e| e.2).sum();
            if used + amount > tpm {
                // The earliest moment enough tokens leave the window (or a minute, if never).
                let mut freed = tpm - used;
                let mut retry_after = WINDOW;
                for (at, _, tokens) in &state.tokens {
                    freed += tokens;
                    if freed >= amount {
                        retry_after = (*at + WINDOW).saturating_duration_since(now);
                        break;
                    }
                }
                return Err(LimitError::Tokens {
                    limit: tpm,
                    requested: amount,
                    retry_after,
                });
            }
        }
        let quotas = [
            ("daily", key.daily_tokens, state.day),
            ("monthly", key.monthly_tokens, state.month),
        ];
        for (period, limit, used) in quotas {
            if let (Some(limit), Some((_, used))) = (limit, used) {
                let remaining = limit - used - state.reserved;
                if amount > remaining {
                    return Err(LimitError::Quota {
                        period,
                        limit,
                        requested: amount,
                        remaining: remaining.max(0),
                    });
                }
            }
        }
        state.next_id += 1;
        let id = state.next_id;
        state.tokens.push_back((now, id, amount));
        state.reserved += amount;
        Ok(Reservation {
            limiter: self.clone(),
            key_id: key.id.clone(),
            id,
            amount,
            settled: false,
        })
    }

    /// Loads, once per period, what the database has recorded for the key's quota periods.
    async fn load_periods(&self, store: &Store, key: &KeyRecord) -> Result<(), StoreError> {
        let now = clock::now();
        let wanted = [
            (key.daily_tokens.is_some(), clock::day_start(now), true),
            (key.monthly_tokens.is_some(), clock::month_start(now), false),
        ];
        for (limited, start, daily) in wanted {
            if !limited {
                continue;
            }
            let current = {
                let keys = self.keys.lock().expect("limiter lock poisoned");
                let state = keys.get(&key.id);
                let period = state.and_then(|s| if daily { s.day } else { s.month });
                period.is_some_and(|(s, _)| s == start)
            };
            if current {
                continue;
            }
            let used = store.tokens_since(&key.id, start).await?;
            let mut keys = self.keys.lock().expect("limiter lock poisoned");
            let state = keys.entry(key.id.clone()).or_default();
            let slot = if daily {
                &mut state.day
            } else {
                &mut state.month
            };
            if slot.is_none_or(|(s, _)| s != start) {
                *slot = Some((start, used));
            }
        }
        Ok(())
    }

    /// Current limits, remaining amounts and reset times, for the response headers.
    pub fn snapshot(&self, key: &KeyRecord) -> Snapshot {
        let now = Instant::now();
        let mut keys = self.keys.lock().expect("limiter lock poisoned");
        let state = keys.entry(key.id.clone()).or_default();
        prune(&mut state.requests, now, |t| *t);
        prune(&mut state.tokens, now, |e| e.0);
        let reset = |oldest: Option<Instant>| {
            oldest.map_or(Duration::ZERO, |t| {
                (t + WINDOW).saturating_duration_since(now)
            })
        };
        Snapshot {
            requests: key.rpm.map(|rpm| {
                let remaining = (rpm - state.requests.len() as i64).max(0);
                (rpm, remaining, reset(state.requests.front().copied()))
            }),
            tokens: key.tpm.map(|tpm| {
                let used: i64 = state.tokens.iter().map(|e| e.2).sum();
                (
                    tpm,
                    (tpm - used).max(0),
                    reset(state.tokens.front().map(|e| e.0)),
                )
            }),
        }
    }

    fn settle(&self, key_id: &str, id: u64, reserved: i64, actual: i64) {
        let mut keys = self.keys.lock().expect("limiter lock poisoned");
        let Some(state) = keys.get_mut(key_id) else {
            return;
        };
        if let Some(entry) = state.tokens.iter_mut().find(|e| e.1 == id) {
            entry.2 = actual;
        }
        state.reserved -= reserved;
        for (_, used) in [&mut state.day, &mut state.month].into_iter().flatten() {
            *used += actual;
        }
    }
}

fn prune<T>(window: &mut VecDeque<T>, now: Instant, at: impl Fn(&T) -> Instant) {
    while window
        .front()
        .is_some_and(|e| now.duration_since(at(e)) >= WINDOW)
    {
        window.pop_front();
    }
}

/// Tokens held for a request in flight.
pub struct Reservation {
    limiter: Arc<Limiter>,
    key_id: String,
    id: u64,
    amount: i64,
    settled: bool,
}

impl Reservation {
    /// Replaces the reservation with the tokens really used.
    pub fn settle(mut self, actual: i64) {
        self.limiter
            .settle(&self.key_id, self.id, self.amount, actual);
        self.settled = true;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled {
            self.limiter.settle(&self.key_id, self.id, self.amount, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(rpm: Option<i64>, tpm: Option<i64>) -> KeyRecord {
        KeyRecord {
            id: "key_test".into(),
            name: "test".into(),
            prefix: "aiaas-xxxx".into(),
            hash: String::new(),
            admin: false,
            models: "*".into(),
            rpm,
            tpm,
            daily_tokens: None,
            monthly_tokens: None,
            expires_at: None,
            created_at: 0,
            revoked_at: None,
            last_used_at: None,
        }
    }

    #[test]
    fn request_limit_admits_exactly_rpm() {
        let limiter = Limiter::default();
        let key = key(Some(3), None);
        for _ in 0..3 {
            limiter.admit_request(&key).unwrap();
        }
        match limiter.admit_request(&key) {
            Err(LimitError::Requests { retry_after, .. }) => assert!(retry_after <= WINDOW),
            other => panic!("{other:?}"),
        }
        let snapshot = limiter.snapshot(&key);
        assert_eq!(snapshot.requests.map(|r| (r.0, r.1)), Some((3, 0)));
    }

    #[tokio::test]
    async fn token_reservations_settle_to_actual_use() {
        let home = std::env::temp_dir().join(format!("aiaas-limits-{}", std::process::id()));
        std::fs::create_dir_all(&home).unwrap();
        let store = Store::open(&home.join("aiaas.db")).await.unwrap();
        let limiter = Arc::new(Limiter::default());
        let key = key(None, Some(100));
        let first = limiter.reserve(&store, &key, 80).await.unwrap();
        assert!(matches!(
            limiter.reserve(&store, &key, 30).await,
            Err(LimitError::Tokens { .. })
        ));
        first.settle(10);
        let second = limiter.reserve(&store, &key, 30).await.unwrap();
        assert_eq!(limiter.snapshot(&key).tokens.map(|t| t.1), Some(60));
        drop(second);
        assert_eq!(limiter.snapshot(&key).tokens.map(|t| t.1), Some(90));
        std::fs::remove_dir_all(home).unwrap();
    }
}
