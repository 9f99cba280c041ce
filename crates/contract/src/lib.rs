//! The port contract suites: each function is one behaviour every adapter of a port must show, and
//! each port's suite macro ([`suites`]) runs all of them against an adapter's [`Fixture`]. The
//! embedded (`ridehail-sqlite`), Kafka, MongoDB and Redis adapters run the very same bodies.

mod fixture;
pub mod proxy;
pub mod suites;
pub mod tls;

pub use fixture::{Capability, Fixture};

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use ridehail_events::Role;
use ridehail_events::ride::{Fare, RideStatus};
use ridehail_events::topics::headers;
use ridehail_events::user::PasswordHash;
use ridehail_events::{AggregateType, CommandId, CorrelationId, GeoPoint, RideId, UserId, WireEvent};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use ridehail_ports::*;
use ridehail_runtime::consumer::{ConsumerConfig, HandleError, MessageHandler};

/// The address of a real test server, from `var` (set by `scripts/test-services`, which the README's
/// test command runs). Unset: the test prints a visible `SKIPPED` line and is not run, unless
/// `RIDEHAIL_TEST_REQUIRE_SERVICES=1` (set by `scripts/test`), where a missing server is a failure.
pub fn test_server(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(value) if !value.is_empty() => Some(value),
        _ if std::env::var("RIDEHAIL_TEST_REQUIRE_SERVICES").as_deref() == Ok("1") => {
            panic!(
                "{var} is not set but RIDEHAIL_TEST_REQUIRE_SERVICES=1: start the servers with scripts/test-services"
            )
        }
        _ => {
            eprintln!("SKIPPED ({var} unset: run the suite with scripts/test, which starts the test servers)");
            None
        }
    }
}

/// A name no other test uses (topics, groups, databases, key prefixes), so tests share one server.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{}", Uuid::new_v4().simple())
}

fn t(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000 + secs, 0).single().unwrap()
}

// ------------------------------------------------------------------ message bus

fn record(key: &str, n: u32) -> OutgoingMessage {
    OutgoingMessage {
        key: key.to_owned(),
        headers: vec![("n".into(), n.to_string()), ("ridehail-type".into(), "Test".into())],
        payload: format!("{{\"key\":\"{key}\",\"n\":{n}}}").into_bytes(),
    }
}

async fn drain(sub: &mut Box<dyn Subscription>, want: usize) -> Vec<IncomingMessage> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while got.len() < want && tokio::time::Instant::now() < deadline {
        got.extend(sub.poll(want - got.len(), Duration::from_millis(200)).await.unwrap());
    }
    got
}

/// Every record on `topic` so far, read from the start by a fresh group until a poll of `quiet`
/// brings nothing more.
pub async fn records_on(bus: &dyn MessageBus, topic: &str, quiet: Duration) -> Vec<IncomingMessage> {
    let mut sub = bus.subscribe(&Uuid::new_v4().to_string(), &[topic], StartFrom::Earliest).await.unwrap();
    let mut got = Vec::new();
    loop {
        let batch = sub.poll(1000, quiet).await.unwrap();
        if batch.is_empty() {
            return got;
        }
        got.extend(batch);
    }
}

/// `topic` must exist with at least two partitions; `group` must be unused.
pub async fn bus_delivers_each_key_in_order_with_headers(bus: &dyn MessageBus, topic: &str, group: &str) {
    let mut sub = bus.subscribe(group, &[topic], StartFrom::Earliest).await.unwrap();
    for n in 0..10 {
        bus.publish(topic, vec![record("a", n), record("b", n)]).await.unwrap();
    }
    let got = drain(&mut sub, 20).await;
    assert_eq!(got.len(), 20);
    for key in ["a", "b"] {
        let of_key: Vec<&IncomingMessage> = got.iter().filter(|m| m.key == key).collect();
        let ns: Vec<String> = of_key.iter().map(|m| m.header("n").unwrap().to_owned()).collect();
        assert_eq!(ns, (0..10).map(|n| n.to_string()).collect::<Vec<_>>(), "key {key} out of order");
        assert!(of_key.windows(2).all(|w| w[0].partition == w[1].partition && w[0].offset < w[1].offset));
        assert_eq!(of_key[3].payload, format!("{{\"key\":\"{key}\",\"n\":3}}").into_bytes());
        assert_eq!(of_key[3].header("ridehail-type"), Some("Test"));
    }
}

pub async fn bus_resumes_a_group_from_its_committed_offsets(bus: &dyn MessageBus, topic: &str, group: &str) {
    for n in 0..6 {
        bus.publish(topic, vec![record("k", n)]).await.unwrap();
    }
    let mut first = bus.subscribe(group, &[topic], StartFrom::Committed).await.unwrap();
    let got = drain(&mut first, 6).await;
    assert_eq!(got.len(), 6);
    // Commit only the first three, as if the member crashed while handling the fourth.
    let third = &got[2];
    first
        .commit(&[PartitionOffset { topic: topic.into(), partition: third.partition, offset: third.offset + 1 }])
        .await
        .unwrap();
    drop(first);
    let mut second = bus.subscribe(group, &[topic], StartFrom::Committed).await.unwrap();
    let again = drain(&mut second, 3).await;
    let ns: Vec<&str> = again.iter().map(|m| m.header("n").unwrap()).collect();
    assert_eq!(ns, ["3", "4", "5"]);
    let committed = second.committed().await.unwrap();
    assert!(committed.iter().any(|c| c.partition == third.partition && c.offset == third.offset + 1));
}

/// A subscription knows where each assigned partition's log ends, so a consumer can tell its lag.
pub async fn bus_tells_where_each_partition_ends(bus: &dyn MessageBus, topic: &str, group: &str) {
    // One record per publish: each is a batch of its own (tansu's high watermark is exact for those).
    for n in 0..4 {
        bus.publish(topic, vec![record("k", n)]).await.unwrap();
    }
    let mut member = bus.subscribe(group, &[topic], StartFrom::Committed).await.unwrap();
    let got = drain(&mut member, 4).await;
    let last = got.last().unwrap();
    let end = |ends: Vec<PartitionOffset>| ends.into_iter().find(|e| e.partition == last.partition).map(|e| e.offset);
    assert_eq!(end(member.end_offsets().await.unwrap()), Some(last.offset + 1), "the end is one past the last record");
    bus.publish(topic, vec![record("k", 4)]).await.unwrap();
    assert_eq!(end(member.end_offsets().await.unwrap()), Some(last.offset + 2), "a new record moves the end");
}

pub async fn bus_start_positions_select_what_is_read(bus: &dyn MessageBus, topic: &str, group: &str) {
    bus.publish(topic, vec![record("k", 0), record("k", 1)]).await.unwrap();
    let mut latest = bus.subscribe(&format!("{group}-latest"), &[topic], StartFrom::Latest).await.unwrap();
    bus.publish(topic, vec![record("k", 2)]).await.unwrap();
    let got = drain(&mut latest, 1).await;
    assert_eq!(got[0].header("n"), Some("2"));
    assert!(latest.poll(10, Duration::from_millis(100)).await.unwrap().is_empty());

    let mut earliest = bus.subscribe(&format!("{group}-earliest"), &[topic], StartFrom::Earliest).await.unwrap();
    let all = drain(&mut earliest, 3).await;
    assert_eq!(all.len(), 3);

    let second = &all[1];
    let explicit = StartFrom::Offsets(vec![PartitionOffset {
        topic: topic.into(),
        partition: second.partition,
        offset: second.offset,
    }]);
    let mut from_offset = bus.subscribe(&format!("{group}-offset"), &[topic], explicit).await.unwrap();
    let got = drain(&mut from_offset, 2).await;
    assert_eq!(got.iter().map(|m| m.header("n").unwrap()).collect::<Vec<_>>(), ["1", "2"]);

    let future = Utc::now() + chrono::Duration::days(1);
    let mut from_time = bus.subscribe(&format!("{group}-time"), &[topic], StartFrom::Timestamp(future)).await.unwrap();
    assert!(from_time.poll(10, Duration::from_millis(100)).await.unwrap().is_empty());
}

pub async fn bus_refuses_unknown_topics(bus: &dyn MessageBus) {
    let missing = format!("ridehail.missing.{}", Uuid::new_v4());
    assert!(matches!(bus.publish(&missing, vec![record("k", 0)]).await, Err(BusError::UnknownTopic(_))));
    assert!(matches!(bus.subscribe("g", &[&missing], StartFrom::Earliest).await, Err(BusError::UnknownTopic(_))));
}

