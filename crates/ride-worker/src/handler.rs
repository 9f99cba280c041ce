//! The ride aggregate under the command executor: the outside facts a ride command needs (surge in
//! the pickup's cell, the nearest free driver, held atomically in the geo index), and the effects
//! that follow an append (project the read model, schedule or cancel timers, hold or release drivers,
//! publish the public events). The loop itself (load, decide, append, retry on conflict, record the
//! outcome) is `ridehail_runtime::executor`.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use ridehail_events::ids::rider_slot_id;
use ridehail_events::ride::{
    ActiveRideClaimed, ActiveRideReleased, ExpireOffer, RetryMatching, RideCommand, RideEvent, RiderSlotEvent,
};
use ridehail_events::{Actor, CommandEnvelope, CorrelationId, EventEnvelope, Message as _, RideId, UserId};
use ridehail_ports::{Backend, Rejection, RejectionKind, Resource, RideView, StoreResult, Timer};
use ridehail_runtime::deferred::Deferred;
use ridehail_runtime::executor::{Aggregate, CommandHandler, Executor, Folded, ProcessError};
use ridehail_runtime::records;
use uuid::Uuid;

use crate::domain::{
    DriverCandidate, Facts, MatchingPolicy, PricingPolicy, RideRejection, RideState, decide, evolve, search_for,
    state_of,
};

/// A driver stays held this long after their offer expires, so the expiry timer fires first.
pub const HOLD_GRACE: Duration = Duration::seconds(10);

/// The ride command handler: the ride aggregate run by the executor under the consume loop.
pub type RideCommandHandler = CommandHandler<RideAggregate>;

/// The handler for ride commands on `backend`.
pub fn command_handler(backend: Backend, pricing: PricingPolicy, matching: MatchingPolicy) -> RideCommandHandler {
    CommandHandler::new(RideAggregate::new(backend.clone(), pricing, matching), backend)
}

/// The ride aggregate's domain-specific parts.
#[derive(Debug, Clone)]
pub struct RideAggregate {
    backend: Backend,
    pricing: Arc<PricingPolicy>,
    matching: Arc<MatchingPolicy>,
    /// The riders' slots: a request claims its rider's, the ride's end frees it.
    slots: Arc<Executor<RiderSlot>>,
}

/// A ride stream as the executor folds it: the aggregate's state and the ride's view.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct RideStream {
    pub state: Option<RideState>,
    pub view: Option<RideView>,
}

/// What a ride command needs from outside its stream, looked up for one attempt.
#[derive(Debug)]
pub struct LookedUp {
    ride_id: RideId,
    now: DateTime<Utc>,
    surge_bps: u32,
    /// The nearest free driver, reserved for this ride by this attempt.
    candidate: Option<DriverCandidate>,
}

impl RideAggregate {
    pub fn new(backend: Backend, pricing: PricingPolicy, matching: MatchingPolicy) -> Self {
        let slots = Arc::new(Executor::new(RiderSlot, backend.clone()));
        Self { backend, pricing: Arc::new(pricing), matching: Arc::new(matching), slots }
    }

    async fn surge_at(&self, cell: &str, now: DateTime<Utc>) -> StoreResult<u32> {
        let b = &self.backend;
        let (waiting, available) =
            tokio::try_join!(b.rides.count_waiting_in_cell(cell), b.drivers.available_in_cell(cell, now))?;
        Ok(self.pricing.surge_bps(waiting + 1, available))
    }

