//! Property-based round trips: typed message -> wire JSON bytes -> typed message is the identity.

use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use ridehail_events::envelope::{CommandEnvelope, EventEnvelope, Message, WireCommand, WireEvent};
use ridehail_events::ride::*;
use ridehail_events::user::*;
use ridehail_events::{Actor, CommandId, CorrelationId, EventId, GeoPoint, Role, UserId};
use uuid::Uuid;

fn uuid() -> impl Strategy<Value = Uuid> {
    any::<u128>().prop_map(Uuid::from_u128)
}
fn user_id() -> impl Strategy<Value = UserId> {
    uuid().prop_map(UserId)
}
fn point() -> impl Strategy<Value = GeoPoint> {
    (-90.0f64..=90.0, -180.0f64..=180.0).prop_map(|(lat, lon)| GeoPoint { lat, lon })
}
fn time() -> impl Strategy<Value = DateTime<Utc>> {
    (0i64..4_000_000_000, 0u32..1_000_000_000)
        .prop_map(|(secs, nanos)| Utc.timestamp_opt(secs, nanos).single().unwrap())
}
fn text() -> impl Strategy<Value = String> {
    "\\PC{0,40}"
}
fn fare() -> impl Strategy<Value = Fare> {
    (any::<i64>(), any::<i64>(), any::<i64>(), any::<u32>(), any::<i64>(), any::<u32>(), any::<u32>()).prop_map(
        |(b, d, t, s, total, m, secs)| Fare {
            currency: "EUR".into(),
            base_minor: b,
            distance_minor: d,
            time_minor: t,
            surge_bps: s,
            total_minor: total,
            distance_meters: m,
            duration_seconds: secs,
            total: ridehail_events::ride::FareTotal::new(total, "EUR"),
        },
    )
}
fn canceller() -> impl Strategy<Value = Canceller> {
    prop_oneof![
        user_id().prop_map(|rider_id| Canceller::Rider { rider_id }),
        user_id().prop_map(|driver_id| Canceller::Driver { driver_id }),
        Just(Canceller::System),
    ]
}
fn party() -> impl Strategy<Value = RatingParty> {
    prop_oneof![Just(RatingParty::Rider), Just(RatingParty::Driver)]
}
fn vehicle() -> impl Strategy<Value = Vehicle> {
    (text(), text(), text(), text()).prop_map(|(make, model, colour, plate)| Vehicle { make, model, colour, plate })
}
fn role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Rider), Just(Role::Driver)]
}

fn ride_event() -> impl Strategy<Value = RideEvent> {
    prop_oneof![
        (user_id(), point(), point(), text(), fare()).prop_map(|(rider_id, pickup, dropoff, pickup_cell, estimate)| {
            RideEvent::RideRequested(RideRequested { rider_id, pickup, dropoff, pickup_cell, estimate })
        }),
        (user_id(), any::<u32>(), any::<u32>(), any::<u32>(), time()).prop_map(|(driver_id, n, d, r, expires_at)| {
            RideEvent::DriverOffered(DriverOffered {
                driver_id,
                offer_number: n,
                distance_meters: d,
                search_radius_meters: r,
                expires_at,
            })
        }),
        (user_id(), any::<u32>()).prop_map(|(driver_id, offer_number)| RideEvent::DriverDeclined(DriverDeclined {
            driver_id,
            offer_number
        })),
        (user_id(), any::<u32>())
            .prop_map(|(driver_id, offer_number)| RideEvent::OfferExpired(OfferExpired { driver_id, offer_number })),
        (any::<u32>(), any::<u32>(), time()).prop_map(|(attempt, search_radius_meters, retry_at)| {
            RideEvent::MatchingRetryScheduled(MatchingRetryScheduled { attempt, search_radius_meters, retry_at })
        }),
        (user_id(), any::<u32>()).prop_map(|(driver_id, offer_number)| RideEvent::DriverAssigned(DriverAssigned {
            driver_id,
            offer_number
        })),
        user_id().prop_map(|driver_id| RideEvent::DriverArrived(DriverArrived { driver_id })),
        user_id().prop_map(|driver_id| RideEvent::RideStarted(RideStarted { driver_id })),
        (user_id(), fare()).prop_map(|(driver_id, fare)| RideEvent::RideCompleted(RideCompleted { driver_id, fare })),
        (canceller(), text(), proptest::option::of(user_id())).prop_map(
            |(cancelled_by, reason, released_driver_id)| {
                RideEvent::RideCancelled(RideCancelled { cancelled_by, reason, released_driver_id })
            }
        ),
        (any::<u32>(), any::<u32>()).prop_map(|(search_attempts, offers_made)| {
            RideEvent::RideExpired(RideExpired { search_attempts, offers_made })
        }),
        (party(), user_id(), 1u8..=5, proptest::option::of(text())).prop_map(|(by, rater_id, stars, comment)| {
            RideEvent::RideRated(RideRated { by, rater_id, stars, comment })
        }),
    ]
}

