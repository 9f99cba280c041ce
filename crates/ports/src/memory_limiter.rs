//! The in-memory limiter: counts in this process's memory. The embedded default uses it (its one edge
//! is this process); the Redis limiter, which shares counts between edges, falls back to it while
//! Redis is down. Rates are `governor`'s GCRA per key; lock-outs a small map.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::{Admission, Limiter, LockoutPolicy, Rate, StoreResult};
use async_trait::async_trait;
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Per-key rate limits and lock-outs in memory.
#[derive(Debug, Default)]
pub struct MemoryLimiter {
    rates: Mutex<HashMap<Rate, std::sync::Arc<DefaultKeyedRateLimiter<String>>>>,
    failures: Mutex<HashMap<String, Failures>>,
    calls: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    /// Forgotten after this (the policy's window since the last failure).
    expires: Instant,
    locked_until: Option<Instant>,
}

/// Keys not seen for a while are dropped every this many calls, so the maps do not grow with every
/// address that ever called.
const HOUSEKEEPING_EVERY: u64 = 4096;

impl MemoryLimiter {
    pub fn new() -> Self {
        Self::default()
    }

    fn limiter(&self, rate: Rate) -> std::sync::Arc<DefaultKeyedRateLimiter<String>> {
        let mut rates = self.rates.lock().unwrap_or_else(|e| e.into_inner());
        rates
            .entry(rate)
            .or_insert_with(|| {
                let burst = NonZeroU32::new(rate.burst.max(1)).unwrap_or(NonZeroU32::MIN);
                let quota = Quota::with_period(rate.interval().max(Duration::from_nanos(1)))
                    .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
                    .allow_burst(burst);
                std::sync::Arc::new(RateLimiter::keyed(quota))
            })
            .clone()
    }

    fn housekeeping(&self) {
        if !self.calls.fetch_add(1, Ordering::Relaxed).is_multiple_of(HOUSEKEEPING_EVERY) {
            return;
        }
        for limiter in self.rates.lock().unwrap_or_else(|e| e.into_inner()).values() {
            limiter.retain_recent();
        }
        let now = Instant::now();
        self.failures.lock().unwrap_or_else(|e| e.into_inner()).retain(|_, f| f.expires > now);
    }
}

#[async_trait]
impl Limiter for MemoryLimiter {
    async fn admit(&self, key: &str, rate: Rate) -> StoreResult<Admission> {
        self.housekeeping();
        let limiter = self.limiter(rate);
        Ok(match limiter.check_key(&key.to_owned()) {
            Ok(()) => Admission::Admitted,
            Err(not_until) => {
                Admission::Limited { retry_after: not_until.wait_time_from(DefaultClock::default().now()) }
            }
        })
    }

    async fn locked_for(&self, key: &str) -> StoreResult<Option<Duration>> {
        let now = Instant::now();
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        Ok(failures
            .get(key)
            .filter(|f| f.expires > now)
            .and_then(|f| f.locked_until)
            .and_then(|until| until.checked_duration_since(now))
            .filter(|left| !left.is_zero()))
    }

    async fn record_failure(&self, key: &str, policy: &LockoutPolicy) -> StoreResult<Option<Duration>> {
        self.housekeeping();
        let now = Instant::now();
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let entry = failures
            .entry(key.to_owned())
            .and_modify(|f| {
                if f.expires <= now {
                    *f = Failures { count: 0, expires: now, locked_until: None };
                }
            })
            .or_insert(Failures { count: 0, expires: now, locked_until: None });
        entry.count = entry.count.saturating_add(1);
        let lockout = policy.lockout_after(entry.count);
        let window = Duration::from_secs(u64::from(policy.window_seconds));
        entry.expires = now + window.max(lockout.unwrap_or_default());
        if let Some(lockout) = lockout {
            entry.locked_until = Some(now + lockout);
        }
        Ok(lockout)
    }

    async fn clear_failures(&self, key: &str) -> StoreResult<()> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
        Ok(())
    }

    async fn ping(&self) -> StoreResult<()> {
        Ok(())
    }
}
