//! ride-worker's handler on a real embedded backend, with time under the test's control.

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use ride_worker::{MatchingPolicy, PricingPolicy, RideCommandHandler};
use ridehail_events::ride::*;
use ridehail_events::{Actor, CommandEnvelope, CommandId, CorrelationId, GeoPoint, RideId, UserId, WireCommand};
use ridehail_ports::{Backend, Clock, ManualClock};
use ridehail_ports::{CommandState, IncomingMessage, StartFrom};
use ridehail_runtime::consumer::MessageHandler;
use ridehail_runtime::records::command_message;
use tempfile::TempDir;

struct World {
    backend: Backend,
    clock: Arc<ManualClock>,
    handler: RideCommandHandler,
    _dir: TempDir,
}

const PICKUP: GeoPoint = GeoPoint { lat: 38.7223, lon: -9.1393 };
const DROPOFF: GeoPoint = GeoPoint { lat: 38.7369, lon: -9.1427 };

fn world() -> World {
    let dir = TempDir::new().unwrap();
    let clock = Arc::new(ManualClock::new(Utc.with_ymd_and_hms(2026, 11, 26, 9, 0, 0).unwrap()));
    let backend = ridehail_sqlite::open(dir.path(), 2, clock.clone()).unwrap();
    let handler = ride_worker::command_handler(backend.clone(), PricingPolicy::default(), MatchingPolicy::default());
    World { backend, clock, handler, _dir: dir }
}

impl World {
    async fn driver_at(&self, north_m: f64) -> UserId {
        let id = UserId::new();
        let at = GeoPoint { lat: PICKUP.lat + north_m / 111_320.0, lon: PICKUP.lon };
        let fix = ridehail_ports::Fix { location: at, at: self.clock.now() };
        self.backend.drivers.update_driver(id, Some(fix), true, 1).await.unwrap();
        id
    }

    fn message(&self, ride: RideId, actor: Actor, command: RideCommand) -> (CommandId, IncomingMessage) {
        let envelope = CommandEnvelope {
            command_id: CommandId::new(),
            aggregate_id: ride.0,
            correlation_id: CorrelationId::new(),
            causation_id: None,
            actor,
            issued_at: self.clock.now(),
            command,
        };
        (envelope.command_id, incoming(&envelope.to_wire()))
    }

    async fn send(&self, ride: RideId, command: RideCommand) -> CommandId {
        let actor = Actor::User { user_id: uuid::Uuid::now_v7(), role: ridehail_events::Role::Rider };
        let (id, message) = self.message(ride, actor, command);
        self.handler.handle(&message).await.unwrap();
        id
    }

    async fn history(&self, ride: RideId) -> Vec<String> {
        self.backend.events.read_stream(ride.0).await.unwrap().into_iter().map(|e| e.event_type).collect()
    }

    async fn view(&self, ride: RideId) -> ridehail_ports::RideView {
        self.backend.rides.get(ride).await.unwrap().unwrap()
    }
}

/// The record as the worker receives it: system commands on the system topic, the others on the
/// clients' topic.
fn incoming(wire: &WireCommand) -> IncomingMessage {
    let system = matches!(wire.command_type.as_str(), "ExpireOffer" | "RetryMatching");
    let topic =
        if system { ridehail_events::topics::RIDE_SYSTEM_COMMANDS } else { ridehail_events::topics::RIDE_COMMANDS };
    command_message(topic, wire)
}

fn request(rider: UserId) -> RideCommand {
    RideCommand::RequestRide(RequestRide { rider_id: rider, pickup: PICKUP, dropoff: DROPOFF })
}

#[tokio::test]
async fn a_redelivered_command_changes_nothing() {
    let w = world();
    w.driver_at(300.0).await;
    let ride = RideId::new();
    let actor = Actor::User { user_id: uuid::Uuid::now_v7(), role: ridehail_events::Role::Rider };
    let (id, message) = w.message(ride, actor, request(UserId::new()));
    w.handler.handle(&message).await.unwrap();
    let first = w.backend.events.read_stream(ride.0).await.unwrap();
    w.handler.handle(&message).await.unwrap();
    assert_eq!(w.backend.events.read_stream(ride.0).await.unwrap(), first);
    assert_eq!(w.backend.commands.get(id).await.unwrap().unwrap().state, CommandState::Accepted);
}

