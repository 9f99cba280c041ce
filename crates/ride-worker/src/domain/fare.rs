//! Fares in integer minor units: `max(minimum, base + per_km x km + per_minute x minutes) x surge`,
//! each product rounded half up. Surge is in basis points (10000 = 1.0x).

use ridehail_events::ride::{Fare, FareTotal};
use serde::{Deserialize, Serialize};

/// One surge basis point scale: 10000 = 1.0x.
pub const SURGE_ONE: u32 = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PricingPolicy {
    /// ISO 4217 code of every amount below.
    pub currency: String,
    pub base_minor: i64,
    pub per_km_minor: i64,
    pub per_minute_minor: i64,
    pub minimum_minor: i64,
    /// Road distance is estimated as the straight line times this factor, in percent (130 = 1.3x).
    pub road_factor_percent: u32,
    /// Average speed used to estimate the duration before the ride happens.
    pub average_speed_kmh: u32,
    /// Extra surge per unit of excess demand/supply ratio, in basis points: with 5000, twice as many
    /// waiting riders as free drivers gives 1.5x.
    pub surge_slope_bps: u32,
    /// Surge never exceeds this (basis points; 25000 = 2.5x).
    pub surge_cap_bps: u32,
    /// A driver-reported distance may exceed the estimated road distance by this factor (percent)
    /// or by `reported_distance_slack_m`, whichever is more; beyond that completion is refused.
    pub max_reported_distance_percent: u32,
    pub reported_distance_slack_m: u32,
}

impl Default for PricingPolicy {
    fn default() -> Self {
        Self {
            currency: "EUR".into(),
            base_minor: 250,
            per_km_minor: 110,
            per_minute_minor: 25,
            minimum_minor: 500,
            road_factor_percent: 130,
            average_speed_kmh: 30,
            surge_slope_bps: 5_000,
            surge_cap_bps: 25_000,
            max_reported_distance_percent: 400,
            reported_distance_slack_m: 3_000,
        }
    }
}

fn div_round_half_up(numerator: i128, denominator: i128) -> i64 {
    let rounded = (numerator * 2 + denominator) / (denominator * 2);
    i64::try_from(rounded).unwrap_or(i64::MAX)
}

impl PricingPolicy {
    /// The surge multiplier for a cell with `waiting` riders (including the new one) and `available`
    /// free drivers: 1.0x while drivers suffice, rising linearly with the excess ratio, capped.
    pub fn surge_bps(&self, waiting: u64, available: u64) -> u32 {
        if waiting <= available {
            return SURGE_ONE;
        }
        if available == 0 {
            return self.surge_cap_bps.max(SURGE_ONE);
        }
        let ratio_bps = u128::from(waiting) * u128::from(SURGE_ONE) / u128::from(available);
        let excess = ratio_bps - u128::from(SURGE_ONE);
        let surge = u128::from(SURGE_ONE) + excess * u128::from(self.surge_slope_bps) / u128::from(SURGE_ONE);
        surge.min(u128::from(self.surge_cap_bps.max(SURGE_ONE))) as u32
    }

    /// The longest distance a driver may report for a trip estimated at `estimate_m`.
    pub fn max_reported_distance_m(&self, estimate_m: u32) -> u32 {
        let scaled = u64::from(estimate_m) * u64::from(self.max_reported_distance_percent) / 100;
        let slack = u64::from(estimate_m) + u64::from(self.reported_distance_slack_m);
        scaled.max(slack).min(u64::from(u32::MAX)) as u32
    }

    /// The road distance estimated from a straight-line distance.
    pub fn road_distance_m(&self, straight_m: f64) -> u32 {
        (straight_m * f64::from(self.road_factor_percent) / 100.0).round().clamp(0.0, f64::from(u32::MAX)) as u32
    }

    /// The duration estimated for a road distance at the average speed.
    pub fn estimated_duration_s(&self, distance_m: u32) -> u32 {
        let metres_per_hour = u64::from(self.average_speed_kmh.max(1)) * 1000;
        (u64::from(distance_m) * 3600 / metres_per_hour) as u32
    }

    pub fn fare(&self, distance_meters: u32, duration_seconds: u32, surge_bps: u32) -> Fare {
        let distance_minor = div_round_half_up(i128::from(self.per_km_minor) * i128::from(distance_meters), 1000);
        let time_minor = div_round_half_up(i128::from(self.per_minute_minor) * i128::from(duration_seconds), 60);
        let subtotal = (self.base_minor + distance_minor + time_minor).max(self.minimum_minor);
        let total_minor = div_round_half_up(i128::from(subtotal) * i128::from(surge_bps), i128::from(SURGE_ONE));
        Fare {
            currency: self.currency.clone(),
            base_minor: self.base_minor,
            distance_minor,
            time_minor,
            surge_bps,
            total_minor,
            distance_meters,
            duration_seconds,
            total: FareTotal::new(total_minor, &self.currency),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fare_adds_base_distance_and_time_in_minor_units() {
        let policy = PricingPolicy::default();
        // 10 km, 20 min: 250 + 1100 + 500 = 1850.
        let fare = policy.fare(10_000, 1_200, SURGE_ONE);
        assert_eq!((fare.distance_minor, fare.time_minor, fare.total_minor), (1_100, 500, 1_850));
    }

    #[test]
    fn short_rides_pay_the_minimum() {
        let fare = PricingPolicy::default().fare(300, 60, SURGE_ONE);
        assert_eq!(fare.total_minor, 500);
    }

    #[test]
    fn surge_multiplies_and_rounds_half_up() {
        let policy = PricingPolicy::default();
        // 1850 x 1.25 = 2312.5 -> 2313.
        assert_eq!(policy.fare(10_000, 1_200, 12_500).total_minor, 2_313);
        // 1 m at 110/km = 0.11 -> 0; 5 m = 0.55 -> 1.
        assert_eq!(policy.fare(1, 0, SURGE_ONE).distance_minor, 0);
        assert_eq!(policy.fare(5, 0, SURGE_ONE).distance_minor, 1);
    }

    #[test]
    fn surge_is_flat_while_drivers_suffice_then_rises_to_the_cap() {
        let policy = PricingPolicy::default();
        assert_eq!(policy.surge_bps(3, 3), SURGE_ONE);
        assert_eq!(policy.surge_bps(1, 10), SURGE_ONE);
        assert_eq!(policy.surge_bps(4, 2), 15_000);
        assert_eq!(policy.surge_bps(3, 2), 12_500);
        assert_eq!(policy.surge_bps(100, 1), 25_000);
        assert_eq!(policy.surge_bps(1, 0), 25_000);
    }

    #[test]
    fn road_distance_and_duration_estimates() {
        let policy = PricingPolicy::default();
        assert_eq!(policy.road_distance_m(1000.0), 1300);
        assert_eq!(policy.estimated_duration_s(15_000), 1_800);
    }
}
