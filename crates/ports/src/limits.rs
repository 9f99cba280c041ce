//! Per-client limits: request rates (GCRA) and lock-outs after repeated failures (logins). One
//! adapter per deployment shape: in memory for one process (the embedded default), Redis when several
//! edges must share the counts.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::StoreResult;

/// `count` requests per `period_seconds` on average, and up to `burst` at once (GCRA: one request
/// every `period / count`, with `burst` of them allowed ahead).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub count: u32,
    pub period_seconds: u32,
    pub burst: u32,
}

impl Rate {
    pub const fn new(count: u32, period_seconds: u32, burst: u32) -> Self {
        Self { count, period_seconds, burst }
    }

    /// The time between two requests at the average rate.
    pub fn interval(&self) -> Duration {
        Duration::from_secs(u64::from(self.period_seconds.max(1))) / self.count.max(1)
    }

    pub fn validate(&self, name: &str) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.count >= 1 && self.period_seconds >= 1 && self.burst >= 1,
            "{name}: count, period_seconds and burst must be at least 1"
        );
        Ok(())
    }
}

/// What a rate limit said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Admitted,
    /// Over the rate: the next request of this key is admitted after this long.
    Limited {
        retry_after: Duration,
    },
}

/// Lock-outs that grow with repeated failures: the first `free_failures` failures within `window`
/// cost nothing, the next locks the key out for `first_lockout`, each further one doubles it, up to
/// `max_lockout`. A success clears the count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockoutPolicy {
    pub free_failures: u32,
    pub first_lockout_seconds: u32,
    pub max_lockout_seconds: u32,
    /// Failures older than this are forgotten.
    pub window_seconds: u32,
}

impl LockoutPolicy {
    /// The lock-out the `failures`-th failure in a row starts, if any.
    pub fn lockout_after(&self, failures: u32) -> Option<Duration> {
        let over = failures.checked_sub(self.free_failures)?.checked_sub(1)?;
        let seconds = u64::from(self.first_lockout_seconds).saturating_mul(1u64 << over.min(30));
        Some(Duration::from_secs(seconds.min(u64::from(self.max_lockout_seconds))))
    }

    pub fn validate(&self, name: &str) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.first_lockout_seconds >= 1
                && self.max_lockout_seconds >= self.first_lockout_seconds
                && self.window_seconds >= 1,
            "{name}: lock-outs must be at least 1 s, the maximum at least the first, the window at least 1 s"
        );
        Ok(())
    }
}

#[async_trait]
pub trait Limiter: Send + Sync + std::fmt::Debug {
    /// Counts one request of `key` against `rate`.
    async fn admit(&self, key: &str, rate: Rate) -> StoreResult<Admission>;

    /// Counts one request against each `(key, rate)`: admitted when every one admits (the longest
    /// wait otherwise). Adapters that can check them in one round trip, and count none when one
    /// refuses, override it; by default they are checked in turn, up to the first refusal.
    async fn admit_all(&self, checks: &[(String, Rate)]) -> StoreResult<Admission> {
        for (key, rate) in checks {
            if let limited @ Admission::Limited { .. } = self.admit(key, *rate).await? {
                return Ok(limited);
            }
        }
        Ok(Admission::Admitted)
    }

    /// How long `key` is still locked out, if it is.
    async fn locked_for(&self, key: &str) -> StoreResult<Option<Duration>>;

    /// Counts a failure of `key`; returns the lock-out it starts, if it starts one.
    async fn record_failure(&self, key: &str, policy: &LockoutPolicy) -> StoreResult<Option<Duration>>;

    /// Forgets `key`'s failures (and any lock-out).
    async fn clear_failures(&self, key: &str) -> StoreResult<()>;

    async fn ping(&self) -> StoreResult<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lockouts_start_after_the_free_failures_and_double_up_to_the_maximum() {
        let policy =
            LockoutPolicy { free_failures: 3, first_lockout_seconds: 10, max_lockout_seconds: 60, window_seconds: 900 };
        let lockouts: Vec<Option<u64>> = (1..=8).map(|n| policy.lockout_after(n).map(|d| d.as_secs())).collect();
        assert_eq!(lockouts, [None, None, None, Some(10), Some(20), Some(40), Some(60), Some(60)]);
    }

    #[test]
    fn a_rate_spaces_requests_by_its_interval() {
        assert_eq!(Rate::new(10, 1, 5).interval(), Duration::from_millis(100));
        assert_eq!(Rate::new(3, 60, 3).interval(), Duration::from_secs(20));
    }
}
