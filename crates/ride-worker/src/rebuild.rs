//! Rebuilding what the ride worker keeps outside the event store from the ride streams: the ride
//! views live, into a new generation ([`RideFold`], `ridehail projections rebuild rides`), and with
//! `ridehail replay` the views in place plus the drivers held by rides that are offered or under way.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ridehail_events::ride::{RideEvent, RideStatus};
use ridehail_events::{AggregateType, EventEnvelope, RideId, UserId, WireEvent};
use ridehail_ports::projections::Projection;
use ridehail_ports::{Backend, RideView, StoreResult};
use ridehail_runtime::rebuild::{Fold, HELD_STREAMS, Step, step};
use tracing::warn;
use uuid::Uuid;

use crate::domain::state_of;
use crate::handler::HOLD_GRACE;
use crate::projection::{VERSION, apply, project};

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

/// The `rides` projection's fold for a live rebuild ([`ridehail_runtime::rebuild`]): each ride's view,
/// applied event by event in the history's global order, written to the generation once per page.
#[derive(Debug, Default)]
pub struct RideFold {
    views: HashMap<Uuid, RideView>,
}

#[async_trait]
impl Fold for RideFold {
    fn projection(&self) -> Projection {
        Projection::Rides
    }

    fn code_version(&self) -> u32 {
        VERSION
    }

    async fn apply(&mut self, backend: &Backend, generation: u64, events: Vec<WireEvent>) -> anyhow::Result<u64> {
        let target = backend.projections.rides(generation);
        let mut changed = HashSet::new();
        for wire in events.into_iter().filter(|e| e.aggregate_type == AggregateType::Ride) {
            let id = wire.aggregate_id;
            if !self.views.contains_key(&id) && wire.sequence > 1 {
                // Not seen since the rebuild (re)started: the generation has its fold so far.
                if let Some(view) = target.get(RideId(id)).await? {
                    self.views.insert(id, view);
                }
            }
            let held = self.views.get(&id).map(|v| v.version);
            let view = match step(held, wire.sequence) {
                Step::Skip => continue,
                Step::Apply => apply(self.views.remove(&id), &EventEnvelope::<RideEvent>::from_wire(wire)?),
                Step::Refold => {
                    let stream = backend.events.read_stream(id).await?;
                    let stream: Vec<EventEnvelope<RideEvent>> =
                        stream.into_iter().map(EventEnvelope::from_wire).collect::<Result<_, _>>()?;
                    project(&stream)
                }
            };
            if let Some(view) = view {
                self.views.insert(id, view);
                changed.insert(id);
            }
        }
        let views: Vec<RideView> = changed.iter().filter_map(|id| self.views.get(id).cloned()).collect();
        let written = target.upsert_many(&views).await?;
        if self.views.len() > HELD_STREAMS {
            self.views.clear();
        }
        Ok(written)
    }
}