#[tokio::test]
async fn a_command_appended_before_a_crash_only_finishes_its_effects_on_redelivery() {
    let w = world();
    let ride = RideId::new();
    let envelope = CommandEnvelope {
        command_id: CommandId::new(),
        aggregate_id: ride.0,
        correlation_id: CorrelationId::new(),
        causation_id: None,
        actor: Actor::Anonymous,
        issued_at: Utc::now(),
        command: request(UserId::new()),
    };
    // Decided and appended, but the process died before recording the outcome.
    w.handler.process(&envelope, &mut ridehail_runtime::deferred::Deferred::default()).await.unwrap();
    let appended = w.backend.events.read_stream(ride.0).await.unwrap();
    assert!(w.backend.commands.get(envelope.command_id).await.unwrap().is_none());
    w.handler.handle(&incoming(&envelope.to_wire())).await.unwrap();
    assert_eq!(w.backend.events.read_stream(ride.0).await.unwrap(), appended);
    let status = w.backend.commands.get(envelope.command_id).await.unwrap().unwrap();
    assert_eq!(status.events, ["RideRequested", "MatchingRetryScheduled"]);
}

#[tokio::test]
async fn the_nearest_driver_is_offered_and_a_decline_goes_to_the_next_one() {
    let w = world();
    let near = w.driver_at(200.0).await;
    let far = w.driver_at(900.0).await;
    let ride = RideId::new();
    w.send(ride, request(UserId::new())).await;
    assert_eq!(w.view(ride).await.offered_driver_id, Some(near));
    w.send(ride, RideCommand::DeclineRide(DeclineRide { driver_id: near })).await;
    assert_eq!(w.view(ride).await.offered_driver_id, Some(far));
    assert_eq!(w.history(ride).await, ["RideRequested", "DriverOffered", "DriverDeclined", "DriverOffered"]);
    // The driver who declined is free for another ride.
    let other = RideId::new();
    w.send(other, request(UserId::new())).await;
    assert_eq!(w.view(other).await.offered_driver_id, Some(near));
}

#[tokio::test]
async fn two_rides_never_get_the_same_driver_and_completion_frees_them() {
    let w = world();
    let driver = w.driver_at(100.0).await;
    let (first, second) = (RideId::new(), RideId::new());
    w.send(first, request(UserId::new())).await;
    w.send(second, request(UserId::new())).await;
    assert_eq!(w.view(first).await.offered_driver_id, Some(driver));
    assert_eq!(w.view(second).await.offered_driver_id, None, "the only driver is taken");
    for command in [
        RideCommand::AcceptRide(AcceptRide { driver_id: driver }),
        RideCommand::ArriveAtPickup(ArriveAtPickup { driver_id: driver }),
        RideCommand::StartRide(StartRide { driver_id: driver }),
        RideCommand::CompleteRide(CompleteRide { driver_id: driver, distance_meters: None }),
    ] {
        w.send(first, command).await;
    }
    assert_eq!(w.view(first).await.status, RideStatus::Completed);
    // Free again: the waiting ride's next search finds them.
    w.clock.advance(chrono::Duration::seconds(10));
    w.send(second, RideCommand::RetryMatching(RetryMatching { attempt: 1 })).await;
    assert_eq!(w.view(second).await.offered_driver_id, Some(driver));
}