fn user_event() -> impl Strategy<Value = UserEvent> {
    prop_oneof![
        (text(), text(), role(), proptest::option::of(vehicle())).prop_map(|(email, name, role, vehicle)| {
            UserEvent::UserRegistered(UserRegistered { email, name, role, vehicle })
        }),
        text().prop_map(|h| UserEvent::PasswordSet(PasswordSet { password_hash: PasswordHash(h) })),
        (proptest::option::of(text()), proptest::option::of(vehicle()))
            .prop_map(|(name, vehicle)| UserEvent::ProfileUpdated(ProfileUpdated { name, vehicle })),
        proptest::option::of(point()).prop_map(|location| UserEvent::DriverWentOnline(DriverWentOnline { location })),
        Just(UserEvent::DriverWentOffline(DriverWentOffline {})),
        point().prop_map(|location| UserEvent::DriverLocationUpdated(DriverLocationUpdated { location })),
    ]
}

fn ride_command() -> impl Strategy<Value = RideCommand> {
    prop_oneof![
        (user_id(), point(), point()).prop_map(|(rider_id, pickup, dropoff)| RideCommand::RequestRide(RequestRide {
            rider_id,
            pickup,
            dropoff
        })),
        user_id().prop_map(|driver_id| RideCommand::AcceptRide(AcceptRide { driver_id })),
        user_id().prop_map(|driver_id| RideCommand::DeclineRide(DeclineRide { driver_id })),
        user_id().prop_map(|driver_id| RideCommand::ArriveAtPickup(ArriveAtPickup { driver_id })),
        user_id().prop_map(|driver_id| RideCommand::StartRide(StartRide { driver_id })),
        (user_id(), proptest::option::of(any::<u32>())).prop_map(|(driver_id, distance_meters)| {
            RideCommand::CompleteRide(CompleteRide { driver_id, distance_meters })
        }),
        (canceller(), text())
            .prop_map(|(cancelled_by, reason)| RideCommand::CancelRide(CancelRide { cancelled_by, reason })),
        (party(), user_id(), 1u8..=5, proptest::option::of(text())).prop_map(|(by, rater_id, stars, comment)| {
            RideCommand::RateRide(RateRide { by, rater_id, stars, comment })
        }),
        (user_id(), any::<u32>())
            .prop_map(|(driver_id, offer_number)| RideCommand::ExpireOffer(ExpireOffer { driver_id, offer_number })),
        any::<u32>().prop_map(|attempt| RideCommand::RetryMatching(RetryMatching { attempt })),
    ]
}

fn user_command() -> impl Strategy<Value = UserCommand> {
    prop_oneof![
        (text(), text(), role(), text(), proptest::option::of(vehicle())).prop_map(
            |(email, name, role, h, vehicle)| {
                UserCommand::RegisterUser(RegisterUser { email, name, role, password_hash: PasswordHash(h), vehicle })
            }
        ),
        (proptest::option::of(text()), proptest::option::of(vehicle()))
            .prop_map(|(name, vehicle)| UserCommand::UpdateProfile(UpdateProfile { name, vehicle })),
        (any::<bool>(), proptest::option::of(point()))
            .prop_map(|(online, location)| UserCommand::SetAvailability(SetAvailability { online, location })),
        point().prop_map(|location| UserCommand::UpdateLocation(UpdateLocation { location })),
    ]
}

fn actor() -> impl Strategy<Value = Actor> {
    prop_oneof![
        (uuid(), role()).prop_map(|(user_id, role)| Actor::User { user_id, role }),
        text().prop_map(|component| Actor::System { component }),
        Just(Actor::Anonymous),
    ]
}

