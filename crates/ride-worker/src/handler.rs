//! Handles one ride command record: load the ride, look up the outside facts the command needs
//! (surge, the nearest free driver, held atomically in the geo index), decide, append with optimistic
//! concurrency (reload and decide again on conflict), then complete the effects: publish the events,
//! project the read model, schedule or cancel timers, hold or release drivers, record the outcome.
//!
//! Redelivery is safe: a command whose outcome is recorded is skipped; one whose events were appended
//! but whose effects may be unfinished is recognised by its causation id and only its effects re-run.

use std::sync::Arc;

use anyhow::Context as _;
use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use ridehail_events::ride::{ExpireOffer, RetryMatching, RideCommand, RideEvent};
use ridehail_events::{Actor, CommandEnvelope, CorrelationId, EventEnvelope, RideId, UserId};
use ridehail_runtime::Backend;
use ridehail_runtime::ports::{AppendError, Rejection, RejectionKind, Timer};
use ridehail_runtime::worker::{self, CommandProcessor, Outcome};
use tracing::debug;

use crate::domain::{
    DriverCandidate, Facts, MatchingPolicy, PricingPolicy, RideRejection, RideState, decide, search_for, state_of,
};
use crate::projection::project;

/// A driver stays held this long after their offer expires, so the expiry timer fires first.
pub const HOLD_GRACE: Duration = Duration::seconds(10);

#[derive(Debug, Clone)]
pub struct RideCommandHandler {
    backend: Backend,
    pricing: Arc<PricingPolicy>,
    matching: Arc<MatchingPolicy>,
}

impl RideCommandHandler {
    pub fn new(backend: Backend, pricing: PricingPolicy, matching: MatchingPolicy) -> Self {
        Self { backend, pricing: Arc::new(pricing), matching: Arc::new(matching) }
    }

    /// Decides and applies `command`; returns its outcome once every effect is durable.
    async fn decide_and_apply(&self, command: &CommandEnvelope<RideCommand>) -> anyhow::Result<Outcome> {
        let b = &self.backend;
        let ride_id = RideId(command.aggregate_id);
        for _ in 0..worker::MAX_CONFLICT_RETRIES {
            let history = worker::load::<RideEvent>(&*b.events, command.aggregate_id).await?;
            let already = worker::caused_by(&history, command.command_id.0);
            if !already.is_empty() {
                self.complete_effects(ride_id, &history, &already).await.map_err(worker::effects_pending)?;
                return Ok(accepted(&already));
            }
            let state = state_of(&history);
            let now = b.clock.now();
            let surge_bps = match &command.command {
                RideCommand::RequestRide(c) if state.is_none() => self.surge_at(&c.pickup.cell(), now).await?,
                _ => crate::domain::fare::SURGE_ONE,
            };
            // Accepting takes the driver for good: claim them in the geo index before deciding, so a
            // driver whose offer hold lapsed and who was then reserved for another ride cannot end up
            // assigned to two rides. The claim is never undone here: the offer is still open, and
            // whatever ends it (assignment, decline, expiry, cancellation) holds or frees the driver.
            let accepting = match (&command.command, &state) {
                (RideCommand::AcceptRide(c), Some(s))
                    if s.offer.as_ref().is_some_and(|o| o.driver_id == c.driver_id) =>
                {
                    Some(c.driver_id)
                }
                _ => None,
            };
            if let Some(driver) = accepting
                && !b.drivers.hold(driver, ride_id, None, now).await?
            {
                return Ok(Outcome::Rejected(Rejection {
                    kind: RejectionKind::Conflict,
                    code: "driver_busy".into(),
                    detail: "the driver is held for another ride".into(),
                }));
            }
            let candidate = match search_for(&state, &command.command, &self.matching) {
                Some(search) => {
                    let hold_until = now + self.matching.offer_timeout() + HOLD_GRACE;
                    b.drivers
                        .reserve_nearest(search.at, search.radius_m, &search.exclude, ride_id, hold_until, now)
                        .await?
                        .map(|c| DriverCandidate { driver_id: c.driver_id, distance_m: c.distance_m.round() as u32 })
                }
                None => None,
            };
            let held: Vec<UserId> = candidate.map(|c| c.driver_id).into_iter().collect();
            let facts = Facts { now, pricing: &self.pricing, matching: &self.matching, surge_bps, candidate };
            let decided = decide(&state, &command.command, &facts);
            let events = match decided {
                Ok(events) => events,
                Err(rejection) => {
                    self.release_unused(&held, &[], ride_id).await?;
                    return Ok(Outcome::Rejected(rejection_of(&rejection)));
                }
            };
            let version = history.len() as u64;
            let new = worker::envelopes(command, command.aggregate_id, version, events, now);
            match worker::append(&*b.events, version, &new).await {
                Ok(()) => {
                    let mut all = history;
                    all.extend(new.iter().cloned());
                    async {
                        self.release_unused(&held, &new, ride_id).await?;
                        self.complete_effects(ride_id, &all, &new).await
                    }
                    .await
                    .map_err(worker::effects_pending)?;
                    return Ok(accepted(&new));
                }
                Err(AppendError::Conflict { .. }) => {
                    debug!(%ride_id, "append conflict; deciding again");
                    self.release_unused(&held, &[], ride_id).await?;
                }
                Err(e) => {
                    self.release_unused(&held, &[], ride_id).await?;
                    return Err(e.into());
                }
            }
        }
        anyhow::bail!("ride {ride_id}: gave up after {} append conflicts", worker::MAX_CONFLICT_RETRIES)
    }

