//! Given/when/then tests of the ride aggregate: every (state x command) pair, then the details.

use chrono::{DateTime, Duration, TimeZone, Utc};
use ridehail_events::ride::*;
use ridehail_events::{GeoPoint, Message, UserId};
use uuid::Uuid;

use super::*;
use crate::domain::fare::SURGE_ONE;
use crate::domain::ride::Offer;

const RIDER: UserId = UserId(Uuid::from_u128(1));
const DRIVER: UserId = UserId(Uuid::from_u128(2));
const OTHER_DRIVER: UserId = UserId(Uuid::from_u128(3));
const STRANGER: UserId = UserId(Uuid::from_u128(4));

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 26, 8, 0, 0).unwrap()
}
fn pickup() -> GeoPoint {
    GeoPoint { lat: 38.7223, lon: -9.1393 }
}
fn dropoff() -> GeoPoint {
    GeoPoint { lat: 38.7369, lon: -9.1427 }
}

/// A scenario: history (events with the time each occurred), then a command under some facts.
struct Given {
    history: Vec<(RideEvent, DateTime<Utc>)>,
    pricing: PricingPolicy,
    matching: MatchingPolicy,
    now: DateTime<Utc>,
    surge_bps: u32,
    candidate: Option<DriverCandidate>,
}

fn given(events: Vec<RideEvent>) -> Given {
    Given {
        history: events.into_iter().map(|e| (e, t0())).collect(),
        pricing: PricingPolicy::default(),
        matching: MatchingPolicy::default(),
        now: t0() + Duration::seconds(10),
        surge_bps: SURGE_ONE,
        candidate: None,
    }
}

impl Given {
    fn and_then_at(mut self, event: RideEvent, at: DateTime<Utc>) -> Self {
        self.history.push((event, at));
        self
    }
    fn at(mut self, now: DateTime<Utc>) -> Self {
        self.now = now;
        self
    }
    fn with_candidate(mut self, driver_id: UserId, distance_m: u32) -> Self {
        self.candidate = Some(DriverCandidate { driver_id, distance_m });
        self
    }
    fn with_surge(mut self, surge_bps: u32) -> Self {
        self.surge_bps = surge_bps;
        self
    }
    fn state(&self) -> Option<RideState> {
        self.history.iter().fold(None, |s, (e, at)| evolve(s, e, *at))
    }
    fn when(&self, command: RideCommand) -> Result<Vec<RideEvent>, RideRejection> {
        let facts = Facts {
            now: self.now,
            pricing: &self.pricing,
            matching: &self.matching,
            surge_bps: self.surge_bps,
            candidate: self.candidate,
        };
        decide(&self.state(), &command, &facts)
    }
}

// ------------------------------------------------------------------ histories

fn requested() -> RideEvent {
    let pricing = PricingPolicy::default();
    let distance = pricing.road_distance_m(pickup().distance_m(&dropoff()));
    RideEvent::RideRequested(RideRequested {
        rider_id: RIDER,
        pickup: pickup(),
        dropoff: dropoff(),
        pickup_cell: pickup().cell(),
        estimate: pricing.fare(distance, pricing.estimated_duration_s(distance), SURGE_ONE),
    })
}
fn offered(driver_id: UserId, n: u32) -> RideEvent {
    RideEvent::DriverOffered(DriverOffered {
        driver_id,
        offer_number: n,
        distance_meters: 400,
        search_radius_meters: 2_000,
        expires_at: t0() + Duration::seconds(20),
    })
}
fn retry_scheduled(attempt: u32) -> RideEvent {
    RideEvent::MatchingRetryScheduled(MatchingRetryScheduled {
        attempt,
        search_radius_meters: MatchingPolicy::default().radius_m(attempt),
        retry_at: t0() + Duration::seconds(10),
    })
}
fn assigned() -> RideEvent {
    RideEvent::DriverAssigned(DriverAssigned { driver_id: DRIVER, offer_number: 1 })
}
fn arrived() -> RideEvent {
    RideEvent::DriverArrived(DriverArrived { driver_id: DRIVER })
}
fn started() -> RideEvent {
    RideEvent::RideStarted(RideStarted { driver_id: DRIVER })
}
fn completed() -> RideEvent {
    RideEvent::RideCompleted(RideCompleted {
        driver_id: DRIVER,
        fare: PricingPolicy::default().fare(2_000, 600, SURGE_ONE),
    })
}