pub async fn bus_poll_returns_empty_when_nothing_arrives(bus: &dyn MessageBus, topic: &str, group: &str) {
    let mut sub = bus.subscribe(group, &[topic], StartFrom::Latest).await.unwrap();
    let started = std::time::Instant::now();
    assert!(sub.poll(10, Duration::from_millis(150)).await.unwrap().is_empty());
    assert!(started.elapsed() < Duration::from_secs(5));
}

// ------------------------------------------------------------------ event store

fn event(aggregate_id: Uuid, sequence: u64) -> WireEvent {
    WireEvent {
        event_id: Uuid::now_v7(),
        event_type: "DriverArrived".into(),
        schema_version: 1,
        aggregate_type: AggregateType::Ride,
        aggregate_id,
        sequence,
        correlation_id: Uuid::now_v7(),
        causation_id: Uuid::now_v7(),
        occurred_at: t(sequence as i64),
        payload: serde_json::json!({"driver_id": Uuid::nil(), "n": sequence}),
    }
}

pub async fn event_store_reads_back_a_stream_in_order(store: &dyn EventStore) {
    let id = Uuid::now_v7();
    let first = vec![event(id, 1), event(id, 2)];
    store.append(0, &first).await.unwrap();
    store.append(2, &[event(id, 3)]).await.unwrap();
    let stream = store.read_stream(id).await.unwrap();
    assert_eq!(stream.iter().map(|e| e.sequence).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(stream[..2], first[..]);
    assert!(store.read_stream(Uuid::now_v7()).await.unwrap().is_empty());
}

pub async fn event_store_rejects_a_stale_expected_version(store: &dyn EventStore) {
    let id = Uuid::now_v7();
    store.append(0, &[event(id, 1)]).await.unwrap();
    match store.append(0, &[event(id, 1)]).await {
        Err(AppendError::Conflict { expected: 0, actual: 1, aggregate_id }) => assert_eq!(aggregate_id, id),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(store.read_stream(id).await.unwrap().len(), 1);
}

pub async fn event_store_lets_one_of_two_racing_appends_win(store: &dyn EventStore) {
    let id = Uuid::now_v7();
    store.append(0, &[event(id, 1)]).await.unwrap();
    let (a, b) = (vec![event(id, 2)], vec![event(id, 2), event(id, 3)]);
    let (ra, rb) = tokio::join!(store.append(1, &a), store.append(1, &b));
    assert!(ra.is_ok() != rb.is_ok(), "exactly one append must win: {ra:?} / {rb:?}");
    let loser = if ra.is_err() { ra } else { rb };
    assert!(matches!(loser, Err(AppendError::Conflict { .. })));
    let stream = store.read_stream(id).await.unwrap();
    let winner = if stream.len() == 2 { &a } else { &b };
    assert_eq!(&stream[1..], &winner[..]);
}

pub async fn event_store_refuses_malformed_batches(store: &dyn EventStore) {
    let id = Uuid::now_v7();
    assert!(matches!(store.append(0, &[]).await, Err(AppendError::Invalid(_))));
    assert!(matches!(store.append(0, &[event(id, 2)]).await, Err(AppendError::Invalid(_))));
    assert!(matches!(store.append(0, &[event(id, 1), event(Uuid::now_v7(), 2)]).await, Err(AppendError::Invalid(_))));
    assert!(store.read_stream(id).await.unwrap().is_empty());
}

pub async fn event_store_reads_everything_in_a_stable_order(store: &dyn EventStore) {
    let (x, y) = (Uuid::now_v7(), Uuid::now_v7());
    store.append(0, &[event(x, 1)]).await.unwrap();
    store.append(0, &[event(y, 1), event(y, 2)]).await.unwrap();
    store.append(1, &[event(x, 2)]).await.unwrap();
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.read_all(after.as_deref(), 2).await.unwrap();
        if page.events.is_empty() {
            break;
        }
        assert!(page.events.len() <= 2);
        seen.extend(page.events.into_iter().filter(|e| e.aggregate_id == x || e.aggregate_id == y));
        after = page.next;
    }
    let order: Vec<(Uuid, u64)> = seen.iter().map(|e| (e.aggregate_id, e.sequence)).collect();
    assert_eq!(order, [(x, 1), (y, 1), (y, 2), (x, 2)]);
    let again = store.read_all(None, 10_000).await.unwrap();
    let again: Vec<(Uuid, u64)> = again
        .events
        .iter()
        .filter(|e| e.aggregate_id == x || e.aggregate_id == y)
        .map(|e| (e.aggregate_id, e.sequence))
        .collect();
    assert_eq!(again, order, "read_all must be deterministic");
}

pub async fn event_store_reads_a_stream_after_a_sequence(store: &dyn EventStore) {
    let id = Uuid::now_v7();
    let events: Vec<WireEvent> = (1..=5).map(|n| event(id, n)).collect();
    store.append(0, &events).await.unwrap();
    store.append(0, &[event(Uuid::now_v7(), 1)]).await.unwrap();
    assert_eq!(store.read_stream_after(id, 0).await.unwrap(), events);
    assert_eq!(store.read_stream_after(id, 3).await.unwrap(), events[3..]);
    assert!(store.read_stream_after(id, 5).await.unwrap().is_empty());
    assert!(store.read_stream_after(Uuid::now_v7(), 0).await.unwrap().is_empty());
}

fn snapshot(stream: Uuid, version: u64, state_version: u32) -> Snapshot {
    Snapshot {
        stream,
        aggregate: "user".into(),
        state_version,
        version,
        state: serde_json::json!({"folded": version, "nested": {"list": [1, 2], "none": null}}),
        recent: vec![RecentCommand { causation_id: Uuid::now_v7(), first: version, last: version }],
        taken_at: t(version as i64),
    }
}

/// A stream keeps one snapshot: the newest of its code version; one of another code version is
/// replaced by any (it is of no use); streams keep theirs apart.
pub async fn event_store_keeps_the_newest_snapshot_of_a_stream(store: &dyn EventStore) {
    let (id, other) = (Uuid::now_v7(), Uuid::now_v7());
    assert_eq!(store.load_snapshot(id).await.unwrap(), None);
    let at_10 = snapshot(id, 10, 1);
    store.save_snapshot(&at_10).await.unwrap();
    assert_eq!(store.load_snapshot(id).await.unwrap(), Some(at_10.clone()));
    store.save_snapshot(&snapshot(id, 5, 1)).await.unwrap();
    assert_eq!(store.load_snapshot(id).await.unwrap(), Some(at_10), "an older snapshot must not replace a newer one");
    let at_20 = snapshot(id, 20, 1);
    store.save_snapshot(&at_20).await.unwrap();
    assert_eq!(store.load_snapshot(id).await.unwrap(), Some(at_20));
    let new_code = snapshot(id, 3, 2);
    store.save_snapshot(&new_code).await.unwrap();
    assert_eq!(store.load_snapshot(id).await.unwrap(), Some(new_code));
    assert_eq!(store.load_snapshot(other).await.unwrap(), None);
}

// ------------------------------------------------------------------ ride views

fn fare() -> Fare {
    Fare {
        currency: "EUR".into(),
        base_minor: 250,
        distance_minor: 300,
        time_minor: 100,
        surge_bps: 10_000,
        total_minor: 650,
        distance_meters: 2000,
        duration_seconds: 300,
        total: ridehail_events::ride::FareTotal::new(650, "EUR"),
    }
}

pub fn ride_view(ride_id: RideId, rider_id: UserId, version: u64) -> RideView {
    RideView {
        ride_id,
        rider_id,
        status: RideStatus::Requested,
        driver_id: None,
        offered_driver_id: None,
        offer_expires_at: None,
        pickup: GeoPoint { lat: 38.7, lon: -9.1 },
        dropoff: GeoPoint { lat: 38.75, lon: -9.15 },
        pickup_cell: GeoPoint { lat: 38.7, lon: -9.1 }.cell(),
        fare_estimate: fare(),
        fare: None,
        cancellation: None,
        rider_rating: None,
        driver_rating: None,
        requested_at: t(0),
        updated_at: t(version as i64),
        version,
    }
}

/// The sweeper's query: rides still requested whose view did not change since a time, oldest first.
pub async fn ride_views_list_the_rides_waiting_since_a_time(views: &dyn RideViews) {
    let rider = UserId::new();
    let old = ride_view(RideId::new(), rider, 1); // updated at t(1)
    let older = ride_view(RideId::new(), rider, 0); // updated at t(0)
    let fresh = RideView { updated_at: t(100), ..ride_view(RideId::new(), rider, 2) };
    let assigned = RideView { status: RideStatus::DriverAssigned, ..ride_view(RideId::new(), rider, 1) };
    for view in [&old, &older, &fresh, &assigned] {
        views.upsert(view).await.unwrap();
    }
    let mine = |found: Vec<RideView>| -> Vec<RideId> {
        found.into_iter().filter(|v| v.rider_id == rider).map(|v| v.ride_id).collect()
    };
    assert_eq!(mine(views.waiting_since(t(50), 100).await.unwrap()), [older.ride_id, old.ride_id]);
    assert_eq!(mine(views.waiting_since(t(1), 100).await.unwrap()), [older.ride_id], "strictly before");
    assert_eq!(views.waiting_since(t(50), 1).await.unwrap().len(), 1, "limited");
}

pub async fn ride_views_only_move_forward(views: &dyn RideViews) {
    let (ride, rider) = (RideId::new(), UserId::new());
    assert!(views.upsert(&ride_view(ride, rider, 2)).await.unwrap());
    let mut older = ride_view(ride, rider, 1);
    older.status = RideStatus::Cancelled;
    assert!(!views.upsert(&older).await.unwrap());
    assert!(!views.upsert(&ride_view(ride, rider, 2)).await.unwrap(), "same version is a no-op");
    let mut newer = ride_view(ride, rider, 3);
    newer.status = RideStatus::DriverAssigned;
    assert!(views.upsert(&newer).await.unwrap());
    assert_eq!(views.get(ride).await.unwrap(), Some(newer));
    assert_eq!(views.get(RideId::new()).await.unwrap(), None);
}

/// A batch is the upserts of its views in order: an older view after a newer one is refused.
pub async fn ride_views_take_a_batch_as_upserts_in_order(views: &dyn RideViews) {
    let (first, second, rider) = (RideId::new(), RideId::new(), UserId::new());
    let mut newest = ride_view(first, rider, 3);
    newest.status = RideStatus::DriverAssigned;
    let mut stale = ride_view(first, rider, 2);
    stale.status = RideStatus::Cancelled;
    let batch = [ride_view(first, rider, 1), newest.clone(), stale, ride_view(second, rider, 1)];
    assert_eq!(views.upsert_many(&batch).await.unwrap(), 3, "the stale view is not written");
    assert_eq!(views.get(first).await.unwrap(), Some(newest));
    assert_eq!(views.get(second).await.unwrap().map(|v| v.version), Some(1));
    assert_eq!(views.upsert_many(&[]).await.unwrap(), 0);
    assert_eq!(views.upsert_many(&batch).await.unwrap(), 0, "a batch again writes nothing");
}

pub async fn ride_views_page_a_party_s_rides_newest_first(views: &dyn RideViews) {
    let (rider, driver, other) = (UserId::new(), UserId::new(), UserId::new());
    let mut ids = Vec::new();
    for i in 0..5 {
        let id = RideId::new();
        let mut view = ride_view(id, rider, 1);
        if i % 2 == 0 {
            view.status = RideStatus::Completed;
            view.driver_id = Some(driver);
        }
        views.upsert(&view).await.unwrap();
        ids.push(id);
    }
    views.upsert(&ride_view(RideId::new(), other, 1)).await.unwrap();
    let mut offered = ride_view(RideId::new(), other, 1);
    offered.offered_driver_id = Some(driver);
    views.upsert(&offered).await.unwrap();

    let page1 =
        views.list(&RideQuery { party: RideParty::Rider(rider), status: None, limit: 2, before: None }).await.unwrap();
    let page1_ids: Vec<RideId> = page1.iter().map(|r| r.ride_id).collect();
    assert_eq!(page1_ids, [ids[4], ids[3]]);
    let page2 = views
        .list(&RideQuery { party: RideParty::Rider(rider), status: None, limit: 2, before: Some(ids[3]) })
        .await
        .unwrap();
    assert_eq!(page2.iter().map(|r| r.ride_id).collect::<Vec<_>>(), [ids[2], ids[1]]);

    let completed = views
        .list(&RideQuery {
            party: RideParty::Rider(rider),
            status: Some(RideStatus::Completed),
            limit: 10,
            before: None,
        })
        .await
        .unwrap();
    assert_eq!(completed.iter().map(|r| r.ride_id).collect::<Vec<_>>(), [ids[4], ids[2], ids[0]]);

    let for_driver = views
        .list(&RideQuery { party: RideParty::Driver(driver), status: None, limit: 10, before: None })
        .await
        .unwrap();
    let mut expected = vec![offered.ride_id, ids[4], ids[2], ids[0]];
    expected.sort();
    expected.reverse();
    assert_eq!(for_driver.iter().map(|r| r.ride_id).collect::<Vec<_>>(), expected);
}

pub async fn ride_views_count_waiting_rides_per_cell(views: &dyn RideViews) {
    let cell = GeoPoint { lat: -33.9, lon: 18.4 }.cell();
    let before = views.count_waiting_in_cell(&cell).await.unwrap();
    for status in [RideStatus::Requested, RideStatus::Requested, RideStatus::DriverAssigned] {
        let mut view = ride_view(RideId::new(), UserId::new(), 1);
        view.pickup_cell = cell.clone();
        view.status = status;
        views.upsert(&view).await.unwrap();
    }
    assert_eq!(views.count_waiting_in_cell(&cell).await.unwrap(), before + 2);
}

// ------------------------------------------------------------------ user views

/// A rider's profile at `version`, with an e-mail address of its own.
fn rider_profile(user_id: UserId, version: u64) -> UserProfile {
    UserProfile {
        user_id,
        email: format!("{}@example.com", Uuid::new_v4()),
        name: "Ana".into(),
        role: Role::Rider,
        vehicle: None,
        online: false,
        registered_at: t(0),
        updated_at: t(0),
        version,
    }
}

pub async fn user_views_store_profiles_and_credentials(views: &dyn UserViews) {
    let user = UserId::new();
    let profile = rider_profile(user, 2);
    let email = profile.email.clone();
    assert!(views.upsert_profile(&profile).await.unwrap());
    let mut stale = profile.clone();
    stale.name = "Old".into();
    stale.version = 1;
    assert!(!views.upsert_profile(&stale).await.unwrap());
    assert_eq!(views.profile(user).await.unwrap(), Some(profile));
    assert_eq!(views.profile(UserId::new()).await.unwrap(), None);

    let credentials = Credentials {
        user_id: user,
        email_normalised: email.clone(),
        role: Role::Rider,
        password_hash: PasswordHash("$argon2id$v=19$hash".into()),
        version: 2,
    };
    assert!(views.upsert_credentials(&credentials).await.unwrap());
    let mut hijack = credentials.clone();
    hijack.user_id = UserId::new();
    hijack.version = 9;
    assert!(!views.upsert_credentials(&hijack).await.unwrap(), "an e-mail stays with its user");
    assert_eq!(views.credentials_by_email(&email).await.unwrap(), Some(credentials));
    assert_eq!(views.credentials_by_email("nobody@example.com").await.unwrap(), None);
}

// ------------------------------------------------------------------ projection generations

use ridehail_ports::projections::{Generation, GenerationState, ProjectionRecord};

fn record_of(generations: &[(u64, GenerationState)]) -> ProjectionRecord {
    ProjectionRecord {
        generations: generations
            .iter()
            .map(|(number, state)| Generation { number: *number, code_version: 1, state: *state, since: t(0) })
            .collect(),
        rebuild: None,
        last_rebuild: None,
    }
}

/// The catalogue replaces a record only from the revision it was read at, so two rebuilds (or a
/// rebuild and a switch) never both win.
pub async fn catalogue_swaps_only_from_the_revision_read(store: Arc<dyn GenerationStore>) {
    let catalogue = store.catalogue();
    assert_eq!(catalogue.load(Projection::Rides).await.unwrap(), (ProjectionRecord::initial(), 0));
    let building = record_of(&[(0, GenerationState::Active), (1, GenerationState::Building)]);
    assert!(catalogue.store(Projection::Rides, 0, &building).await.unwrap());
    assert!(!catalogue.store(Projection::Rides, 0, &ProjectionRecord::initial()).await.unwrap(), "created twice");
    assert_eq!(catalogue.load(Projection::Rides).await.unwrap(), (building.clone(), 1));
    let switched = record_of(&[(0, GenerationState::Draining), (1, GenerationState::Active)]);
    assert!(catalogue.store(Projection::Rides, 1, &switched).await.unwrap());
    assert!(!catalogue.store(Projection::Rides, 1, &building).await.unwrap(), "a stale revision loses");
    assert_eq!(catalogue.load(Projection::Rides).await.unwrap(), (switched, 2));
    assert_eq!(catalogue.load(Projection::Users).await.unwrap().1, 0, "records are per projection");
}

/// Each generation holds its own documents, and dropping one empties it.
pub async fn generations_keep_their_documents_apart(store: Arc<dyn GenerationStore>) {
    store.prepare(Projection::Rides, 1).await.unwrap();
    store.prepare(Projection::Users, 1).await.unwrap();
    let view = ride_view(RideId::new(), UserId::new(), 3);
    assert!(store.rides(1).upsert(&view).await.unwrap());
    assert_eq!(store.rides(1).get(view.ride_id).await.unwrap(), Some(view.clone()));
    assert_eq!(store.rides(0).get(view.ride_id).await.unwrap(), None, "generation 0 untouched");
    store.complete(Projection::Rides, 1).await.unwrap();
    store.complete(Projection::Rides, 1).await.unwrap(); // safe to repeat
    let query = RideQuery { party: RideParty::Rider(view.rider_id), status: None, limit: 5, before: None };
    let listed = store.rides(1).list(&query).await.unwrap();
    assert_eq!(listed, vec![view.clone()], "the generation's indexes serve its lists");
    let batch = [ride_view(view.ride_id, view.rider_id, 2), ride_view(RideId::new(), view.rider_id, 1)];
    assert_eq!(store.rides(1).upsert_many(&batch).await.unwrap(), 1, "a batch writes only what is newer");
    assert_eq!(store.rides(1).get(view.ride_id).await.unwrap(), Some(view.clone()));

    let profile = rider_profile(UserId::new(), 1);
    assert!(store.users(1).upsert_profile(&profile).await.unwrap());
    assert_eq!(store.users(0).profile(profile.user_id).await.unwrap(), None);
    assert_eq!(store.users(1).profile(profile.user_id).await.unwrap(), Some(profile.clone()));

    store.drop_generation(Projection::Rides, 1).await.unwrap();
    store.drop_generation(Projection::Users, 1).await.unwrap();
    store.prepare(Projection::Rides, 1).await.unwrap();
    store.prepare(Projection::Users, 1).await.unwrap();
    assert_eq!(store.rides(1).get(view.ride_id).await.unwrap(), None, "dropped with its documents");
    assert_eq!(store.users(1).profile(profile.user_id).await.unwrap(), None);
}

/// The versioned views read the active generation and write every written one, as the catalogue
/// says (re-read at once here: a TTL of zero).
pub async fn versioned_views_follow_the_catalogue(store: Arc<dyn GenerationStore>) {
    let catalogue = store.catalogue();
    store.prepare(Projection::Rides, 1).await.unwrap();
    let views = VersionedRideViews::with_ttl(store.clone(), Duration::ZERO);
    let (ride, rider) = (RideId::new(), UserId::new());
    assert!(views.upsert(&ride_view(ride, rider, 1)).await.unwrap());
    assert_eq!(store.rides(1).get(ride).await.unwrap(), None, "not yet known to writers");

    let building = record_of(&[(0, GenerationState::Active), (1, GenerationState::Building)]);
    assert!(catalogue.store(Projection::Rides, 0, &building).await.unwrap());
    assert!(views.upsert(&ride_view(ride, rider, 2)).await.unwrap());
    assert_eq!(store.rides(1).get(ride).await.unwrap().map(|v| v.version), Some(2), "written while building");
    assert_eq!(store.rides(0).get(ride).await.unwrap().map(|v| v.version), Some(2));

    let ahead = RideView { status: RideStatus::Cancelled, ..ride_view(ride, rider, 3) };
    assert!(store.rides(1).upsert(&ahead).await.unwrap());
    assert_eq!(views.get(ride).await.unwrap().map(|v| v.version), Some(2), "reads stay on the active one");
    let switched = record_of(&[(0, GenerationState::Draining), (1, GenerationState::Active)]);
    assert!(catalogue.store(Projection::Rides, 1, &switched).await.unwrap());
    assert_eq!(views.get(ride).await.unwrap().map(|v| v.status), Some(RideStatus::Cancelled), "switched");
    assert!(views.upsert(&ride_view(ride, rider, 4)).await.unwrap());
    assert_eq!(store.rides(0).get(ride).await.unwrap().map(|v| v.version), Some(4), "draining is written");

    let retired = record_of(&[(0, GenerationState::Retired), (1, GenerationState::Active)]);
    assert!(catalogue.store(Projection::Rides, 2, &retired).await.unwrap());
    assert!(views.upsert(&ride_view(ride, rider, 5)).await.unwrap());
    assert_eq!(store.rides(0).get(ride).await.unwrap().map(|v| v.version), Some(4), "retired is not");
    assert_eq!(views.get(ride).await.unwrap().map(|v| v.version), Some(5));
}

// ------------------------------------------------------------------ driver locator

/// Places drivers at small offsets north of `origin` (about 111 m per 0.001 degree).
async fn place(locator: &dyn DriverLocator, origin: GeoPoint, offsets_milli_deg: &[u32]) -> Vec<UserId> {
    let mut ids = Vec::new();
    for offset in offsets_milli_deg {
        let id = UserId::new();
        let at = GeoPoint { lat: origin.lat + f64::from(*offset) / 1000.0, lon: origin.lon };
        locator.update_driver(id, Some(Fix { location: at, at: t(0) }), true, 1).await.unwrap();
        ids.push(id);
    }
    ids
}

fn unique_origin() -> GeoPoint {
    // A fresh spot per test so shared adapters do not see other tests' drivers.
    let n = (Uuid::new_v4().as_u128() % 10_000) as f64;
    GeoPoint { lat: -60.0 + n * 0.01, lon: 100.0 + n * 0.005 }
}

pub async fn locator_reserves_the_nearest_free_driver_within_the_radius(locator: &dyn DriverLocator) {
    let origin = unique_origin();
    let drivers = place(locator, origin, &[5, 2, 30]).await;
    let now = t(0);
    let ride = RideId::new();
    let got = locator.reserve_nearest(origin, 1_000, &[], ride, t(30), now).await.unwrap().unwrap();
    assert_eq!(got.driver_id, drivers[1]);
    assert!((200.0..250.0).contains(&got.distance_m), "distance {}", got.distance_m);
    let next = locator.reserve_nearest(origin, 1_000, &[], RideId::new(), t(30), now).await.unwrap().unwrap();
    assert_eq!(next.driver_id, drivers[0], "a held driver is not offered twice");
    assert_eq!(locator.reserve_nearest(origin, 1_000, &[], RideId::new(), t(30), now).await.unwrap(), None);
    let far = locator.reserve_nearest(origin, 4_000, &[], RideId::new(), t(30), now).await.unwrap().unwrap();
    assert_eq!(far.driver_id, drivers[2]);
}

pub async fn locator_skips_excluded_and_offline_drivers(locator: &dyn DriverLocator) {
    let origin = unique_origin();
    let drivers = place(locator, origin, &[1, 2, 3]).await;
    locator.update_driver(drivers[1], None, false, 2).await.unwrap();
    let got = locator.reserve_nearest(origin, 2_000, &[drivers[0]], RideId::new(), t(30), t(0)).await.unwrap();
    assert_eq!(got.map(|c| c.driver_id), Some(drivers[2]));
    // An older update does not bring the driver back online.
    locator.update_driver(drivers[1], None, true, 1).await.unwrap();
    assert_eq!(locator.reserve_nearest(origin, 2_000, &[drivers[0]], RideId::new(), t(30), t(0)).await.unwrap(), None);
}

pub async fn locator_holds_expire_and_releases_free_drivers(locator: &dyn DriverLocator) {
    let origin = unique_origin();
    let drivers = place(locator, origin, &[1]).await;
    let (ride_a, ride_b) = (RideId::new(), RideId::new());
    let got = locator.reserve_nearest(origin, 1_000, &[], ride_a, t(10), t(0)).await.unwrap();
    assert!(got.is_some());
    assert_eq!(locator.reserve_nearest(origin, 1_000, &[], ride_b, t(40), t(5)).await.unwrap(), None);
    // The offer's hold lapsed: the driver is free again.
    assert!(locator.reserve_nearest(origin, 1_000, &[], ride_b, t(40), t(11)).await.unwrap().is_some());
    // Ride A can no longer hold them; ride B holds them without deadline, then releases.
    assert!(!locator.hold(drivers[0], ride_a, None, t(12)).await.unwrap());
    assert!(locator.hold(drivers[0], ride_b, None, t(12)).await.unwrap());
    assert_eq!(locator.reserve_nearest(origin, 1_000, &[], RideId::new(), t(99), t(90)).await.unwrap(), None);
    locator.release(drivers[0], ride_a).await.unwrap();
    assert_eq!(locator.reserve_nearest(origin, 1_000, &[], RideId::new(), t(99), t(90)).await.unwrap(), None);
    locator.release(drivers[0], ride_b).await.unwrap();
    assert!(locator.reserve_nearest(origin, 1_000, &[], RideId::new(), t(99), t(90)).await.unwrap().is_some());
}

pub async fn locator_never_gives_one_driver_to_two_rides(locator: &dyn DriverLocator) {
    let origin = unique_origin();
    place(locator, origin, &[1, 2, 3, 4]).await;
    let attempts = (0..12).map(|_| locator.reserve_nearest(origin, 2_000, &[], RideId::new(), t(30), t(0)));
    let results = futures::future::join_all(attempts).await;
    let got: Vec<UserId> = results.into_iter().filter_map(|r| r.unwrap()).map(|c| c.driver_id).collect();
    let distinct: std::collections::HashSet<&UserId> = got.iter().collect();
    assert_eq!(got.len(), 4);
    assert_eq!(distinct.len(), 4);
}

pub async fn locator_counts_available_drivers_per_cell(locator: &dyn DriverLocator) {
    let origin = unique_origin();
    let cell = origin.cell();
    let drivers = place(locator, origin, &[0, 0, 0]).await;
    assert_eq!(locator.available_in_cell(&cell, t(0)).await.unwrap(), 3);
    locator.update_driver(drivers[0], None, false, 5).await.unwrap();
    locator.reserve_nearest(origin, 500, &[], RideId::new(), t(30), t(0)).await.unwrap();
    assert_eq!(locator.available_in_cell(&cell, t(0)).await.unwrap(), 1);
}

pub async fn locator_counts_the_drivers_online(locator: &dyn DriverLocator) {
    let before = locator.online().await.unwrap();
    let origin = unique_origin();
    let drivers = place(locator, origin, &[0, 1, 2]).await;
    // A held driver is still online.
    locator.reserve_nearest(origin, 500, &[], RideId::new(), t(30), t(0)).await.unwrap();
    assert_eq!(locator.online().await.unwrap(), before + 3);
    locator.update_driver(drivers[0], None, false, 5).await.unwrap();
    assert_eq!(locator.online().await.unwrap(), before + 2, "offline drivers are not counted");
}

/// A ping moves a known driver (only forward in time, whatever the order pings arrive in) and is
/// refused for a driver the index does not know; a stream's older fix does not undo it.
pub async fn locator_takes_location_pings_newest_first(locator: &dyn DriverLocator) {
    let origin = unique_origin();
    let drivers = place(locator, origin, &[0]).await;
    let north = GeoPoint { lat: origin.lat + 0.02, lon: origin.lon };
    assert_ne!(north.cell(), origin.cell());
    let counts = || async {
        let at_north = locator.available_in_cell(&north.cell(), t(30)).await.unwrap();
        (at_north, locator.available_in_cell(&origin.cell(), t(30)).await.unwrap())
    };
    assert!(locator.report_location(drivers[0], Fix { location: north, at: t(20) }).await.unwrap());
    assert_eq!(counts().await, (1, 0));
    assert!(locator.report_location(drivers[0], Fix { location: origin, at: t(10) }).await.unwrap(), "known");
    assert_eq!(counts().await, (1, 0), "an older ping does not move them back");
    // A later availability change carrying the older fix of going online keeps the ping's position.
    locator.update_driver(drivers[0], Some(Fix { location: origin, at: t(0) }), true, 2).await.unwrap();
    assert_eq!(counts().await, (1, 0));
    let found = locator.reserve_nearest(north, 100, &[], RideId::new(), t(60), t(30)).await.unwrap();
    assert_eq!(found.map(|c| c.driver_id), Some(drivers[0]));
    assert!(!locator.report_location(UserId::new(), Fix { location: origin, at: t(20) }).await.unwrap());
}

/// A driver whose last fix is older than the maximum age is neither offered rides nor counted as
/// supply, until they report again.
pub async fn locator_does_not_offer_drivers_whose_fix_is_stale(locator: &dyn DriverLocator) {
    let origin = unique_origin();
    let drivers = place(locator, origin, &[0]).await;
    let max_age = chrono::Duration::from_std(LOCATION_MAX_AGE).unwrap();
    let late = t(0) + max_age + chrono::Duration::seconds(1);
    assert_eq!(locator.available_in_cell(&origin.cell(), late).await.unwrap(), 0);
    assert_eq!(locator.reserve_nearest(origin, 500, &[], RideId::new(), late, late).await.unwrap(), None);
    assert!(locator.report_location(drivers[0], Fix { location: origin, at: late }).await.unwrap());
    assert_eq!(locator.available_in_cell(&origin.cell(), late).await.unwrap(), 1);
    let found = locator.reserve_nearest(origin, 500, &[], RideId::new(), late, late).await.unwrap();
    assert_eq!(found.map(|c| c.driver_id), Some(drivers[0]));
}

// ------------------------------------------------------------------ command status

fn status(id: CommandId, state: CommandState) -> CommandStatus {
    CommandStatus {
        command_id: id,
        correlation_id: CorrelationId::new(),
        command_type: "RequestRide".into(),
        aggregate_id: Uuid::now_v7(),
        issued_by: Some(Uuid::now_v7()),
        state,
        rejection: (state == CommandState::Rejected).then(|| Rejection {
            kind: RejectionKind::Conflict,
            code: "ride_already_requested".into(),
            detail: "the ride exists".into(),
        }),
        failure: None,
        events: vec![],
        resource: Some("/v1/rides/x".into()),
        submitted_at: t(0),
        completed_at: (state != CommandState::Pending).then(|| t(1)),
    }
}

pub async fn command_status_never_goes_back_to_pending(store: &dyn CommandStatusStore) {
    let id = CommandId::new();
    store.record(&status(id, CommandState::Pending)).await.unwrap();
    assert_eq!(store.get(id).await.unwrap().unwrap().state, CommandState::Pending);
    let rejected = status(id, CommandState::Rejected);
    store.record(&rejected).await.unwrap();
    store.record(&status(id, CommandState::Pending)).await.unwrap();
    assert_eq!(store.get(id).await.unwrap(), Some(rejected));
    assert_eq!(store.get(CommandId::new()).await.unwrap(), None);
}

/// A batch is the records of its statuses in order (a pending status after a final one is
/// ignored), and its final statuses wake their waiters.
pub async fn command_status_records_a_batch_in_order(store: Arc<dyn CommandStatusStore>) {
    let (accepted, rejected, pending) = (CommandId::new(), CommandId::new(), CommandId::new());
    let waiter = {
        let store = store.clone();
        tokio::spawn(async move { store.wait_final(accepted, Duration::from_secs(10)).await })
    };
    let rejection = status(rejected, CommandState::Rejected);
    let outcome = status(accepted, CommandState::Accepted);
    let batch = [
        status(accepted, CommandState::Pending),
        rejection.clone(),
        outcome.clone(),
        status(rejected, CommandState::Pending),
        status(pending, CommandState::Pending),
    ];
    store.record_many(&batch).await.unwrap();
    assert_eq!(store.get(accepted).await.unwrap(), Some(outcome.clone()));
    assert_eq!(store.get(rejected).await.unwrap(), Some(rejection));
    assert_eq!(store.get(pending).await.unwrap().map(|s| s.state), Some(CommandState::Pending));
    assert_eq!(waiter.await.unwrap().unwrap(), Some(outcome));
    store.record_many(&[]).await.unwrap();
}

pub async fn command_status_wait_returns_once_final(store: Arc<dyn CommandStatusStore>) {
    let id = CommandId::new();
    store.record(&status(id, CommandState::Pending)).await.unwrap();
    let pending = store.wait_final(id, Duration::from_millis(50)).await.unwrap().unwrap();
    assert_eq!(pending.state, CommandState::Pending);
    let writer = store.clone();
    let finisher = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        writer.record(&status(id, CommandState::Accepted)).await.unwrap();
    });
    let started = std::time::Instant::now();
    let done = store.wait_final(id, Duration::from_secs(10)).await.unwrap().unwrap();
    assert_eq!(done.state, CommandState::Accepted);
    assert!(started.elapsed() < Duration::from_secs(5), "wait must return when the outcome lands");
    finisher.await.unwrap();
}

