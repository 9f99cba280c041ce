//! The ride aggregate: state, `decide` and `evolve`.

use chrono::{DateTime, Utc};
use ridehail_events::ride::*;
use ridehail_events::{EventEnvelope, GeoPoint, UserId};

use super::fare::PricingPolicy;
use super::matching::{DriverCandidate, MatchingPolicy, Search};

pub use ridehail_events::validation::{MAX_COMMENT_CHARS, MAX_REASON_CHARS, MAX_TRIP_M, MIN_TRIP_M, STARS};

/// The offer a driver has not answered yet.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Offer {
    pub driver_id: UserId,
    pub offer_number: u32,
    pub expires_at: DateTime<Utc>,
}

/// Everything `decide` needs to know about a ride that exists.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RideState {
    pub rider_id: UserId,
    pub pickup: GeoPoint,
    pub dropoff: GeoPoint,
    pub status: RideStatus,
    pub estimate: Fare,
    /// The current search attempt (0-based): sets the radius.
    pub search_attempt: u32,
    /// A wider search is scheduled and nobody is offered the ride meanwhile.
    pub retry_pending: bool,
    pub offers_made: u32,
    pub offer: Option<Offer>,
    /// Every driver ever offered this ride (never offered twice).
    pub tried: Vec<UserId>,
    pub driver_id: Option<UserId>,
    pub started_at: Option<DateTime<Utc>>,
    pub rated_by_rider: bool,
    pub rated_by_driver: bool,
}

/// The facts `decide` needs from outside, looked up by the worker.
#[derive(Debug, Clone, PartialEq)]
pub struct Facts<'a> {
    pub now: DateTime<Utc>,
    pub pricing: &'a PricingPolicy,
    pub matching: &'a MatchingPolicy,
    /// Surge in the pickup's cell (only read by `RequestRide`).
    pub surge_bps: u32,
    /// The driver found by the [`Search`] that [`search_for`] asked for, if any.
    pub candidate: Option<DriverCandidate>,
}

/// Why a command was refused. Carries no technical errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RideRejection {
    #[error("the ride does not exist")]
    RideNotFound,
    #[error("the ride already exists")]
    RideAlreadyExists,
    #[error("{field} is not a valid position")]
    InvalidLocation { field: &'static str },
    #[error("pickup and dropoff are the same place")]
    TripTooShort,
    #[error("pickup and dropoff are more than {} km apart", MAX_TRIP_M / 1000.0)]
    TripTooLong,
    /// The rider has another ride under way (found by the worker, not by `decide`).
    #[error("the rider already has a ride under way")]
    ActiveRideExists,
    #[error("the ride is {status:?}, which does not allow {action}")]
    InvalidState { status: RideStatus, action: &'static str },
    #[error("the ride is not offered to this driver")]
    NotOfferedToDriver,
    #[error("the offer expired")]
    OfferExpired,
    #[error("this driver is not the ride's driver")]
    NotAssignedDriver,
    #[error("only the ride's rider can do this")]
    NotTheRider,
    #[error("a ride in progress cannot be cancelled")]
    AlreadyInProgress,
    #[error("a cancellation needs a reason")]
    ReasonRequired,
    #[error("the reason is longer than {MAX_REASON_CHARS} characters")]
    ReasonTooLong,
    #[error("the reported distance is implausible for this trip")]
    DistanceImplausible,
    #[error("the comment is longer than {MAX_COMMENT_CHARS} characters")]
    CommentTooLong,
    #[error("stars must be between {} and {}", STARS.start(), STARS.end())]
    InvalidStars,
    #[error("this party already rated the ride")]
    AlreadyRated,
    #[error("the timer no longer applies")]
    StaleTimer,
    /// The driver accepting is held for another ride (found by the worker, not by `decide`).
    #[error("the driver is held for another ride")]
    DriverBusy,
}

impl RideRejection {
    /// A stable code for clients and dashboards.
    pub fn code(&self) -> &'static str {
        match self {
            Self::RideNotFound => "ride_not_found",
            Self::RideAlreadyExists => "ride_already_exists",
            Self::InvalidLocation { .. } => "invalid_location",
            Self::TripTooShort => "trip_too_short",
            Self::TripTooLong => "trip_too_long",
            Self::ActiveRideExists => "active_ride_exists",
            Self::InvalidState { .. } => "invalid_ride_state",
            Self::NotOfferedToDriver => "ride_not_offered_to_driver",
            Self::OfferExpired => "offer_expired",
            Self::NotAssignedDriver => "not_assigned_driver",
            Self::NotTheRider => "not_the_rider",
            Self::AlreadyInProgress => "ride_in_progress",
            Self::ReasonRequired => "reason_required",
            Self::ReasonTooLong => "reason_too_long",
            Self::DistanceImplausible => "distance_implausible",
            Self::CommentTooLong => "comment_too_long",
            Self::InvalidStars => "invalid_stars",
            Self::AlreadyRated => "already_rated",
            Self::StaleTimer => "stale_timer",
            Self::DriverBusy => "driver_busy",
        }
    }
}

