//! How Ridehail looks for a driver: nearest available first, within a radius that widens in steps.
//! A search attempt that finds nobody schedules the next, wider attempt; when the widest radius finds
//! nobody, the ride expires. A declined or unanswered offer goes to the next nearest driver not yet
//! tried, at the current radius.

use chrono::Duration;
use ridehail_events::{GeoPoint, UserId};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MatchingPolicy {
    pub initial_radius_m: u32,
    pub radius_step_m: u32,
    pub max_radius_m: u32,
    /// Pause between search attempts when nobody was found.
    pub retry_interval_s: u32,
    /// How long a driver has to accept an offer.
    pub offer_timeout_s: u32,
}

impl Default for MatchingPolicy {
    fn default() -> Self {
        Self {
            initial_radius_m: 2_000,
            radius_step_m: 2_000,
            max_radius_m: 8_000,
            retry_interval_s: 10,
            offer_timeout_s: 20,
        }
    }
}

impl MatchingPolicy {
    /// Radius of search attempt `attempt` (0-based).
    pub fn radius_m(&self, attempt: u32) -> u32 {
        self.initial_radius_m.saturating_add(self.radius_step_m.saturating_mul(attempt)).min(self.max_radius_m)
    }

    /// Whether attempt `attempt` already searched the widest radius.
    pub fn is_last_attempt(&self, attempt: u32) -> bool {
        self.radius_m(attempt) >= self.max_radius_m || self.radius_step_m == 0
    }

    pub fn offer_timeout(&self) -> Duration {
        Duration::seconds(i64::from(self.offer_timeout_s))
    }

    pub fn retry_interval(&self) -> Duration {
        Duration::seconds(i64::from(self.retry_interval_s))
    }
}

/// What the worker must look up in the geo index before deciding.
#[derive(Debug, Clone, PartialEq)]
pub struct Search {
    pub at: GeoPoint,
    pub radius_m: u32,
    /// Drivers already offered this ride.
    pub exclude: Vec<UserId>,
}

/// The driver the geo index picked (and now holds) for the ride.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriverCandidate {
    pub driver_id: UserId,
    pub distance_m: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn radius_widens_in_steps_up_to_the_maximum() {
        let policy = MatchingPolicy::default();
        let radii: Vec<u32> = (0..5).map(|a| policy.radius_m(a)).collect();
        assert_eq!(radii, [2_000, 4_000, 6_000, 8_000, 8_000]);
        assert!(!policy.is_last_attempt(2));
        assert!(policy.is_last_attempt(3));
    }
}