// ------------------------------------------------------------------ idempotency

pub async fn idempotency_replays_and_detects_mismatches(store: &dyn IdempotencyStore) {
    let scope = Uuid::new_v4().to_string();
    let ttl = chrono::Duration::hours(24);
    assert_eq!(store.claim(&scope, "k1", "fp-a", t(0), ttl).await.unwrap(), IdempotencyClaim::Claimed);
    assert_eq!(store.claim(&scope, "k1", "fp-a", t(1), ttl).await.unwrap(), IdempotencyClaim::InProgress);
    assert_eq!(store.claim(&scope, "k1", "fp-b", t(1), ttl).await.unwrap(), IdempotencyClaim::Mismatch);
    let response =
        StoredResponse { status: 202, headers: vec![("location".into(), "/v1/x".into())], body: b"{}".to_vec() };
    store.complete(&scope, "k1", &response).await.unwrap();
    assert_eq!(store.claim(&scope, "k1", "fp-a", t(2), ttl).await.unwrap(), IdempotencyClaim::Replay(response));
    assert_eq!(
        store.claim(&format!("{scope}-other"), "k1", "fp-b", t(2), ttl).await.unwrap(),
        IdempotencyClaim::Claimed
    );
    // After the TTL the key is forgotten.
    let later = t(0) + ttl + chrono::Duration::seconds(1);
    assert_eq!(store.claim(&scope, "k1", "fp-b", later, ttl).await.unwrap(), IdempotencyClaim::Claimed);
    // A released claim can be taken again.
    assert_eq!(store.claim(&scope, "k2", "fp", t(0), ttl).await.unwrap(), IdempotencyClaim::Claimed);
    store.release(&scope, "k2").await.unwrap();
    assert_eq!(store.claim(&scope, "k2", "fp", t(0), ttl).await.unwrap(), IdempotencyClaim::Claimed);
}