fn invalid_state(state: &RideState, action: &'static str) -> RideRejection {
    RideRejection::InvalidState { status: state.status, action }
}

fn existing(state: &Option<RideState>) -> Result<&RideState, RideRejection> {
    state.as_ref().ok_or(RideRejection::RideNotFound)
}

/// The current offer, if it is addressed to `driver_id`.
fn offer_to<'a>(state: &'a RideState, driver_id: UserId, action: &'static str) -> Result<&'a Offer, RideRejection> {
    if state.status != RideStatus::Requested {
        return Err(invalid_state(state, action));
    }
    match &state.offer {
        Some(offer) if offer.driver_id == driver_id => Ok(offer),
        _ => Err(RideRejection::NotOfferedToDriver),
    }
}

fn assigned(
    state: &RideState,
    driver_id: UserId,
    expected: RideStatus,
    action: &'static str,
) -> Result<(), RideRejection> {
    if state.driver_id != Some(driver_id) {
        return Err(RideRejection::NotAssignedDriver);
    }
    if state.status != expected {
        return Err(invalid_state(state, action));
    }
    Ok(())
}

/// The geo lookup a command needs before `decide`, if any: which radius to search and whom to skip.
/// `None` when the command does not look for a driver, or will be refused anyway.
pub fn search_for(state: &Option<RideState>, command: &RideCommand, policy: &MatchingPolicy) -> Option<Search> {
    match (state, command) {
        (None, RideCommand::RequestRide(c)) => (c.pickup.validate().is_ok()
            && c.dropoff.validate().is_ok()
            && (MIN_TRIP_M..=MAX_TRIP_M).contains(&c.pickup.distance_m(&c.dropoff)))
        .then(|| Search { at: c.pickup, radius_m: policy.radius_m(0), exclude: Vec::new() }),
        (Some(s), RideCommand::DeclineRide(DeclineRide { driver_id }))
            if offer_to(s, *driver_id, "decline").is_ok() =>
        {
            Some(next_search(s, s.search_attempt, policy))
        }
        (Some(s), RideCommand::ExpireOffer(c)) if timed_out_offer(s, c).is_some() => {
            Some(next_search(s, s.search_attempt, policy))
        }
        (Some(s), RideCommand::RetryMatching(c)) if retry_applies(s, c) => Some(next_search(s, c.attempt, policy)),
        _ => None,
    }
}

fn next_search(state: &RideState, attempt: u32, policy: &MatchingPolicy) -> Search {
    Search { at: state.pickup, radius_m: policy.radius_m(attempt), exclude: state.tried.clone() }
}

fn timed_out_offer<'a>(state: &'a RideState, timer: &ExpireOffer) -> Option<&'a Offer> {
    state.offer.as_ref().filter(|o| {
        state.status == RideStatus::Requested && o.driver_id == timer.driver_id && o.offer_number == timer.offer_number
    })
}

fn retry_applies(state: &RideState, timer: &RetryMatching) -> bool {
    state.status == RideStatus::Requested
        && state.retry_pending
        && state.offer.is_none()
        && state.search_attempt == timer.attempt
}

/// What happens after a search: offer the ride to the candidate, or widen the search, or give up.
fn after_search(state: &RideState, attempt: u32, facts: &Facts<'_>) -> RideEvent {
    match facts.candidate {
        Some(candidate) => RideEvent::DriverOffered(DriverOffered {
            driver_id: candidate.driver_id,
            offer_number: state.offers_made + 1,
            distance_meters: candidate.distance_m,
            search_radius_meters: facts.matching.radius_m(attempt),
            expires_at: facts.now + facts.matching.offer_timeout(),
        }),
        None if facts.matching.is_last_attempt(attempt) => {
            RideEvent::RideExpired(RideExpired { search_attempts: attempt + 1, offers_made: state.offers_made })
        }
        None => RideEvent::MatchingRetryScheduled(MatchingRetryScheduled {
            attempt: attempt + 1,
            search_radius_meters: facts.matching.radius_m(attempt + 1),
            retry_at: facts.now + facts.matching.retry_interval(),
        }),
    }
}