#[tokio::test]
async fn an_unanswered_offer_expires_through_its_timer_exactly_once() {
    let w = world();
    let driver = w.driver_at(100.0).await;
    let ride = RideId::new();
    w.send(ride, request(UserId::new())).await;
    assert_eq!(w.view(ride).await.offered_driver_id, Some(driver));
    let mut commands = w
        .backend
        .bus
        .subscribe("test", &[ridehail_events::topics::RIDE_SYSTEM_COMMANDS], StartFrom::Latest)
        .await
        .unwrap();
    // Not due yet: nothing fires.
    let fired = ridehail_runtime::timers::fire_due(&*w.backend.timers, &*w.backend.bus, &*w.clock).await.unwrap();
    assert_eq!(fired, 0);
    w.clock.advance(MatchingPolicy::default().offer_timeout());
    let fired = ridehail_runtime::timers::fire_due(&*w.backend.timers, &*w.backend.bus, &*w.clock).await.unwrap();
    assert_eq!(fired, 1);
    let timer_commands = commands.poll(10, std::time::Duration::from_millis(100)).await.unwrap();
    assert_eq!(timer_commands.len(), 1);
    // Delivered twice (a crash between publish and delete): one effect.
    w.handler.handle(&timer_commands[0]).await.unwrap();
    w.handler.handle(&timer_commands[0]).await.unwrap();
    assert_eq!(
        w.history(ride).await,
        ["RideRequested", "DriverOffered", "OfferExpired", "MatchingRetryScheduled"],
        "the only driver was tried, so the search waits to widen"
    );
    assert_eq!(w.view(ride).await.offered_driver_id, None);
}

#[tokio::test]
async fn a_driver_taken_by_another_ride_cannot_accept_an_older_offer() {
    let w = world();
    let driver = w.driver_at(100.0).await;
    let first = RideId::new();
    w.send(first, request(UserId::new())).await;
    assert_eq!(w.view(first).await.offered_driver_id, Some(driver));
    // As if the first offer's hold had been lost (a crash outlasting it): another ride takes the driver.
    w.backend.drivers.release(driver, first).await.unwrap();
    let second = RideId::new();
    w.send(second, request(UserId::new())).await;
    assert_eq!(w.view(second).await.offered_driver_id, Some(driver));
    let accept = w.send(first, RideCommand::AcceptRide(AcceptRide { driver_id: driver })).await;
    let status = w.backend.commands.get(accept).await.unwrap().unwrap();
    assert_eq!(status.rejection.unwrap().code, "driver_busy");
    assert_eq!(w.view(first).await.status, RideStatus::Requested);
    // The ride that holds the driver can still be accepted.
    w.send(second, RideCommand::AcceptRide(AcceptRide { driver_id: driver })).await;
    assert_eq!(w.view(second).await.status, RideStatus::DriverAssigned);
}

#[tokio::test]
async fn a_rider_has_one_ride_under_way_at_a_time_even_when_requests_race() {
    let w = world();
    let rider = UserId::new();
    // Eight requests at once, as one rider trying to hold every nearby driver.
    let messages: Vec<_> = (0..8)
        .map(|_| {
            let actor = Actor::User { user_id: rider.0, role: ridehail_events::Role::Rider };
            w.message(RideId::new(), actor, request(rider))
        })
        .collect();
    let handled = futures::future::join_all(messages.iter().map(|(_, m)| w.handler.handle(m))).await;
    assert!(handled.iter().all(Result::is_ok), "{handled:?}");
    let mut codes = Vec::new();
    for (id, _) in &messages {
        let status = w.backend.commands.get(*id).await.unwrap().unwrap();
        codes.push(status.rejection.map(|r| r.code).unwrap_or_else(|| "accepted".into()));
    }
    assert_eq!(codes.iter().filter(|c| *c == "accepted").count(), 1, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| *c == "active_ride_exists").count(), 7, "{codes:?}");
    // Surge demand counts the rider once.
    assert_eq!(w.backend.rides.count_waiting_in_cell(&PICKUP.cell()).await.unwrap(), 1);

    // Once that ride ends, the rider may ask again.
    let accepted = messages.iter().zip(&codes).find(|(_, code)| *code == "accepted").map(|((id, _), _)| *id).unwrap();
    let ride = RideId(w.backend.commands.get(accepted).await.unwrap().unwrap().aggregate_id);
    let cancel = RideCommand::CancelRide(CancelRide {
        cancelled_by: Canceller::Rider { rider_id: rider },
        reason: "changed my mind".into(),
    });
    let actor = Actor::User { user_id: rider.0, role: ridehail_events::Role::Rider };
    let (_, message) = w.message(ride, actor.clone(), cancel);
    w.handler.handle(&message).await.unwrap();
    let (again, message) = w.message(RideId::new(), actor, request(rider));
    w.handler.handle(&message).await.unwrap();
    let status = w.backend.commands.get(again).await.unwrap().unwrap();
    assert_eq!(status.state, CommandState::Accepted, "{status:?}");
}