    async fn surge_at(&self, cell: &str, now: DateTime<Utc>) -> anyhow::Result<u32> {
        let b = &self.backend;
        let (waiting, available) =
            tokio::try_join!(b.rides.count_waiting_in_cell(cell), b.drivers.available_in_cell(cell, now))?;
        Ok(self.pricing.surge_bps(waiting + 1, available))
    }

    /// Frees the drivers this attempt reserved whom the appended events did not offer the ride to.
    async fn release_unused(
        &self,
        held: &[UserId],
        events: &[EventEnvelope<RideEvent>],
        ride_id: RideId,
    ) -> anyhow::Result<()> {
        for driver in held {
            let kept = events.iter().any(|e| match &e.event {
                RideEvent::DriverOffered(o) => o.driver_id == *driver,
                RideEvent::DriverAssigned(a) => a.driver_id == *driver,
                _ => false,
            });
            if !kept {
                self.backend.drivers.release(*driver, ride_id).await?;
            }
        }
        Ok(())
    }

    /// Everything that follows an append; each step is idempotent.
    async fn complete_effects(
        &self,
        ride_id: RideId,
        all: &[EventEnvelope<RideEvent>],
        new: &[EventEnvelope<RideEvent>],
    ) -> anyhow::Result<()> {
        let b = &self.backend;
        let view = project(all).context("a ride stream without RideRequested")?;
        b.rides.upsert(&view).await?;
        let state = state_of(all);
        for envelope in new {
            self.driver_and_timer_effects(ride_id, state.as_ref(), envelope).await?;
        }
        worker::publish_events(&*b.bus, ridehail_events::topics::RIDE_EVENTS, new).await?;
        Ok(())
    }

    async fn driver_and_timer_effects(
        &self,
        ride_id: RideId,
        state: Option<&RideState>,
        envelope: &EventEnvelope<RideEvent>,
    ) -> anyhow::Result<()> {
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
                let timer_id = format!("ride:{ride_id}:retry:{}", e.attempt);
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
                    b.timers.cancel(&format!("ride:{ride_id}:retry:{}", s.search_attempt)).await?;
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
            command_id: worker::timer_command_id(timer_id),
            aggregate_id: ride_id.0,
            correlation_id: CorrelationId(cause.correlation_id.0),
            causation_id: Some(cause.event_id.0),
            actor: Actor::System { component: "ride-worker.timers".into() },
            issued_at: due_at,
            command,
        };
        let record = worker::command_record(&envelope.to_wire());
        Timer {
            id: timer_id.to_owned(),
            due_at,
            topic: ridehail_events::topics::RIDE_COMMANDS.to_owned(),
            key: record.key,
            headers: record.headers,
            payload: record.payload,
        }
    }
}

fn offer_timer_id(ride_id: RideId, offer_number: u32) -> String {
    format!("ride:{ride_id}:offer:{offer_number}")
}

fn accepted(events: &[EventEnvelope<RideEvent>]) -> Outcome {
    use ridehail_events::Message;
    Outcome::Accepted(events.iter().map(|e| e.event.type_name().to_owned()).collect())
}

fn rejection_of(rejection: &RideRejection) -> Rejection {
    let kind = match rejection {
        RideRejection::RideNotFound => RejectionKind::NotFound,
        RideRejection::InvalidLocation { .. }
        | RideRejection::TripTooShort
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
        | RideRejection::StaleTimer => RejectionKind::Conflict,
    };
    Rejection { kind, code: rejection.code().to_owned(), detail: rejection.to_string() }
}

#[async_trait]
impl CommandProcessor for RideCommandHandler {
    type Command = RideCommand;

    fn backend(&self) -> &Backend {
        &self.backend
    }

    fn resource(&self, aggregate_id: uuid::Uuid) -> String {
        format!("/v1/rides/{aggregate_id}")
    }

    async fn process(&self, command: &CommandEnvelope<RideCommand>) -> anyhow::Result<Outcome> {
        self.decide_and_apply(command).await
    }
}