/// Decides what a command does to a ride. Pure: same inputs, same answer.
pub fn decide(
    state: &Option<RideState>,
    command: &RideCommand,
    facts: &Facts<'_>,
) -> Result<Vec<RideEvent>, RideRejection> {
    match command {
        RideCommand::RequestRide(c) => {
            if state.is_some() {
                return Err(RideRejection::RideAlreadyExists);
            }
            c.pickup.validate().map_err(|_| RideRejection::InvalidLocation { field: "pickup" })?;
            c.dropoff.validate().map_err(|_| RideRejection::InvalidLocation { field: "dropoff" })?;
            let straight = c.pickup.distance_m(&c.dropoff);
            if straight < MIN_TRIP_M {
                return Err(RideRejection::TripTooShort);
            }
            if straight > MAX_TRIP_M {
                return Err(RideRejection::TripTooLong);
            }
            let distance = facts.pricing.road_distance_m(straight);
            let estimate = facts.pricing.fare(distance, facts.pricing.estimated_duration_s(distance), facts.surge_bps);
            let requested = RideRequested {
                rider_id: c.rider_id,
                pickup: c.pickup,
                dropoff: c.dropoff,
                pickup_cell: c.pickup.cell(),
                estimate,
            };
            let first = RideEvent::RideRequested(requested);
            let state_after = evolve(None, &first, facts.now);
            let searched = state_after.as_ref().map(|s| after_search(s, 0, facts));
            Ok(std::iter::once(first).chain(searched).collect())
        }
        RideCommand::AcceptRide(AcceptRide { driver_id }) => {
            let s = existing(state)?;
            let offer = offer_to(s, *driver_id, "accept")?;
            if facts.now >= offer.expires_at {
                return Err(RideRejection::OfferExpired);
            }
            Ok(vec![RideEvent::DriverAssigned(DriverAssigned {
                driver_id: *driver_id,
                offer_number: offer.offer_number,
            })])
        }
        RideCommand::DeclineRide(DeclineRide { driver_id }) => {
            let s = existing(state)?;
            let offer = offer_to(s, *driver_id, "decline")?;
            let declined =
                RideEvent::DriverDeclined(DriverDeclined { driver_id: *driver_id, offer_number: offer.offer_number });
            let after = evolve(state.clone(), &declined, facts.now);
            let next = after.as_ref().map(|a| after_search(a, a.search_attempt, facts));
            Ok(std::iter::once(declined).chain(next).collect())
        }
        RideCommand::ExpireOffer(c) => {
            let s = existing(state)?;
            let offer = timed_out_offer(s, c).ok_or(RideRejection::StaleTimer)?;
            if facts.now < offer.expires_at {
                return Err(RideRejection::StaleTimer);
            }
            let expired =
                RideEvent::OfferExpired(OfferExpired { driver_id: c.driver_id, offer_number: c.offer_number });
            let after = evolve(state.clone(), &expired, facts.now);
            let next = after.as_ref().map(|a| after_search(a, a.search_attempt, facts));
            Ok(std::iter::once(expired).chain(next).collect())
        }
        RideCommand::RetryMatching(c) => {
            let s = existing(state)?;
            if !retry_applies(s, c) {
                return Err(RideRejection::StaleTimer);
            }
            Ok(vec![after_search(s, c.attempt, facts)])
        }
        RideCommand::ArriveAtPickup(ArriveAtPickup { driver_id }) => {
            let s = existing(state)?;
            assigned(s, *driver_id, RideStatus::DriverAssigned, "arrive")?;
            Ok(vec![RideEvent::DriverArrived(DriverArrived { driver_id: *driver_id })])
        }
        RideCommand::StartRide(StartRide { driver_id }) => {
            let s = existing(state)?;
            assigned(s, *driver_id, RideStatus::DriverArrived, "start")?;
            Ok(vec![RideEvent::RideStarted(RideStarted { driver_id: *driver_id })])
        }
        RideCommand::CompleteRide(CompleteRide { driver_id, distance_meters }) => {
            let s = existing(state)?;
            assigned(s, *driver_id, RideStatus::InProgress, "complete")?;
            let distance = distance_meters.unwrap_or(s.estimate.distance_meters);
            if distance > facts.pricing.max_reported_distance_m(s.estimate.distance_meters) {
                return Err(RideRejection::DistanceImplausible);
            }
            let started = s.started_at.unwrap_or(facts.now);
            let duration = (facts.now - started).num_seconds().clamp(0, i64::from(u32::MAX)) as u32;
            let fare = facts.pricing.fare(distance, duration, s.estimate.surge_bps);
            Ok(vec![RideEvent::RideCompleted(RideCompleted { driver_id: *driver_id, fare })])
        }
        RideCommand::CancelRide(CancelRide { cancelled_by, reason }) => {
            let s = existing(state)?;
            if reason.trim().is_empty() {
                return Err(RideRejection::ReasonRequired);
            }
            if reason.chars().count() > MAX_REASON_CHARS {
                return Err(RideRejection::ReasonTooLong);
            }
            match cancelled_by {
                Canceller::Rider { rider_id } if *rider_id != s.rider_id => return Err(RideRejection::NotTheRider),
                Canceller::Driver { driver_id } if s.driver_id != Some(*driver_id) => {
                    return Err(RideRejection::NotAssignedDriver);
                }
                _ => {}
            }
            match s.status {
                RideStatus::Requested | RideStatus::DriverAssigned | RideStatus::DriverArrived => {}
                RideStatus::InProgress => return Err(RideRejection::AlreadyInProgress),
                _ => return Err(invalid_state(s, "cancel")),
            }
            let released_driver_id = s.driver_id.or(s.offer.as_ref().map(|o| o.driver_id));
            Ok(vec![RideEvent::RideCancelled(RideCancelled {
                cancelled_by: *cancelled_by,
                reason: reason.clone(),
                released_driver_id,
            })])
        }
        RideCommand::RateRide(RateRide { by, rater_id, stars, comment }) => {
            let s = existing(state)?;
            let (party_id, already) = match by {
                RatingParty::Rider => (Some(s.rider_id), s.rated_by_rider),
                RatingParty::Driver => (s.driver_id, s.rated_by_driver),
            };
            if party_id != Some(*rater_id) {
                return Err(match by {
                    RatingParty::Rider => RideRejection::NotTheRider,
                    RatingParty::Driver => RideRejection::NotAssignedDriver,
                });
            }
            if s.status != RideStatus::Completed {
                return Err(invalid_state(s, "rate"));
            }
            if !STARS.contains(stars) {
                return Err(RideRejection::InvalidStars);
            }
            if comment.as_ref().is_some_and(|c| c.chars().count() > MAX_COMMENT_CHARS) {
                return Err(RideRejection::CommentTooLong);
            }
            if already {
                return Err(RideRejection::AlreadyRated);
            }
            Ok(vec![RideEvent::RideRated(RideRated {
                by: *by,
                rater_id: *rater_id,
                stars: *stars,
                comment: comment.clone(),
            })])
        }
    }
}