// ------------------------------------------------------------------ timers

pub async fn timers_fire_when_due_once_per_id(store: &dyn TimerStore) {
    let base = t(1_000_000 + (Uuid::new_v4().as_u128() % 1000) as i64 * 100);
    let timer = |id: &str, secs: i64| Timer {
        id: id.to_owned(),
        due_at: base + chrono::Duration::seconds(secs),
        topic: "topic".into(),
        key: "key".into(),
        headers: vec![("h".into(), "v".into())],
        payload: id.as_bytes().to_vec(),
    };
    let prefix = Uuid::new_v4().to_string();
    let (a, b, c) = (format!("{prefix}-a"), format!("{prefix}-b"), format!("{prefix}-c"));
    store.schedule(&timer(&a, 10)).await.unwrap();
    store.schedule(&timer(&a, 10)).await.unwrap();
    store.schedule(&timer(&b, 5)).await.unwrap();
    store.schedule(&timer(&c, 60)).await.unwrap();
    let mine = |timers: Vec<Timer>| -> Vec<String> {
        timers.into_iter().filter(|t| t.id.starts_with(&prefix)).map(|t| t.id).collect()
    };
    assert!(mine(store.due(base, 100).await.unwrap()).is_empty());
    let due = store.due(base + chrono::Duration::seconds(10), 100).await.unwrap();
    let fired = due.iter().find(|t| t.id == a).cloned().unwrap();
    assert_eq!(fired, timer(&a, 10));
    assert_eq!(mine(due), [b.clone(), a.clone()]);
    store.cancel(&b).await.unwrap();
    assert_eq!(mine(store.due(base + chrono::Duration::seconds(10), 100).await.unwrap()), [a]);
    // A deadline between two milliseconds is never reported early.
    let d = format!("{prefix}-d");
    let odd = base + chrono::Duration::seconds(20) + chrono::Duration::microseconds(500);
    store.schedule(&Timer { due_at: odd, ..timer(&d, 0) }).await.unwrap();
    let early = store.due(base + chrono::Duration::seconds(20), 100).await.unwrap();
    assert!(!early.iter().any(|t| t.id == d), "fired before its deadline");
    let on_time = store.due(odd + chrono::Duration::microseconds(500), 100).await.unwrap();
    assert!(on_time.iter().any(|t| t.id == d));
}

