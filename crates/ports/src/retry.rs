//! The one retry policy: capped exponential backoff with jitter (`backon`), bounded to a number of
//! attempts or not. The consume loop, the producer and the edge all retry with it, so there is one
//! place to read how Ridehail waits out a failure. (Users: the consume loop for handlers, polls and
//! dead-letter publishes; the Kafka producer for a full queue; the Redis command-final subscription;
//! the edge for failing accepts.)

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// The first wait.
    pub min_delay_ms: u64,
    /// No wait is longer than this (before jitter, which adds up to as much again).
    pub max_delay_ms: u64,
    /// Attempts in all, the first included; `None`: until it works (or the caller stops).
    pub max_attempts: Option<u32>,
}

impl RetryPolicy {
    /// Retries up to `max_attempts` attempts in all.
    pub const fn bounded(min_delay_ms: u64, max_delay_ms: u64, max_attempts: u32) -> Self {
        Self { min_delay_ms, max_delay_ms, max_attempts: Some(max_attempts) }
    }

    /// Retries for as long as it takes.
    pub const fn unbounded(min_delay_ms: u64, max_delay_ms: u64) -> Self {
        Self { min_delay_ms, max_delay_ms, max_attempts: None }
    }

    /// The waits between attempts, in order: capped exponential, jittered; as many as the policy allows
    /// (endless when unbounded).
    pub fn delays(&self) -> impl Iterator<Item = Duration> + Send + use<> {
        let builder = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(self.min_delay_ms.max(1)))
            .with_max_delay(Duration::from_millis(self.max_delay_ms.max(self.min_delay_ms).max(1)))
            .with_jitter();
        match self.max_attempts {
            Some(attempts) => builder.with_max_times(attempts.saturating_sub(1) as usize).build(),
            None => builder.without_max_times().build(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_policies_wait_between_attempts_only_and_grow_up_to_the_cap() {
        let waits: Vec<Duration> = RetryPolicy::bounded(10, 40, 5).delays().collect();
        assert_eq!(waits.len(), 4, "five attempts, four waits");
        for (wait, floor) in waits.iter().zip([10, 20, 40, 40]) {
            // Jitter adds up to as much again.
            assert!(*wait >= Duration::from_millis(floor) && *wait < Duration::from_millis(2 * floor), "{waits:?}");
        }
        assert_eq!(RetryPolicy::bounded(10, 40, 1).delays().count(), 0);
    }

    #[test]
    fn unbounded_policies_never_run_out_and_stay_capped() {
        let waits: Vec<Duration> = RetryPolicy::unbounded(5, 100).delays().take(200).collect();
        assert_eq!(waits.len(), 200);
        assert!(waits.iter().all(|w| *w < Duration::from_millis(200)), "{:?}", waits.iter().max());
    }
}