/// The state after a whole stream.
pub fn state_of(history: &[EventEnvelope<RideEvent>]) -> Option<RideState> {
    history.iter().fold(None, |s, e| evolve(s, &e.event, e.occurred_at))
}

/// Applies one event. `at` is when it occurred (from its envelope).
pub fn evolve(state: Option<RideState>, event: &RideEvent, at: DateTime<Utc>) -> Option<RideState> {
    if let RideEvent::RideRequested(e) = event {
        return Some(RideState {
            rider_id: e.rider_id,
            pickup: e.pickup,
            dropoff: e.dropoff,
            status: RideStatus::Requested,
            estimate: e.estimate.clone(),
            search_attempt: 0,
            retry_pending: false,
            offers_made: 0,
            offer: None,
            tried: Vec::new(),
            driver_id: None,
            started_at: None,
            rated_by_rider: false,
            rated_by_driver: false,
        });
    }
    let mut s = state?;
    match event {
        RideEvent::RideRequested(_) => {}
        RideEvent::DriverOffered(e) => {
            s.offer = Some(Offer { driver_id: e.driver_id, offer_number: e.offer_number, expires_at: e.expires_at });
            s.offers_made = e.offer_number;
            s.retry_pending = false;
            if !s.tried.contains(&e.driver_id) {
                s.tried.push(e.driver_id);
            }
        }
        RideEvent::DriverDeclined(_) | RideEvent::OfferExpired(_) => s.offer = None,
        RideEvent::MatchingRetryScheduled(e) => {
            s.search_attempt = e.attempt;
            s.retry_pending = true;
        }
        RideEvent::DriverAssigned(e) => {
            s.status = RideStatus::DriverAssigned;
            s.driver_id = Some(e.driver_id);
            s.offer = None;
        }
        RideEvent::DriverArrived(_) => s.status = RideStatus::DriverArrived,
        RideEvent::RideStarted(_) => {
            s.status = RideStatus::InProgress;
            s.started_at = Some(at);
        }
        RideEvent::RideCompleted(_) => s.status = RideStatus::Completed,
        RideEvent::RideCancelled(_) => {
            s.status = RideStatus::Cancelled;
            s.offer = None;
        }
        RideEvent::RideExpired(_) => {
            s.status = RideStatus::Expired;
            s.retry_pending = false;
        }
        RideEvent::RideRated(e) => match e.by {
            RatingParty::Rider => s.rated_by_rider = true,
            RatingParty::Driver => s.rated_by_driver = true,
        },
    }
    Some(s)
}