    /// Schedules again the timer a waiting ride needs (its offer's expiry, or its wider search) if it
    /// is lost; scheduling an existing timer changes nothing. Returns whether the ride waits on one.
    pub async fn rearm(&self, ride_id: RideId) -> Result<bool, ProcessError> {
        let wires = self.backend.events.read_stream(ride_id.0).await?;
        let history: Vec<EventEnvelope<RideEvent>> = wires
            .into_iter()
            .map(EventEnvelope::from_wire)
            .collect::<Result<_, _>>()
            .map_err(|e| ProcessError::Failed(anyhow::anyhow!("ride {ride_id} does not decode: {e}")))?;
        let Some(state) = state_of(&history) else { return Ok(false) };
        if state.status != ridehail_events::ride::RideStatus::Requested {
            return Ok(false);
        }
        let armed_by = history.iter().rev().find(|e| match &e.event {
            RideEvent::DriverOffered(o) => {
                state.offer.as_ref().is_some_and(|offer| offer.offer_number == o.offer_number)
            }
            RideEvent::MatchingRetryScheduled(r) => state.retry_pending && r.attempt == state.search_attempt,
            _ => false,
        });
        let Some(envelope) = armed_by else { return Ok(false) };
        self.driver_and_timer_effects(ride_id, Some(&state), envelope).await?;
        Ok(true)
    }

    async fn driver_and_timer_effects(
        &self,
        ride_id: RideId,
        state: Option<&RideState>,
        envelope: &EventEnvelope<RideEvent>,
    ) -> StoreResult<()> {
        let b = &self.backend;
        let release = |driver: UserId| b.drivers.release(driver, ride_id);
        match &envelope.event {
            RideEvent::DriverOffered(e) => {
                let timer_id = offer_timer_id(ride_id, e.offer_number);
                let command =
                    RideCommand::ExpireOffer(ExpireOffer { driver_id: e.driver_id, offer_number: e.offer_number });
                b.timers.schedule(&self.timer(&timer_id, e.expires_at, ride_id, envelope, command)).await?;
            }
            RideEvent::MatchingRetryScheduled(e) => {
                let timer_id = retry_timer_id(ride_id, e.attempt);
                let command = RideCommand::RetryMatching(RetryMatching { attempt: e.attempt });
                b.timers.schedule(&self.timer(&timer_id, e.retry_at, ride_id, envelope, command)).await?;
            }
            // The driver was claimed without deadline before the assignment was appended.
            RideEvent::DriverAssigned(e) => b.timers.cancel(&offer_timer_id(ride_id, e.offer_number)).await?,
            RideEvent::DriverDeclined(e) => {
                b.timers.cancel(&offer_timer_id(ride_id, e.offer_number)).await?;
                release(e.driver_id).await?;
            }
            RideEvent::OfferExpired(e) => release(e.driver_id).await?,
            RideEvent::RideCancelled(e) => {
                if let Some(s) = state {
                    b.timers.cancel(&offer_timer_id(ride_id, s.offers_made)).await?;
                    b.timers.cancel(&retry_timer_id(ride_id, s.search_attempt)).await?;
                }
                if let Some(driver) = e.released_driver_id {
                    release(driver).await?;
                }
            }
            RideEvent::RideCompleted(e) => release(e.driver_id).await?,
            RideEvent::RideRequested(_)
            | RideEvent::DriverArrived(_)
            | RideEvent::RideStarted(_)
            | RideEvent::RideExpired(_)
            | RideEvent::RideRated(_) => {}
        }
        Ok(())
    }

    fn timer(
        &self,
        timer_id: &str,
        due_at: DateTime<Utc>,
        ride_id: RideId,
        cause: &EventEnvelope<RideEvent>,
        command: RideCommand,
    ) -> Timer {
        let envelope = CommandEnvelope {
            command_id: records::timer_command_id(timer_id),
            aggregate_id: ride_id.0,
            correlation_id: CorrelationId(cause.correlation_id.0),
            causation_id: Some(cause.event_id.0),
            actor: Actor::System { component: "ride-worker.timers".into() },
            issued_at: due_at,
            command,
        };
        let mut record = records::command_record(&envelope.to_wire());
        // The timer keeps the trace of the command that set it: its firing continues that trace.
        ridehail_runtime::propagation::inject(&tracing::Span::current(), &mut record.headers);
        Timer {
            id: timer_id.to_owned(),
            due_at,
            topic: ridehail_events::topics::RIDE_SYSTEM_COMMANDS.to_owned(),
            key: record.key,
            headers: record.headers,
            payload: record.payload,
        }
    }
}

