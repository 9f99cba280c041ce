use crate::error::StoreResult;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ridehail_events::ride::{Canceller, Fare, RideStatus};
use ridehail_events::{GeoPoint, RideId, UserId};
use serde::{Deserialize, Serialize};

/// How a ride ended early.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Cancellation {
    pub cancelled_by: Canceller,
    pub reason: String,
}

/// The ride as clients see it: a projection of the ride's events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RideView {
    pub ride_id: RideId,
    pub rider_id: UserId,
    pub status: RideStatus,
    /// The driver who accepted the ride.
    pub driver_id: Option<UserId>,
    /// The driver the ride is offered to right now, waiting for an answer.
    pub offered_driver_id: Option<UserId>,
    pub offer_expires_at: Option<DateTime<Utc>>,
    pub pickup: GeoPoint,
    pub dropoff: GeoPoint,
    pub pickup_cell: String,
    /// Read from views stored before the fare had `total` too (they are rebuilt when the ride
    /// projection's version rises, and until then are read like this).
    #[serde(deserialize_with = "Fare::deserialize_any_version")]
    pub fare_estimate: Fare,
    #[serde(default, deserialize_with = "Fare::deserialize_any_version_opt")]
    pub fare: Option<Fare>,
    pub cancellation: Option<Cancellation>,
    /// Stars the rider gave the driver.
    pub rider_rating: Option<u8>,
    /// Stars the driver gave the rider.
    pub driver_rating: Option<u8>,
    pub requested_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Sequence of the last event applied; projections only move forward.
    pub version: u64,
}

/// Whose rides to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RideParty {
    Rider(UserId),
    /// Rides assigned or currently offered to the driver.
    Driver(UserId),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RideQuery {
    pub party: RideParty,
    pub status: Option<RideStatus>,
    pub limit: usize,
    /// Continue after this ride (newest first: rides with a smaller id).
    pub before: Option<RideId>,
}

/// The ride read model.
#[async_trait]
pub trait RideViews: Send + Sync + std::fmt::Debug {
    /// Stores `view` unless the stored one is at the same or a newer version. Returns whether it wrote.
    async fn upsert(&self, view: &RideView) -> StoreResult<bool>;
    /// [`RideViews::upsert`] of many views, as one batch where the store can (a rebuild writes
    /// thousands at a time). Returns how many were written.
    async fn upsert_many(&self, views: &[RideView]) -> StoreResult<u64> {
        let mut written = 0;
        for view in views {
            written += u64::from(self.upsert(view).await?);
        }
        Ok(written)
    }
    async fn get(&self, ride_id: RideId) -> StoreResult<Option<RideView>>;
    /// [`RideViews::get`] for a reader that would rather see an older copy than nothing while the
    /// store is down: `Some(age)` marks such a copy. Only a cache in front of the store has one; by
    /// default this is `get`.
    async fn get_or_stale(&self, ride_id: RideId) -> StoreResult<Option<(RideView, Option<std::time::Duration>)>> {
        Ok(self.get(ride_id).await?.map(|view| (view, None)))
    }
    /// Newest first (by ride id, which is time-ordered).
    async fn list(&self, query: &RideQuery) -> StoreResult<Vec<RideView>>;
    /// Rides still looking for a driver whose pickup is in `cell` (surge demand).
    async fn count_waiting_in_cell(&self, cell: &str) -> StoreResult<u64>;
    /// Rides still looking for a driver whose view has not changed since `before`, oldest first (the
    /// candidates of the sweeper that re-arms lost timers).
    async fn waiting_since(&self, before: DateTime<Utc>, limit: usize) -> StoreResult<Vec<RideView>>;
    /// Empties a cache in front of the store, if there is one (after a projection switch, cached
    /// documents may come from the old generation). Stores without a cache have nothing to do.
    async fn forget_cached(&self) -> StoreResult<()> {
        Ok(())
    }
    async fn ping(&self) -> StoreResult<()>;
}
