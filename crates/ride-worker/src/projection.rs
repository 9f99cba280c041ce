//! The ride read model, folded from the ride's whole stream (so projecting twice gives the same view
//! and an event seen again changes nothing).

use ridehail_events::ride::{RatingParty, RideEvent, RideStatus};
use ridehail_events::{EventEnvelope, RideId};
use ridehail_ports::{Cancellation, RideView};

/// The version of this projection's code: raise it when the view folded from the same events changes
/// (a field added, a meaning changed), and the deploy rebuilds the ride views live (docs/projections.md).
pub const VERSION: u32 = 2;
// Versions: 1, the first; 2, fares gained `total` (the views' `fare_estimate` and `fare`).

/// The view after `events` (a stream from its first event), or `None` for an empty stream.
pub fn project(events: &[EventEnvelope<RideEvent>]) -> Option<RideView> {
    events.iter().fold(None, apply)
}

/// The view after one more event: `view` is the fold of the stream's events before `envelope`.
pub fn apply(view: Option<RideView>, envelope: &EventEnvelope<RideEvent>) -> Option<RideView> {
    let at = envelope.occurred_at;
    if let RideEvent::RideRequested(e) = &envelope.event {
        return Some(RideView {
            ride_id: RideId(envelope.aggregate_id),
            rider_id: e.rider_id,
            status: RideStatus::Requested,
            driver_id: None,
            offered_driver_id: None,
            offer_expires_at: None,
            pickup: e.pickup,
            dropoff: e.dropoff,
            pickup_cell: e.pickup_cell.clone(),
            fare_estimate: e.estimate.clone(),
            fare: None,
            cancellation: None,
            rider_rating: None,
            driver_rating: None,
            requested_at: at,
            updated_at: at,
            version: envelope.sequence,
        });
    }
    let mut v = view?;
    v.updated_at = at;
    v.version = envelope.sequence;
    match &envelope.event {
        RideEvent::RideRequested(_) => {}
        RideEvent::DriverOffered(e) => {
            v.offered_driver_id = Some(e.driver_id);
            v.offer_expires_at = Some(e.expires_at);
        }
        RideEvent::DriverDeclined(_) | RideEvent::OfferExpired(_) | RideEvent::MatchingRetryScheduled(_) => {
            v.offered_driver_id = None;
            v.offer_expires_at = None;
        }
        RideEvent::DriverAssigned(e) => {
            v.status = RideStatus::DriverAssigned;
            v.driver_id = Some(e.driver_id);
            v.offered_driver_id = None;
            v.offer_expires_at = None;
        }
        RideEvent::DriverArrived(_) => v.status = RideStatus::DriverArrived,
        RideEvent::RideStarted(_) => v.status = RideStatus::InProgress,
        RideEvent::RideCompleted(e) => {
            v.status = RideStatus::Completed;
            v.fare = Some(e.fare.clone());
        }
        RideEvent::RideCancelled(e) => {
            v.status = RideStatus::Cancelled;
            v.offered_driver_id = None;
            v.offer_expires_at = None;
            v.cancellation = Some(Cancellation { cancelled_by: e.cancelled_by, reason: e.reason.clone() });
        }
        RideEvent::RideExpired(_) => v.status = RideStatus::Expired,
        RideEvent::RideRated(e) => match e.by {
            RatingParty::Rider => v.rider_rating = Some(e.stars),
            RatingParty::Driver => v.driver_rating = Some(e.stars),
        },
    }
    Some(v)
}