fn event_envelope<E: Message>(event: impl Strategy<Value = E>) -> impl Strategy<Value = EventEnvelope<E>> {
    (uuid(), uuid(), 1u64..u64::MAX, uuid(), uuid(), time(), event).prop_map(
        |(event_id, aggregate_id, sequence, correlation_id, causation_id, occurred_at, event)| EventEnvelope {
            event_id: EventId(event_id),
            aggregate_id,
            sequence,
            correlation_id: CorrelationId(correlation_id),
            causation_id,
            occurred_at,
            event,
        },
    )
}

fn command_envelope<C: Message>(command: impl Strategy<Value = C>) -> impl Strategy<Value = CommandEnvelope<C>> {
    (uuid(), uuid(), uuid(), proptest::option::of(uuid()), actor(), time(), command).prop_map(
        |(command_id, aggregate_id, correlation_id, causation_id, actor, issued_at, command)| CommandEnvelope {
            command_id: CommandId(command_id),
            aggregate_id,
            correlation_id: CorrelationId(correlation_id),
            causation_id,
            actor,
            issued_at,
            command,
        },
    )
}

proptest! {
    #[test]
    fn ride_events_survive_the_wire(envelope in event_envelope(ride_event())) {
        let bytes = envelope.to_wire().to_json();
        let back = EventEnvelope::<RideEvent>::from_wire(WireEvent::from_json(&bytes).unwrap()).unwrap();
        prop_assert_eq!(back, envelope);
    }

    #[test]
    fn user_events_survive_the_wire(envelope in event_envelope(user_event())) {
        let bytes = envelope.to_wire().to_json();
        let back = EventEnvelope::<UserEvent>::from_wire(WireEvent::from_json(&bytes).unwrap()).unwrap();
        prop_assert_eq!(back, envelope);
    }

    #[test]
    fn ride_commands_survive_the_wire(envelope in command_envelope(ride_command())) {
        let bytes = envelope.to_wire().to_json();
        let back = CommandEnvelope::<RideCommand>::from_wire(WireCommand::from_json(&bytes).unwrap()).unwrap();
        prop_assert_eq!(back, envelope);
    }

    #[test]
    fn user_commands_survive_the_wire(envelope in command_envelope(user_command())) {
        let bytes = envelope.to_wire().to_json();
        let back = CommandEnvelope::<UserCommand>::from_wire(WireCommand::from_json(&bytes).unwrap()).unwrap();
        prop_assert_eq!(back, envelope);
    }
}

#[test]
fn a_newer_schema_version_than_known_is_rejected_not_misread() {
    let payload = serde_json::json!({"driver_id": Uuid::nil()});
    let err = RideEvent::decode("DriverArrived", 2, payload).unwrap_err();
    assert!(matches!(err, ridehail_events::DecodeError::UnsupportedVersion { version: 2, newest: 1, .. }));
}

#[test]
fn an_unknown_type_or_bad_payload_is_a_typed_error() {
    let err = RideEvent::decode("RideTeleported", 1, serde_json::json!({})).unwrap_err();
    assert_eq!(err, ridehail_events::DecodeError::UnknownType("RideTeleported".into()));
    let err = RideEvent::decode("DriverArrived", 1, serde_json::json!({"driver_id": 7})).unwrap_err();
    assert!(matches!(err, ridehail_events::DecodeError::Payload { .. }));
}

#[test]
fn an_event_of_another_aggregate_is_refused() {
    let envelope = EventEnvelope {
        event_id: EventId::new(),
        aggregate_id: Uuid::now_v7(),
        sequence: 1,
        correlation_id: CorrelationId::new(),
        causation_id: Uuid::now_v7(),
        occurred_at: Utc::now(),
        event: UserEvent::DriverWentOffline(DriverWentOffline {}),
    };
    let err = EventEnvelope::<RideEvent>::from_wire(envelope.to_wire()).unwrap_err();
    assert!(matches!(err, ridehail_events::DecodeError::WrongAggregate { .. }));
}

#[test]
fn password_hashes_never_show_in_debug_output() {
    let event = UserEvent::PasswordSet(PasswordSet { password_hash: PasswordHash("$argon2id$secret".into()) });
    assert!(!format!("{event:?}").contains("secret"));
    assert!(!event.is_public());
}