// ------------------------------------------------------------------ limiter

/// A burst is admitted at once, the next request waits about one interval, other keys are not
/// affected, and after the wait the key is admitted again.
pub async fn limiter_admits_a_burst_then_spaces_requests(limiter: &dyn Limiter) {
    let key = format!("ip:{}", Uuid::new_v4());
    let rate = Rate::new(10, 1, 3); // 100 ms apart, three at once
    for n in 0..3 {
        assert_eq!(limiter.admit(&key, rate).await.unwrap(), Admission::Admitted, "request {n} of the burst");
    }
    let Admission::Limited { retry_after } = limiter.admit(&key, rate).await.unwrap() else {
        panic!("the fourth request of a burst of three must wait");
    };
    assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_millis(100), "{retry_after:?}");
    let other = format!("ip:{}", Uuid::new_v4());
    assert_eq!(limiter.admit(&other, rate).await.unwrap(), Admission::Admitted, "keys are independent");
    tokio::time::sleep(retry_after + Duration::from_millis(20)).await;
    assert_eq!(limiter.admit(&key, rate).await.unwrap(), Admission::Admitted, "admitted again after the wait");
}

/// Several keys in one call: admitted only when every one admits; a refusal reports the wait.
pub async fn limiter_admits_several_keys_only_when_every_one_admits(limiter: &dyn Limiter) {
    let (strict, loose) = (format!("user:{}", Uuid::new_v4()), format!("ip:{}", Uuid::new_v4()));
    let checks = vec![(strict.clone(), Rate::new(1, 60, 1)), (loose.clone(), Rate::new(100, 1, 100))];
    assert_eq!(limiter.admit_all(&checks).await.unwrap(), Admission::Admitted);
    let Admission::Limited { retry_after } = limiter.admit_all(&checks).await.unwrap() else {
        panic!("the strict key refuses its second request");
    };
    assert!(retry_after > Duration::from_secs(50) && retry_after <= Duration::from_secs(60), "{retry_after:?}");
    // The loose key alone still admits.
    assert_eq!(limiter.admit(&loose, Rate::new(100, 1, 100)).await.unwrap(), Admission::Admitted);
}