fn history(name: &str) -> Vec<RideEvent> {
    let mut h = match name {
        "none" => return vec![],
        "searching" => return vec![requested(), retry_scheduled(1)],
        "expired" => {
            return vec![requested(), RideEvent::RideExpired(RideExpired { search_attempts: 4, offers_made: 0 })];
        }
        _ => vec![requested(), offered(DRIVER, 1)],
    };
    let steps: &[fn() -> RideEvent] = match name {
        "offered" => &[],
        "assigned" => &[assigned],
        "arrived" => &[assigned, arrived],
        "in_progress" => &[assigned, arrived, started],
        "completed" => &[assigned, arrived, started, completed],
        "cancelled" => {
            h.push(RideEvent::RideCancelled(RideCancelled {
                cancelled_by: Canceller::Rider { rider_id: RIDER },
                reason: "plans changed".into(),
                released_driver_id: Some(DRIVER),
            }));
            &[]
        }
        other => panic!("unknown state {other}"),
    };
    h.extend(steps.iter().map(|f| f()));
    h
}

// ------------------------------------------------------------------ commands

fn command(name: &str) -> RideCommand {
    match name {
        "request" => RideCommand::RequestRide(RequestRide { rider_id: RIDER, pickup: pickup(), dropoff: dropoff() }),
        "accept" => RideCommand::AcceptRide(AcceptRide { driver_id: DRIVER }),
        "decline" => RideCommand::DeclineRide(DeclineRide { driver_id: DRIVER }),
        "arrive" => RideCommand::ArriveAtPickup(ArriveAtPickup { driver_id: DRIVER }),
        "start" => RideCommand::StartRide(StartRide { driver_id: DRIVER }),
        "complete" => RideCommand::CompleteRide(CompleteRide { driver_id: DRIVER, distance_meters: Some(5_000) }),
        "cancel" => RideCommand::CancelRide(CancelRide {
            cancelled_by: Canceller::Rider { rider_id: RIDER },
            reason: "changed my mind".into(),
        }),
        "rate" => RideCommand::RateRide(RateRide { by: RatingParty::Rider, rater_id: RIDER, stars: 5, comment: None }),
        "expire_offer" => RideCommand::ExpireOffer(ExpireOffer { driver_id: DRIVER, offer_number: 1 }),
        "retry" => RideCommand::RetryMatching(RetryMatching { attempt: 1 }),
        other => panic!("unknown command {other}"),
    }
}

#[derive(Debug)]
enum Expect {
    Events(&'static [&'static str]),
    Reject(RideRejection),
}
use Expect::{Events, Reject};

fn bad(status: RideStatus, action: &'static str) -> Expect {
    Reject(RideRejection::InvalidState { status, action })
}

/// The whole matrix, under default facts: now = t0 + 10 s (offer still open), no candidate found.
fn matrix() -> Vec<(&'static str, &'static str, Expect)> {
    use RideRejection::*;
    use RideStatus as S;
    let mut rows = Vec::new();
    // No ride yet: only a request makes sense.
    rows.push(("none", "request", Events(&["RideRequested", "MatchingRetryScheduled"])));
    for c in ["accept", "decline", "arrive", "start", "complete", "cancel", "rate", "expire_offer", "retry"] {
        rows.push(("none", c, Reject(RideNotFound)));
    }
    let states = ["searching", "offered", "assigned", "arrived", "in_progress", "completed", "cancelled", "expired"];
    for s in states {
        rows.push((s, "request", Reject(RideAlreadyExists)));
    }
    let status = |s: &str| match s {
        "searching" | "offered" => S::Requested,
        "assigned" => S::DriverAssigned,
        "arrived" => S::DriverArrived,
        "in_progress" => S::InProgress,
        "completed" => S::Completed,
        "cancelled" => S::Cancelled,
        _ => S::Expired,
    };
    for s in states {
        let st = status(s);
        let has_driver = matches!(s, "assigned" | "arrived" | "in_progress" | "completed");
        // accept / decline: only for the open offer.
        let offer_answer = |action| match s {
            "offered" => None,
            "searching" => Some(Reject(NotOfferedToDriver)),
            _ => Some(bad(st, action)),
        };
        rows.push((s, "accept", offer_answer("accept").unwrap_or(Events(&["DriverAssigned"]))));
        rows.push((
            s,
            "decline",
            offer_answer("decline").unwrap_or(Events(&["DriverDeclined", "MatchingRetryScheduled"])),
        ));
        // Driver progress: arrive -> start -> complete, each from exactly one state.
        for (action, from, event) in [
            ("arrive", S::DriverAssigned, "DriverArrived"),
            ("start", S::DriverArrived, "RideStarted"),
            ("complete", S::InProgress, "RideCompleted"),
        ] {
            let expect = if !has_driver {
                Reject(NotAssignedDriver)
            } else if st == from {
                Events(match event {
                    "DriverArrived" => &["DriverArrived"],
                    "RideStarted" => &["RideStarted"],
                    _ => &["RideCompleted"],
                })
            } else {
                bad(st, action)
            };
            rows.push((s, action, expect));
        }
        rows.push((
            s,
            "cancel",
            match st {
                S::Requested | S::DriverAssigned | S::DriverArrived => Events(&["RideCancelled"]),
                S::InProgress => Reject(AlreadyInProgress),
                _ => bad(st, "cancel"),
            },
        ));
        rows.push((s, "rate", if st == S::Completed { Events(&["RideRated"]) } else { bad(st, "rate") }));
        rows.push((s, "expire_offer", Reject(StaleTimer)));
        rows.push((
            s,
            "retry",
            if s == "searching" { Events(&["MatchingRetryScheduled"]) } else { Reject(StaleTimer) },
        ));
    }
    rows
}