#[tokio::test]
async fn system_commands_are_refused_on_the_clients_topic_and_client_commands_on_the_system_topic() {
    use ridehail_runtime::consumer::HandleError;
    let w = world();
    let ride = RideId::new();
    w.send(ride, request(UserId::new())).await;
    let forged = RideCommand::RetryMatching(RetryMatching { attempt: 1 });
    let actor = Actor::System { component: "ride-worker.timers".into() };
    let (_, message) = w.message(ride, actor, forged);
    let on_clients_topic = IncomingMessage { topic: ridehail_events::topics::RIDE_COMMANDS.into(), ..message };
    assert!(matches!(w.handler.handle(&on_clients_topic).await, Err(HandleError::Poison(_))));
    let actor = Actor::User { user_id: uuid::Uuid::now_v7(), role: ridehail_events::Role::Rider };
    let (_, message) = w.message(RideId::new(), actor, request(UserId::new()));
    let on_system_topic = IncomingMessage { topic: ridehail_events::topics::RIDE_SYSTEM_COMMANDS.into(), ..message };
    assert!(matches!(w.handler.handle(&on_system_topic).await, Err(HandleError::Poison(_))));
    assert_eq!(w.history(ride).await, ["RideRequested", "MatchingRetryScheduled"], "nothing changed");
}

#[tokio::test]
async fn the_sweeper_re_arms_the_timer_of_a_ride_whose_timer_was_lost() {
    let w = world();
    let ride = RideId::new();
    w.send(ride, request(UserId::new())).await;
    assert_eq!(w.history(ride).await, ["RideRequested", "MatchingRetryScheduled"], "nobody near: a wider search waits");
    let far = w.clock.now() + chrono::Duration::hours(1);
    let timers = |w: &World| {
        let timers = w.backend.timers.clone();
        async move { timers.due(far, 100).await.unwrap().into_iter().filter(|t| t.id.contains(&ride.to_string())).count() }
    };
    assert_eq!(timers(&w).await, 1);
    // The timer is lost (its command dead-lettered in an outage, say).
    let lost = w.backend.timers.due(far, 100).await.unwrap().remove(0);
    w.backend.timers.cancel(&lost.id).await.unwrap();
    assert_eq!(timers(&w).await, 0);
    let aggregate =
        ride_worker::RideAggregate::new(w.backend.clone(), PricingPolicy::default(), MatchingPolicy::default());
    let stale_after = chrono::Duration::seconds(120);
    // Not waiting for long yet: left alone.
    assert_eq!(ride_worker::sweeper::sweep(&w.backend, &aggregate, stale_after).await.unwrap(), 0);
    assert_eq!(timers(&w).await, 0);
    w.clock.advance(chrono::Duration::seconds(121));
    assert_eq!(ride_worker::sweeper::sweep(&w.backend, &aggregate, stale_after).await.unwrap(), 1);
    let rearmed = w.backend.timers.due(far, 100).await.unwrap();
    assert_eq!(rearmed.iter().filter(|t| t.id == lost.id).count(), 1, "the same timer, so the same command id");
    assert_eq!(rearmed.iter().find(|t| t.id == lost.id).unwrap(), &lost);
    // Sweeping again changes nothing.
    ride_worker::sweeper::sweep(&w.backend, &aggregate, stale_after).await.unwrap();
    assert_eq!(timers(&w).await, 1);
}