/// Failures lock a key out after the free ones, for longer with each further failure; a success
/// (clear) forgets them.
pub async fn limiter_locks_out_after_repeated_failures_and_forgets_on_success(limiter: &dyn Limiter) {
    let key = format!("account:{}", Uuid::new_v4());
    let policy =
        LockoutPolicy { free_failures: 2, first_lockout_seconds: 30, max_lockout_seconds: 120, window_seconds: 600 };
    assert_eq!(limiter.locked_for(&key).await.unwrap(), None);
    assert_eq!(limiter.record_failure(&key, &policy).await.unwrap(), None);
    assert_eq!(limiter.record_failure(&key, &policy).await.unwrap(), None);
    assert_eq!(limiter.locked_for(&key).await.unwrap(), None, "the free failures lock nothing");
    assert_eq!(limiter.record_failure(&key, &policy).await.unwrap(), Some(Duration::from_secs(30)));
    let left = limiter.locked_for(&key).await.unwrap().expect("locked out");
    assert!(left > Duration::from_secs(28) && left <= Duration::from_secs(30), "{left:?}");
    assert_eq!(limiter.record_failure(&key, &policy).await.unwrap(), Some(Duration::from_secs(60)), "doubles");
    let other = format!("account:{}", Uuid::new_v4());
    assert_eq!(limiter.locked_for(&other).await.unwrap(), None, "keys are independent");
    limiter.clear_failures(&key).await.unwrap();
    assert_eq!(limiter.locked_for(&key).await.unwrap(), None);
    assert_eq!(limiter.record_failure(&key, &policy).await.unwrap(), None, "counting starts again");
}

// ------------------------------------------------------------------ consumer loop (on any bus)

/// Handles "ok:*" records, refuses "poison" as undecodable, fails "flaky:N" N times then succeeds,
/// fails "stuck:N" N times as unfinished, "down:N" N times as a dependency unavailable, and always
/// fails "broken". Remembers what it was told was dead-lettered.
#[derive(Debug, Default)]
pub struct Recorder {
    pub handled: std::sync::Mutex<Vec<String>>,
    failures: std::sync::Mutex<std::collections::HashMap<String, u32>>,
    /// The payloads it was told were dead-lettered, and whether as poison.
    pub dead_lettered: std::sync::Mutex<Vec<(String, bool)>>,
}
impl Recorder {
    /// How many times `text` failed so far.
    pub fn attempts(&self, text: &str) -> u32 {
        self.failures.lock().unwrap().get(text).copied().unwrap_or(0)
    }
}

#[async_trait::async_trait]
impl MessageHandler for Recorder {
    async fn handle_deferred(
        &self,
        message: &IncomingMessage,
        _: &mut ridehail_runtime::deferred::Deferred,
    ) -> Result<(), HandleError> {
        let text = String::from_utf8(message.payload.clone()).map_err(|e| HandleError::Poison(e.to_string()))?;
        if text == "poison" {
            return Err(HandleError::Poison("not a command".into()));
        }
        if let Some(times) = text.strip_prefix("stuck:") {
            let mut failures = self.failures.lock().unwrap();
            let seen = failures.entry(text.clone()).or_default();
            if *seen < times.parse::<u32>().unwrap() {
                *seen += 1;
                return Err(HandleError::Unfinished(anyhow::anyhow!("events appended, view not written")));
            }
        }
        if let Some(times) = text.strip_prefix("down:") {
            let mut failures = self.failures.lock().unwrap();
            let seen = failures.entry(text.clone()).or_default();
            if *seen < times.parse::<u32>().unwrap() {
                *seen += 1;
                return Err(HandleError::Unavailable(anyhow::anyhow!("connection refused")));
            }
        }
        if text == "broken" {
            return Err(HandleError::Failed(anyhow::anyhow!("handler bug")));
        }
        if let Some(times) = text.strip_prefix("flaky:") {
            let mut failures = self.failures.lock().unwrap();
            let seen = failures.entry(text.clone()).or_default();
            if *seen < times.parse::<u32>().unwrap() {
                *seen += 1;
                return Err(HandleError::Failed(anyhow::anyhow!("try again")));
            }
        }
        self.handled.lock().unwrap().push(text);
        Ok(())
    }