#[async_trait]
impl Aggregate for RideAggregate {
    type Command = RideCommand;
    type Event = RideEvent;
    type State = RideStream;
    type Facts = LookedUp;
    type Rejection = RideRejection;

    fn evolve(&self, ride: &mut RideStream, event: &EventEnvelope<RideEvent>) {
        ride.state = evolve(ride.state.take(), &event.event, event.occurred_at);
        ride.view = crate::projection::apply(ride.view.take(), event);
    }

    async fn facts(
        &self,
        ride: &RideStream,
        command: &CommandEnvelope<RideCommand>,
        now: DateTime<Utc>,
    ) -> Result<LookedUp, ProcessError> {
        let state = &ride.state;
        let b = &self.backend;
        let ride_id = RideId(command.aggregate_id);
        let surge_bps = match &command.command {
            RideCommand::RequestRide(c) if state.is_none() => self.surge_at(&c.pickup.cell(), now).await?,
            _ => crate::domain::fare::SURGE_ONE,
        };
        // Accepting takes the driver for good: claim them in the geo index before deciding, so a
        // driver whose offer hold lapsed and who was then reserved for another ride cannot end up
        // assigned to two rides. The claim is never undone here: the offer is still open, and
        // whatever ends it (assignment, decline, expiry, cancellation) holds or frees the driver.
        if let (RideCommand::AcceptRide(c), Some(s)) = (&command.command, state)
            && s.offer.as_ref().is_some_and(|o| o.driver_id == c.driver_id)
            && !b.drivers.hold(c.driver_id, ride_id, None, now).await?
        {
            return Err(ProcessError::Rejected(self.rejection(RideRejection::DriverBusy)));
        }
        let candidate = match search_for(state, &command.command, &self.matching) {
            Some(search) => {
                let hold_until = now + self.matching.offer_timeout() + HOLD_GRACE;
                b.drivers
                    .reserve_nearest(search.at, search.radius_m, &search.exclude, ride_id, hold_until, now)
                    .await?
                    .map(|c| DriverCandidate { driver_id: c.driver_id, distance_m: c.distance_m.round() as u32 })
            }
            None => None,
        };
        Ok(LookedUp { ride_id, now, surge_bps, candidate })
    }

    fn decide(
        &self,
        ride: &RideStream,
        command: &RideCommand,
        facts: &LookedUp,
    ) -> Result<Vec<RideEvent>, RideRejection> {
        let facts = Facts {
            now: facts.now,
            pricing: &self.pricing,
            matching: &self.matching,
            surge_bps: facts.surge_bps,
            candidate: facts.candidate,
        };
        decide(&ride.state, command, &facts)
    }

    fn rejection(&self, rejection: RideRejection) -> Rejection {
        rejection.into()
    }

    fn observe(&self, ride: &Folded<RideStream>, new: &[EventEnvelope<RideEvent>]) {
        observe(ride.state.view.as_ref().map(|v| v.requested_at), new);
    }

    /// A request takes its rider's slot (one ride under way per rider), unless the ride already
    /// ended in the same decision.
    async fn claim(&self, command: &CommandEnvelope<RideCommand>, events: &[RideEvent]) -> Result<bool, ProcessError> {
        if !matches!(command.command, RideCommand::RequestRide(_)) || events.iter().any(ends_the_ride) {
            return Ok(false);
        }
        self.slots.execute(command).await?;
        Ok(true)
    }

