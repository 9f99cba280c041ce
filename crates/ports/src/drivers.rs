use crate::error::StoreResult;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ridehail_events::{GeoPoint, RideId, UserId};

/// A driver picked for a ride, and how far they are from the pickup.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub driver_id: UserId,
    pub distance_m: f64,
}

/// Where a driver was, and when (a position fix).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fix {
    pub location: GeoPoint,
    pub at: DateTime<Utc>,
}

/// How long a driver's last position counts: a driver silent for longer is not offered rides, nor
/// counted as supply, until they report again (docs/locations.md).
pub const LOCATION_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(300);

/// The driver geo index: where online drivers are and which are free.
///
/// A driver is *available* when online, located by a fix younger than the index's maximum age
/// ([`LOCATION_MAX_AGE`] unless configured), and not held for a ride. A hold has a deadline while
/// the ride is only offered (so a hold left by a crash frees itself) and none once the driver accepted.
#[async_trait]
pub trait DriverLocator: Send + Sync + std::fmt::Debug {
    /// Records a driver's online flag as of user-stream `version` (older versions are ignored) and
    /// the fix the stream knows, unless a newer fix is recorded. `fix: None` keeps the last one.
    async fn update_driver(&self, driver_id: UserId, fix: Option<Fix>, online: bool, version: u64) -> StoreResult<()>;

    /// Records a location ping (telemetry, not history), unless a newer fix is recorded. False when
    /// the index does not know the driver (their registration is not projected yet).
    async fn report_location(&self, driver_id: UserId, fix: Fix) -> StoreResult<bool>;

    /// Atomically picks the nearest available driver within `radius_m` of `at` (skipping `exclude`)
    /// and holds them for `ride_id` until `hold_until`.
    async fn reserve_nearest(
        &self,
        at: GeoPoint,
        radius_m: u32,
        exclude: &[UserId],
        ride_id: RideId,
        hold_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Candidate>>;

    /// Holds the driver for the ride (`until: None` = until released). False when the driver is held
    /// for another ride.
    async fn hold(
        &self,
        driver_id: UserId,
        ride_id: RideId,
        until: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> StoreResult<bool>;

    /// Frees the driver if held for this ride; otherwise does nothing.
    async fn release(&self, driver_id: UserId, ride_id: RideId) -> StoreResult<()>;

    /// Available drivers located in the surge cell (supply).
    async fn available_in_cell(&self, cell: &str, now: DateTime<Utc>) -> StoreResult<u64>;

    /// Drivers online with a known location, held or free (the `drivers online` gauge).
    async fn online(&self) -> StoreResult<u64>;

    async fn ping(&self) -> StoreResult<()>;
}