    async fn dead_lettered(&self, message: &IncomingMessage, _reason: &str, poison: bool) -> anyhow::Result<()> {
        let text = String::from_utf8_lossy(&message.payload).into_owned();
        self.dead_lettered.lock().unwrap().push((text, poison));
        Ok(())
    }
}

fn work(key: &str, payload: &[u8]) -> OutgoingMessage {
    OutgoingMessage { key: key.into(), headers: vec![("origin".into(), "test".into())], payload: payload.to_vec() }
}

fn consumer_config(topic: &str, dlq: &str) -> ConsumerConfig {
    let mut config = ConsumerConfig::new(format!("workers-{}", Uuid::new_v4().simple()), &[topic]);
    config.dead_letter_topic = dlq.into();
    config.failed_retry = RetryPolicy::bounded(5, 20, 3);
    config.unavailable_retry = RetryPolicy::unbounded(5, 20);
    config.poll_wait = Duration::from_millis(20);
    config
}

async fn wait_for(mut done: impl FnMut() -> bool) {
    // Long enough for a Kafka consumer to join its group (seconds), short enough to fail a test.
    for _ in 0..3000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached in time");
}

/// Everything on the dead-letter topic once `want` records are there (or what is there after a while).
async fn dead_letters(bus: &dyn MessageBus, dlq: &str, want: usize) -> Vec<IncomingMessage> {
    let mut sub = bus.subscribe(&Uuid::new_v4().to_string(), &[dlq], StartFrom::Earliest).await.unwrap();
    let mut got = drain(&mut sub, want).await;
    got.extend(sub.poll(100, Duration::from_millis(300)).await.unwrap());
    got
}

/// Runs the consume loop on `topic` (two partitions or more) with a fresh group, until the token is
/// cancelled.
fn start_consumer(
    bus: &Arc<dyn MessageBus>,
    handler: &Arc<Recorder>,
    config: ConsumerConfig,
) -> (CancellationToken, tokio::task::JoinHandle<anyhow::Result<()>>) {
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(ridehail_runtime::consumer::run(bus.clone(), handler.clone(), config, shutdown.clone()));
    (shutdown, task)
}

/// `topic` and `dlq` must exist and be unused by other tests.
pub async fn consumer_dead_letters_poison_intact_and_moves_on_in_order(
    bus: Arc<dyn MessageBus>,
    topic: &str,
    dlq: &str,
) {
    let handler = Arc::new(Recorder::default());
    let (shutdown, task) = start_consumer(&bus, &handler, consumer_config(topic, dlq));
    let poison = [0xff, 0xfe, b'x'];
    let batch =
        vec![work("k", b"ok:1"), work("k", &poison), work("k", b"ok:2"), work("k", b"poison"), work("k", b"ok:3")];
    bus.publish(topic, batch).await.unwrap();
    wait_for(|| handler.handled.lock().unwrap().len() == 3).await;
    assert_eq!(*handler.handled.lock().unwrap(), ["ok:1", "ok:2", "ok:3"]);
    let dead = dead_letters(&*bus, dlq, 2).await;
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0].payload, poison, "original bytes kept");
    assert_eq!(dead[0].header("origin"), Some("test"), "original headers kept");
    assert_eq!(dead[0].header(headers::DLQ_SOURCE_TOPIC), Some(topic));
    let first_offset: u64 = dead[1].header(headers::DLQ_SOURCE_OFFSET).unwrap().parse().unwrap();
    assert_eq!(dead[0].header(headers::DLQ_SOURCE_OFFSET), Some((first_offset - 2).to_string().as_str()));
    assert!(dead[0].header(headers::DLQ_SOURCE_PARTITION).is_some());
    assert!(dead[0].header(headers::DLQ_REASON).unwrap().starts_with("poison"));
    assert_eq!(dead[1].payload, b"poison");
    let told = handler.dead_lettered.lock().unwrap().clone();
    assert_eq!(told.len(), 2, "the handler is told of each dead letter: {told:?}");
    assert!(told.iter().all(|(_, poison)| *poison));
    // Not stalled: later records still flow.
    bus.publish(topic, vec![work("k", b"ok:4")]).await.unwrap();
    wait_for(|| handler.handled.lock().unwrap().len() == 4).await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

pub async fn consumer_retries_transient_failures_and_dead_letters_after_the_attempts(
    bus: Arc<dyn MessageBus>,
    topic: &str,
    dlq: &str,
) {
    let handler = Arc::new(Recorder::default());
    let (shutdown, task) = start_consumer(&bus, &handler, consumer_config(topic, dlq));
    bus.publish(topic, vec![work("k", b"flaky:2"), work("k", b"broken"), work("k", b"ok:after")]).await.unwrap();
    wait_for(|| handler.handled.lock().unwrap().len() == 2).await;
    assert_eq!(*handler.handled.lock().unwrap(), ["flaky:2", "ok:after"]);
    let dead = dead_letters(&*bus, dlq, 1).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].payload, b"broken");
    assert!(dead[0].header(headers::DLQ_REASON).unwrap().contains("after 3 attempts"), "{:?}", dead[0].headers);
    assert_eq!(*handler.dead_lettered.lock().unwrap(), [("broken".to_owned(), false)]);
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