    /// Frees the driver this attempt reserved unless the appended events offered them the ride.
    async fn release(&self, facts: &LookedUp, appended: &[EventEnvelope<RideEvent>]) -> StoreResult<()> {
        let Some(driver) = facts.candidate.map(|c| c.driver_id) else { return Ok(()) };
        let kept = appended.iter().any(|e| match &e.event {
            RideEvent::DriverOffered(o) => o.driver_id == driver,
            RideEvent::DriverAssigned(a) => a.driver_id == driver,
            _ => false,
        });
        if kept { Ok(()) } else { self.backend.drivers.release(driver, facts.ride_id).await }
    }

    async fn effects(
        &self,
        command: &CommandEnvelope<RideCommand>,
        ride: &Folded<RideStream>,
        new: &[EventEnvelope<RideEvent>],
        deferred: &mut Deferred,
    ) -> Result<(), ProcessError> {
        let view = (ride.state.view.as_ref())
            .ok_or_else(|| ProcessError::Failed(anyhow::anyhow!("a ride stream without RideRequested")))?;
        let ride_id = view.ride_id;
        deferred.upsert_ride(view);
        if !matches!(command.command, RideCommand::RequestRide(_)) && new.iter().any(|e| ends_the_ride(&e.event)) {
            self.slots.execute_on(rider_slot_id(view.rider_id), command, deferred).await?;
        }
        for envelope in new {
            self.driver_and_timer_effects(ride_id, ride.state.state.as_ref(), envelope).await?;
        }
        deferred.publish_events(ridehail_events::topics::RIDE_EVENTS, new);
        Ok(())
    }

    fn resource(&self, aggregate_id: Uuid) -> Resource {
        Resource::Ride(aggregate_id)
    }

    /// System commands (offer expiry, wider search) only from the system topic, which only the timer
    /// service writes; clients' commands only from the client topic.
    fn accepts(&self, topic: &str, command: &CommandEnvelope<RideCommand>) -> Result<(), String> {
        let system = matches!(command.command, RideCommand::ExpireOffer(_) | RideCommand::RetryMatching(_))
            || matches!(command.actor, ridehail_events::Actor::System { .. });
        let from_system_topic = topic == ridehail_events::topics::RIDE_SYSTEM_COMMANDS;
        match (system, from_system_topic) {
            (true, false) => Err(format!("system command {} refused on {topic}", command.command.type_name())),
            (false, true) => Err(format!("client command {} refused on {topic}", command.command.type_name())),
            _ => Ok(()),
        }
    }
}

fn ends_the_ride(event: &RideEvent) -> bool {
    matches!(event, RideEvent::RideCompleted(_) | RideEvent::RideCancelled(_) | RideEvent::RideExpired(_))
}

/// One rider's slot: the ride they have under way, if any. A request claims it (refused while
/// another ride holds it); any other command on the ride holding it frees it (the executor runs it
/// only for commands that ended the ride).
#[derive(Debug)]
pub struct RiderSlot;

#[async_trait]
impl Aggregate for RiderSlot {
    type Command = RideCommand;
    type Event = RiderSlotEvent;
    /// The ride holding the slot.
    type State = Option<RideId>;
    /// The ride the command is about.
    type Facts = RideId;
    type Rejection = RideRejection;

    fn stream_id(&self, command: &CommandEnvelope<RideCommand>) -> Uuid {
        match &command.command {
            RideCommand::RequestRide(c) => rider_slot_id(c.rider_id),
            _ => command.aggregate_id,
        }
    }

    fn evolve(&self, held: &mut Option<RideId>, event: &EventEnvelope<RiderSlotEvent>) {
        match &event.event {
            RiderSlotEvent::ActiveRideClaimed(c) => *held = Some(c.ride_id),
            RiderSlotEvent::ActiveRideReleased(r) if *held == Some(r.ride_id) => *held = None,
            RiderSlotEvent::ActiveRideReleased(_) => {}
        }
    }

    async fn facts(
        &self,
        _held: &Option<RideId>,
        command: &CommandEnvelope<RideCommand>,
        _now: DateTime<Utc>,
    ) -> Result<RideId, ProcessError> {
        Ok(RideId(command.aggregate_id))
    }

