//! Rebuilding what the ride worker keeps outside the event store from the ride streams (`ridehail
//! replay`): the ride views, and the drivers held by rides that are offered or under way.

use chrono::{DateTime, Utc};
use ridehail_events::ride::{RideEvent, RideStatus};
use ridehail_events::{EventEnvelope, RideId, UserId};
use ridehail_ports::{Backend, StoreResult};
use tracing::warn;

use crate::domain::state_of;
use crate::handler::HOLD_GRACE;
use crate::projection::project;

/// A driver held for a ride: without deadline once assigned, until the offer's hold lapses while
/// only offered.
type Hold = (UserId, RideId, Option<DateTime<Utc>>);

/// Collects the rides of a replay, then restores the holds in the one order that is safe.
#[derive(Debug, Default)]
pub struct RideRebuild {
    assigned: Vec<Hold>,
    offered: Vec<Hold>,
    /// Ride views written.
    pub rides: usize,
}

impl RideRebuild {
    /// Writes the ride's view (views only move forward, so this is safe on existing views) and notes
    /// the driver the ride holds.
    pub async fn ride(&mut self, backend: &Backend, events: &[EventEnvelope<RideEvent>]) -> StoreResult<()> {
        if let Some(view) = project(events) {
            backend.rides.upsert(&view).await?;
            self.rides += 1;
        }
        let (Some(state), Some(first)) = (state_of(events), events.first()) else { return Ok(()) };
        let ride = RideId(first.aggregate_id);
        match (state.status, &state.offer, state.driver_id) {
            (RideStatus::Requested, Some(offer), _) => {
                self.offered.push((offer.driver_id, ride, Some(offer.expires_at + HOLD_GRACE)));
            }
            (RideStatus::DriverAssigned | RideStatus::DriverArrived | RideStatus::InProgress, _, Some(driver)) => {
                self.assigned.push((driver, ride, None));
            }
            _ => {}
        }
        Ok(())
    }

    /// Restores the holds: rides under way first (no deadline), then open offers, so that a stale
    /// offer can never take a driver who is already assigned to another ride. Run after the drivers'
    /// own rows are rebuilt.
    pub async fn restore_holds(self, backend: &Backend, now: DateTime<Utc>) -> StoreResult<()> {
        for (driver, ride, until) in self.assigned.into_iter().chain(self.offered) {
            if !backend.drivers.hold(driver, ride, until, now).await? {
                warn!(%ride, "driver already held for another ride; hold not restored");
            }
        }
        Ok(())
    }
}