pub async fn consumer_retries_unfinished_records_and_never_dead_letters_them(
    bus: Arc<dyn MessageBus>,
    topic: &str,
    dlq: &str,
) {
    let handler = Arc::new(Recorder::default());
    let (shutdown, task) = start_consumer(&bus, &handler, consumer_config(topic, dlq));
    // Six failures, twice the configured attempts.
    bus.publish(topic, vec![work("k", b"stuck:6"), work("k", b"ok:next")]).await.unwrap();
    wait_for(|| handler.handled.lock().unwrap().len() == 2).await;
    assert_eq!(*handler.handled.lock().unwrap(), ["stuck:6", "ok:next"]);
    assert!(dead_letters(&*bus, dlq, 0).await.is_empty());
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

pub async fn consumer_commits_after_the_work_so_a_restart_resumes_after_it(
    bus: Arc<dyn MessageBus>,
    topic: &str,
    dlq: &str,
) {
    let config = consumer_config(topic, dlq);
    let first = Arc::new(Recorder::default());
    let (shutdown, task) = start_consumer(&bus, &first, config.clone());
    bus.publish(topic, vec![work("a", b"ok:a1"), work("b", b"ok:b1")]).await.unwrap();
    wait_for(|| first.handled.lock().unwrap().len() == 2).await;
    shutdown.cancel();
    task.await.unwrap().unwrap();

    bus.publish(topic, vec![work("a", b"ok:a2")]).await.unwrap();
    let second = Arc::new(Recorder::default());
    let (shutdown, task) = start_consumer(&bus, &second, config);
    wait_for(|| !second.handled.lock().unwrap().is_empty()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(*second.handled.lock().unwrap(), ["ok:a2"], "nothing already handled is handled again");
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

/// A dependency that is down for many times the failed-record attempts is waited out: the record is
/// processed once it is back, in order, and never dead-lettered.
pub async fn consumer_waits_out_an_unavailable_dependency_and_never_dead_letters(
    bus: Arc<dyn MessageBus>,
    topic: &str,
    dlq: &str,
) {
    let handler = Arc::new(Recorder::default());
    let (shutdown, task) = start_consumer(&bus, &handler, consumer_config(topic, dlq));
    // Twenty unavailable answers, against three attempts for a failing record.
    bus.publish(topic, vec![work("k", b"down:20"), work("k", b"ok:after")]).await.unwrap();
    wait_for(|| handler.handled.lock().unwrap().len() == 2).await;
    assert_eq!(*handler.handled.lock().unwrap(), ["down:20", "ok:after"]);
    assert_eq!(handler.attempts("down:20"), 20);
    assert!(dead_letters(&*bus, dlq, 0).await.is_empty());
    assert!(handler.dead_lettered.lock().unwrap().is_empty());
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

/// A partition stuck retrying one record does not hold back the others, also for records that
/// arrive while it is stuck.
pub async fn consumer_partitions_do_not_wait_for_each_other(bus: Arc<dyn MessageBus>, topic: &str, dlq: &str) {
    let handler = Arc::new(Recorder::default());
    let (shutdown, task) = start_consumer(&bus, &handler, consumer_config(topic, dlq));
    // 100 retries of 20 ms: the stuck record's partition is busy for about two seconds.
    bus.publish(topic, vec![work("stuck-key", b"stuck:100")]).await.unwrap();
    wait_for(|| handler.attempts("stuck:100") > 0).await;
    // Keys are hashed to partitions deterministically; with two partitions or more, some of these
    // eight land on a partition other than the stuck one's.
    let others = (0..8).map(|n| work(&format!("key-{n}"), format!("ok:{n}").as_bytes())).collect();
    bus.publish(topic, others).await.unwrap();
    wait_for(|| handler.handled.lock().unwrap().len() == 9).await;
    let handled = handler.handled.lock().unwrap().clone();
    assert!(handled[0].starts_with("ok:"), "other partitions waited for the stuck one: {handled:?}");
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

// ------------------------------------------------------------------ histories

/// `events` as one stream of aggregate `id` from sequence 1, 30 s apart from `at`, as the workers
/// store them.
pub fn stream_of<E: ridehail_events::Message>(id: Uuid, events: Vec<E>, at: DateTime<Utc>) -> Vec<WireEvent> {
    use ridehail_events::{EventEnvelope, EventId};
    let correlation = CorrelationId::new();
    let envelope = |(event, sequence): (E, u64)| EventEnvelope {
        event_id: EventId::new(),
        aggregate_id: id,
        sequence,
        correlation_id: correlation,
        causation_id: Uuid::now_v7(),
        occurred_at: at + chrono::Duration::seconds(sequence as i64 * 30),
        event,
    };
    events.into_iter().zip(1u64..).map(|e| envelope(e).to_wire()).collect()
}

/// The whole stream of a ride that went its full course (requested, offered, assigned, arrived,
/// started, completed, rated by both): 8 events from `at`. For rebuild tests and benchmarks.
pub fn completed_ride_history(ride_id: RideId, rider: UserId, driver: UserId, at: DateTime<Utc>) -> Vec<WireEvent> {
    use ridehail_events::ride::*;
    let pickup = GeoPoint { lat: 38.7, lon: -9.1 };
    let events = vec![
        RideEvent::RideRequested(RideRequested {
            rider_id: rider,
            pickup,
            dropoff: GeoPoint { lat: 38.75, lon: -9.15 },
            pickup_cell: pickup.cell(),
            estimate: fare(),
        }),
        RideEvent::DriverOffered(DriverOffered {
            driver_id: driver,
            offer_number: 1,
            distance_meters: 400,
            search_radius_meters: 2000,
            expires_at: at + chrono::Duration::seconds(20),
        }),
        RideEvent::DriverAssigned(DriverAssigned { driver_id: driver, offer_number: 1 }),
        RideEvent::DriverArrived(DriverArrived { driver_id: driver }),
        RideEvent::RideStarted(RideStarted { driver_id: driver }),
        RideEvent::RideCompleted(RideCompleted { driver_id: driver, fare: fare() }),
        RideEvent::RideRated(RideRated { by: RatingParty::Rider, rater_id: rider, stars: 5, comment: None }),
        RideEvent::RideRated(RideRated { by: RatingParty::Driver, rater_id: driver, stars: 4, comment: None }),
    ];
    stream_of(ride_id.0, events, at)
}

/// A driver's stream: registered, password set, online near `at_point`, then `moves` location
/// updates going north.
pub fn driver_history(driver: UserId, at_point: GeoPoint, moves: usize, at: DateTime<Utc>) -> Vec<WireEvent> {
    use ridehail_events::user::*;
    let vehicle =
        Vehicle { make: "Seat".into(), model: "Leon".into(), colour: "grey".into(), plate: "AA-00-BB".into() };
    let mut events = vec![
        UserEvent::UserRegistered(UserRegistered {
            email: format!("driver-{}@example.com", driver.0.simple()),
            name: "Rui".into(),
            role: Role::Driver,
            vehicle: Some(vehicle),
        }),
        UserEvent::PasswordSet(PasswordSet { password_hash: PasswordHash("$argon2id$v=19$hash".into()) }),
        UserEvent::DriverWentOnline(DriverWentOnline { location: Some(at_point) }),
    ];
    for step in 1..=moves {
        let location = GeoPoint { lat: at_point.lat + step as f64 * 0.0001, lon: at_point.lon };
        events.push(UserEvent::DriverLocationUpdated(DriverLocationUpdated { location }));
    }
    stream_of(driver.0, events, at)
}

/// A driver's availability change (going online at `at`, or offline), as the edge submits it: for
/// tests and benchmarks of the user aggregate.
pub fn availability_command(
    driver: UserId,
    online: bool,
    at: GeoPoint,
) -> ridehail_events::CommandEnvelope<ridehail_events::user::UserCommand> {
    use ridehail_events::user::{SetAvailability, UserCommand};
    ridehail_events::CommandEnvelope {
        command_id: CommandId::new(),
        aggregate_id: driver.0,
        correlation_id: CorrelationId::new(),
        causation_id: None,
        actor: ridehail_events::Actor::User { user_id: driver.0, role: Role::Driver },
        issued_at: Utc::now(),
        command: UserCommand::SetAvailability(SetAvailability { online, location: online.then_some(at) }),
    }
}

// ------------------------------------------------------------------ dead letters read back

/// Dead letters are listed with their reason and source, redriven to their source topic (where the
/// consumer now handles them), purged, and each action is remembered by the topic itself.
pub async fn consumer_dead_letters_are_listed_redriven_and_purged(bus: Arc<dyn MessageBus>, topic: &str, dlq: &str) {
    use ridehail_runtime::dead_letters::{self, DeadLetterFilter, DeadLetterState};
    let handler = Arc::new(Recorder::default());
    let (shutdown, task) = start_consumer(&bus, &handler, consumer_config(topic, dlq));
    // `flaky:9` fails every retry of a first delivery (a dependency broken for a while), then works.
    bus.publish(topic, vec![work("k", b"flaky:9"), work("k", b"poison"), work("k", b"ok:1")]).await.unwrap();
    wait_for(|| handler.dead_lettered.lock().unwrap().len() == 2).await;
    let open = dead_letters::list(&*bus, dlq, &DeadLetterFilter::default()).await.unwrap();
    assert_eq!(open.len(), 2, "{open:?}");
    assert!(open.iter().all(|l| l.state == DeadLetterState::Open && l.source_topic == topic));
    assert_eq!(open[1].payload, serde_json::json!("poison"));
    assert!(open[1].reason.starts_with("poison"), "{}", open[1].reason);
    assert!(open[1].headers.iter().any(|h| h.name == "origin" && h.value == "test"), "original headers");

    let only_flaky = DeadLetterFilter { reason: Some("failed".into()), ..DeadLetterFilter::default() };
    let selected = dead_letters::list(&*bus, dlq, &only_flaky).await.unwrap();
    assert_eq!(selected.len(), 1, "the reason filters: {selected:?}");
    // Redriven until the dependency works again (each redrive is another round of retries).
    let mut rounds = 0;
    while !handler.handled.lock().unwrap().iter().any(|h| h == "flaky:9") {
        rounds += 1;
        assert!(rounds <= 4, "never handled after {rounds} redrives");
        let redriven = dead_letters::redrive(&*bus, dlq, &only_flaky).await.unwrap();
        assert_eq!(redriven.len(), 1);
        wait_for(|| {
            handler.handled.lock().unwrap().iter().any(|h| h == "flaky:9")
                || handler.dead_lettered.lock().unwrap().len() > rounds + 1
        })
        .await;
    }
    let poison = DeadLetterFilter { reason: Some("poison".into()), ..DeadLetterFilter::default() };
    assert_eq!(dead_letters::purge(&*bus, dlq, &poison).await.unwrap().len(), 1);
    let open = dead_letters::list(&*bus, dlq, &DeadLetterFilter::default()).await.unwrap();
    assert!(open.is_empty(), "nothing left open: {open:?}");
    let everything = DeadLetterFilter { include_resolved: true, ..DeadLetterFilter::default() };
    let all = dead_letters::list(&*bus, dlq, &everything).await.unwrap();
    assert!(all.iter().any(|l| l.state == DeadLetterState::Purged), "{all:?}");
    assert!(all.iter().any(|l| l.state == DeadLetterState::Redriven), "{all:?}");
    shutdown.cancel();
    task.await.unwrap().unwrap();
}