    fn decide(
        &self,
        held: &Option<RideId>,
        command: &RideCommand,
        ride_id: &RideId,
    ) -> Result<Vec<RiderSlotEvent>, RideRejection> {
        let ride_id = *ride_id;
        match (command, held) {
            (RideCommand::RequestRide(_), None) => {
                Ok(vec![RiderSlotEvent::ActiveRideClaimed(ActiveRideClaimed { ride_id })])
            }
            (RideCommand::RequestRide(_), Some(held)) if *held == ride_id => Ok(vec![]),
            (RideCommand::RequestRide(_), Some(_)) => Err(RideRejection::ActiveRideExists),
            (_, Some(held)) if *held == ride_id => {
                Ok(vec![RiderSlotEvent::ActiveRideReleased(ActiveRideReleased { ride_id })])
            }
            (_, _) => Ok(vec![]),
        }
    }

    fn rejection(&self, rejection: RideRejection) -> Rejection {
        rejection.into()
    }

    async fn effects(
        &self,
        _command: &CommandEnvelope<RideCommand>,
        _held: &Folded<Option<RideId>>,
        _new: &[EventEnvelope<RiderSlotEvent>],
        _: &mut Deferred,
    ) -> Result<(), ProcessError> {
        Ok(())
    }

    fn resource(&self, aggregate_id: Uuid) -> Resource {
        Resource::Ride(aggregate_id)
    }
}

fn offer_timer_id(ride_id: RideId, offer_number: u32) -> String {
    format!("ride:{ride_id}:offer:{offer_number}")
}

fn retry_timer_id(ride_id: RideId, attempt: u32) -> String {
    format!("ride:{ride_id}:retry:{attempt}")
}

impl From<RideRejection> for Rejection {
    fn from(rejection: RideRejection) -> Self {
        let kind = match rejection {
            RideRejection::RideNotFound => RejectionKind::NotFound,
            RideRejection::InvalidLocation { .. }
            | RideRejection::TripTooShort
            | RideRejection::TripTooLong
            | RideRejection::ReasonRequired
            | RideRejection::ReasonTooLong
            | RideRejection::DistanceImplausible
            | RideRejection::CommentTooLong
            | RideRejection::InvalidStars => RejectionKind::Invalid,
            RideRejection::NotTheRider | RideRejection::NotAssignedDriver | RideRejection::NotOfferedToDriver => {
                RejectionKind::Forbidden
            }
            RideRejection::RideAlreadyExists
            | RideRejection::InvalidState { .. }
            | RideRejection::OfferExpired
            | RideRejection::AlreadyInProgress
            | RideRejection::AlreadyRated
            | RideRejection::StaleTimer
            | RideRejection::DriverBusy
            | RideRejection::ActiveRideExists => RejectionKind::Conflict,
        };
        Rejection { kind, code: rejection.code().to_owned(), detail: rejection.to_string() }
    }
}

/// The business metrics of freshly appended ride events (`requested_at`: when the ride was).
fn observe(requested_at: Option<DateTime<Utc>>, new: &[EventEnvelope<RideEvent>]) {
    use ridehail_runtime::metrics::rides;
    for envelope in new {
        match &envelope.event {
            RideEvent::RideRequested(r) => rides::requested(r.estimate.surge_bps),
            RideEvent::DriverAssigned(_) => {
                rides::matched(requested_at.and_then(|at| (envelope.occurred_at - at).to_std().ok()));
            }
            RideEvent::RideCompleted(c) => rides::completed(c.fare.total_minor, &c.fare.currency),
            RideEvent::RideCancelled(c) => rides::cancelled(match c.cancelled_by {
                ridehail_events::ride::Canceller::Rider { .. } => "rider",
                ridehail_events::ride::Canceller::Driver { .. } => "driver",
                ridehail_events::ride::Canceller::System => "system",
            }),
            RideEvent::RideExpired(_) => rides::expired(),
            _ => {}
        }
    }
}