#[test]
fn every_state_and_command_pair_has_the_expected_outcome() {
    let rows = matrix();
    assert_eq!(rows.len(), 9 * 10, "one row per (state x command)");
    let mut failures = Vec::new();
    for (state, cmd, expect) in rows {
        let got = given(history(state)).when(command(cmd));
        let ok = match (&expect, &got) {
            (Events(types), Ok(events)) => events.iter().map(|e| e.type_name()).eq(types.iter().copied()),
            (Reject(want), Err(rejection)) => want == rejection,
            _ => false,
        };
        if !ok {
            failures.push(format!("given {state} when {cmd}: expected {expect:?}, got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ------------------------------------------------------------------ request and matching

#[test]
fn a_request_quotes_the_fare_with_surge_and_offers_the_nearest_driver() {
    let events = given(vec![]).with_surge(15_000).with_candidate(DRIVER, 350).when(command("request")).unwrap();
    let RideEvent::RideRequested(requested) = &events[0] else { panic!("{events:?}") };
    let pricing = PricingPolicy::default();
    let distance = pricing.road_distance_m(pickup().distance_m(&dropoff()));
    assert_eq!(requested.estimate, pricing.fare(distance, pricing.estimated_duration_s(distance), 15_000));
    assert_eq!(requested.estimate.surge_bps, 15_000);
    assert_eq!(requested.pickup_cell, pickup().cell());
    assert_eq!(
        events[1],
        RideEvent::DriverOffered(DriverOffered {
            driver_id: DRIVER,
            offer_number: 1,
            distance_meters: 350,
            search_radius_meters: 2_000,
            expires_at: t0() + Duration::seconds(10) + Duration::seconds(20),
        })
    );
}

#[test]
fn a_request_with_a_bad_position_or_a_trivial_trip_is_refused() {
    let bad_pickup = RideCommand::RequestRide(RequestRide {
        rider_id: RIDER,
        pickup: GeoPoint { lat: 91.0, lon: 0.0 },
        dropoff: dropoff(),
    });
    assert_eq!(given(vec![]).when(bad_pickup), Err(RideRejection::InvalidLocation { field: "pickup" }));
    let same = RideCommand::RequestRide(RequestRide { rider_id: RIDER, pickup: pickup(), dropoff: pickup() });
    assert_eq!(given(vec![]).when(same), Err(RideRejection::TripTooShort));
    let pole_to_pole = RideCommand::RequestRide(RequestRide {
        rider_id: RIDER,
        pickup: GeoPoint { lat: 89.9, lon: 0.0 },
        dropoff: GeoPoint { lat: -89.9, lon: 0.0 },
    });
    assert_eq!(given(vec![]).when(pole_to_pole), Err(RideRejection::TripTooLong));
}

#[test]
fn search_asks_for_the_first_radius_then_skips_drivers_already_tried() {
    let policy = MatchingPolicy::default();
    let search = search_for(&None, &command("request"), &policy).unwrap();
    assert_eq!((search.at, search.radius_m, search.exclude.len()), (pickup(), 2_000, 0));

    let g = given(vec![
        requested(),
        offered(OTHER_DRIVER, 1),
        RideEvent::DriverDeclined(DriverDeclined { driver_id: OTHER_DRIVER, offer_number: 1 }),
        offered(DRIVER, 2),
    ]);
    let search = search_for(&g.state(), &command("decline"), &policy).unwrap();
    assert_eq!(search.exclude, vec![OTHER_DRIVER, DRIVER]);
    // Commands that will be refused need no lookup.
    assert_eq!(search_for(&g.state(), &command("accept"), &policy), None);
    assert_eq!(search_for(&g.state(), &command("request"), &policy), None);
}

#[test]
fn a_decline_offers_the_ride_to_the_next_driver() {
    let events = given(history("offered")).with_candidate(OTHER_DRIVER, 900).when(command("decline")).unwrap();
    assert_eq!(events[0], RideEvent::DriverDeclined(DriverDeclined { driver_id: DRIVER, offer_number: 1 }));
    let RideEvent::DriverOffered(next) = &events[1] else { panic!("{events:?}") };
    assert_eq!((next.driver_id, next.offer_number), (OTHER_DRIVER, 2));
}

#[test]
fn only_the_offered_driver_may_answer_and_only_in_time() {
    let g = given(history("offered"));
    assert_eq!(
        g.when(RideCommand::AcceptRide(AcceptRide { driver_id: STRANGER })),
        Err(RideRejection::NotOfferedToDriver)
    );
    let late = given(history("offered")).at(t0() + Duration::seconds(20));
    assert_eq!(late.when(command("accept")), Err(RideRejection::OfferExpired));
}

#[test]
fn an_unanswered_offer_expires_when_due_and_moves_on() {
    let due = given(history("offered")).at(t0() + Duration::seconds(20)).with_candidate(OTHER_DRIVER, 1_200);
    let events = due.when(command("expire_offer")).unwrap();
    assert_eq!(events[0], RideEvent::OfferExpired(OfferExpired { driver_id: DRIVER, offer_number: 1 }));
    assert!(matches!(&events[1], RideEvent::DriverOffered(o) if o.driver_id == OTHER_DRIVER && o.offer_number == 2));
    // A timer for an older offer is stale.
    let stale = given(vec![
        requested(),
        offered(DRIVER, 1),
        RideEvent::DriverDeclined(DriverDeclined { driver_id: DRIVER, offer_number: 1 }),
        offered(OTHER_DRIVER, 2),
    ])
    .at(t0() + Duration::seconds(60));
    assert_eq!(stale.when(command("expire_offer")), Err(RideRejection::StaleTimer));
}

#[test]
fn the_search_widens_step_by_step_and_the_ride_expires_at_the_widest_radius() {
    let policy = MatchingPolicy::default();
    let mut history = vec![requested()];
    let mut attempt = 0;
    loop {
        let g = given(history.clone());
        let cmd = if attempt == 0 {
            // The first, empty search happened with the request.
            let events = given(vec![]).when(command("request")).unwrap();
            history = events;
            attempt += 1;
            continue;
        } else {
            RideCommand::RetryMatching(RetryMatching { attempt })
        };
        let events = g.when(cmd).unwrap();
        match &events[..] {
            [RideEvent::MatchingRetryScheduled(r)] => {
                assert_eq!(r.attempt, attempt + 1);
                assert_eq!(r.search_radius_meters, policy.radius_m(attempt + 1));
                history.extend(events);
                attempt += 1;
            }
            [RideEvent::RideExpired(e)] => {
                assert!(policy.is_last_attempt(attempt));
                assert_eq!(e.search_attempts, attempt + 1);
                history.extend(events);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(attempt, 3, "2 km, 4 km, 6 km, then 8 km is the last");
    assert_eq!(given(history).state().unwrap().status, RideStatus::Expired);
}

// ------------------------------------------------------------------ progress, fares, cancel, ratings

#[test]
fn completion_charges_distance_driven_and_time_since_start_at_the_quoted_surge() {
    let mut g = given(vec![requested(), offered(DRIVER, 1), assigned(), arrived()]);
    g = g.and_then_at(started(), t0() + Duration::minutes(5)).at(t0() + Duration::minutes(17));
    let events = g.when(command("complete")).unwrap();
    let RideEvent::RideCompleted(done) = &events[0] else { panic!("{events:?}") };
    assert_eq!(done.fare, PricingPolicy::default().fare(5_000, 12 * 60, SURGE_ONE));
    // 250 + 550 + 300 = 1100.
    assert_eq!(done.fare.total_minor, 1_100);
}

#[test]
fn a_reported_distance_far_beyond_the_trip_is_refused() {
    let g = given(history("in_progress")).at(t0() + Duration::minutes(20));
    let estimate = match &requested() {
        RideEvent::RideRequested(r) => r.estimate.distance_meters,
        _ => unreachable!(),
    };
    let max = PricingPolicy::default().max_reported_distance_m(estimate);
    let complete = |m| RideCommand::CompleteRide(CompleteRide { driver_id: DRIVER, distance_meters: Some(m) });
    assert!(g.when(complete(max)).is_ok());
    assert_eq!(g.when(complete(max + 1)), Err(RideRejection::DistanceImplausible));
    assert_eq!(g.when(complete(u32::MAX)), Err(RideRejection::DistanceImplausible));
}

#[test]
fn cancelling_releases_whoever_holds_the_ride_and_records_who_cancelled() {
    let events = given(history("assigned")).when(command("cancel")).unwrap();
    assert_eq!(
        events,
        vec![RideEvent::RideCancelled(RideCancelled {
            cancelled_by: Canceller::Rider { rider_id: RIDER },
            reason: "changed my mind".into(),
            released_driver_id: Some(DRIVER),
        })]
    );
    let by_driver = RideCommand::CancelRide(CancelRide {
        cancelled_by: Canceller::Driver { driver_id: DRIVER },
        reason: "flat tyre".into(),
    });
    assert!(given(history("arrived")).when(by_driver.clone()).is_ok());
    assert_eq!(given(history("offered")).when(by_driver), Err(RideRejection::NotAssignedDriver));
    let by_stranger = RideCommand::CancelRide(CancelRide {
        cancelled_by: Canceller::Rider { rider_id: STRANGER },
        reason: "not mine".into(),
    });
    assert_eq!(given(history("assigned")).when(by_stranger), Err(RideRejection::NotTheRider));
    let by_system = RideCommand::CancelRide(CancelRide { cancelled_by: Canceller::System, reason: "fraud".into() });
    assert!(given(history("searching")).when(by_system).is_ok());
    let long = RideCommand::CancelRide(CancelRide { cancelled_by: Canceller::System, reason: "x".repeat(201) });
    assert_eq!(given(history("assigned")).when(long), Err(RideRejection::ReasonTooLong));
    let blank = RideCommand::CancelRide(CancelRide { cancelled_by: Canceller::System, reason: "  ".into() });
    assert_eq!(given(history("assigned")).when(blank), Err(RideRejection::ReasonRequired));
}

#[test]
fn each_side_rates_once_with_one_to_five_stars() {
    let rate =
        |by, rater_id, stars| RideCommand::RateRide(RateRide { by, rater_id, stars, comment: Some("great".into()) });
    let g = given(history("completed"));
    assert!(g.when(rate(RatingParty::Driver, DRIVER, 4)).is_ok());
    assert_eq!(g.when(rate(RatingParty::Rider, RIDER, 0)), Err(RideRejection::InvalidStars));
    assert_eq!(g.when(rate(RatingParty::Rider, RIDER, 6)), Err(RideRejection::InvalidStars));
    assert_eq!(g.when(rate(RatingParty::Rider, STRANGER, 5)), Err(RideRejection::NotTheRider));
    assert_eq!(g.when(rate(RatingParty::Driver, OTHER_DRIVER, 5)), Err(RideRejection::NotAssignedDriver));
    let rated = RideEvent::RideRated(RideRated { by: RatingParty::Rider, rater_id: RIDER, stars: 5, comment: None });
    let again = given(history("completed")).and_then_at(rated, t0());
    assert_eq!(again.when(rate(RatingParty::Rider, RIDER, 3)), Err(RideRejection::AlreadyRated));
    assert!(again.when(rate(RatingParty::Driver, DRIVER, 3)).is_ok());
}

#[test]
fn evolve_tracks_offers_tried_drivers_and_the_start_time() {
    let g = given(history("offered")).and_then_at(assigned(), t0()).and_then_at(arrived(), t0());
    let g = g.and_then_at(started(), t0() + Duration::minutes(3));
    let s = g.state().unwrap();
    assert_eq!(s.status, RideStatus::InProgress);
    assert_eq!(s.driver_id, Some(DRIVER));
    assert_eq!(s.offer, None);
    assert_eq!(s.tried, vec![DRIVER]);
    assert_eq!(s.started_at, Some(t0() + Duration::minutes(3)));
    let offered_state = given(history("offered")).state().unwrap();
    assert_eq!(
        offered_state.offer,
        Some(Offer { driver_id: DRIVER, offer_number: 1, expires_at: t0() + Duration::seconds(20) })
    );
}
