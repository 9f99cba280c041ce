//! Live projection rebuilds in process, on the embedded store and on MongoDB: a rebuild builds a new
//! generation equal to a fold of the history and switches readers to it; writes made meanwhile reach
//! it; a second rebuild is refused while the lease is live; a stopped or crashed rebuild resumes from
//! its checkpoint; a code version bump rebuilds, an up-to-date projection does not. The rebuild of a
//! running binary under load, killed and resumed, is in `tests/operator_recovery.rs`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use ride_worker::rebuild::RideFold;
use ridehail_contract::{completed_ride_history, driver_history, test_server, unique_name};
use ridehail_events::ride::RideEvent;
use ridehail_events::{EventEnvelope, GeoPoint, RideId, UserId, WireEvent};
use ridehail_ports::projections::{GenerationState, Projection, RebuildState};
use ridehail_ports::{Backend, SystemClock};
use ridehail_runtime::rebuild::{Fold, Outcome, RebuildOptions, Silent, rebuild};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

#[macro_use]
#[path = "support/on_every_store.rs"]
mod on_every_store;

/// The stores under test: the embedded backend, and the same with MongoDB's stores when a test
/// server runs (`None`: skipped with a line saying so).
enum Store {
    Embedded,
    Mongo,
}

struct Setup {
    backend: Backend,
    _dir: TempDir,
}

async fn setup(store: Store) -> Option<Setup> {
    let dir = TempDir::new().unwrap();
    let mut backend = ridehail_sqlite::open(dir.path(), 2, Arc::new(SystemClock)).unwrap();
    if let Store::Mongo = store {
        let uri = test_server("RIDEHAIL_TEST_MONGODB_URI")?;
        let settings = ridehail_mongo::MongoSettings {
            uri,
            database: unique_name("ridehail-rebuild"),
            ..ridehail_mongo::MongoSettings::default()
        };
        let db = ridehail_mongo::connect(&settings).await.unwrap();
        ridehail_mongo::migrations::up(&db).await.unwrap();
        let stores = ridehail_mongo::Stores::new(&db, false);
        backend.events = stores.events;
        backend.rides = stores.rides;
        backend.users = stores.users;
        backend.timers = stores.timers;
        backend.projections = stores.projections;
    }
    Some(Setup { backend, _dir: dir })
}

fn options(owner: &str) -> RebuildOptions {
    RebuildOptions { page: 50, ..RebuildOptions::new(owner) }
}

/// Appends `n` completed rides; returns their ids.
async fn rides(backend: &Backend, n: usize) -> Vec<RideId> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let id = RideId::new();
        let history = completed_ride_history(id, UserId::new(), UserId::new(), Utc::now());
        backend.events.append(0, &history).await.unwrap();
        ids.push(id);
    }
    ids
}

fn fold_of(stream: Vec<WireEvent>) -> Option<ridehail_ports::RideView> {
    let events: Vec<EventEnvelope<RideEvent>> =
        stream.into_iter().map(|w| EventEnvelope::from_wire(w).unwrap()).collect();
    ride_worker::projection::project(&events)
}

/// Every ride's served view equals the fold of its stream.
async fn assert_served_views_equal_the_fold(backend: &Backend, ids: &[RideId]) {
    for id in ids {
        let expected = fold_of(backend.events.read_stream(id.0).await.unwrap());
        assert!(expected.is_some());
        assert_eq!(backend.rides.get(*id).await.unwrap(), expected, "ride {id}");
    }
}

/// Runs a rebuild to its end (nothing stops it).
async fn run(backend: &Backend, fold: &mut dyn Fold, options: RebuildOptions) -> Outcome {
    rebuild(backend, fold, &options, &Silent, &CancellationToken::new()).await.unwrap()
}

async fn finished(outcome: Outcome) -> ridehail_ports::projections::RebuildSummary {
    match outcome {
        Outcome::Finished(summary) => summary,
        other => panic!("expected the rebuild to finish, got {other:?}"),
    }
}

on_every_store!(
    a_rebuild_builds_a_generation_equal_to_the_fold_and_switches_to_it,
    writes_made_during_a_rebuild_reach_the_new_generation,
    a_live_lease_refuses_a_second_rebuild_and_a_stopped_one_resumes,
    a_code_version_bump_rebuilds_and_an_up_to_date_projection_does_not,
    users_are_rebuilt_into_a_generation_and_drivers_in_place,
    a_new_deployment_without_history_is_current_at_once,
    a_worker_rebuilds_views_of_an_older_code_version_by_itself,
    version_1_events_of_the_previous_code_are_rebuilt_into_current_views,
);

async fn a_rebuild_builds_a_generation_equal_to_the_fold_and_switches_to_it(setup: Setup) {
    let backend = &setup.backend;
    let ids = rides(backend, 30).await;
    // A damaged read model: a view at the right version with the wrong content, which "only newer
    // writes" would never repair in place.
    let mut damaged = fold_of(backend.events.read_stream(ids[0].0).await.unwrap()).unwrap();
    damaged.rider_rating = None;
    backend.rides.upsert(&damaged).await.unwrap();
    assert_eq!(backend.rides.get(ids[0]).await.unwrap(), Some(damaged));

    let whole_streams = RebuildOptions { page: 40, ..options("test") };
    let summary = finished(run(backend, &mut RideFold::default(), whole_streams).await).await;
    assert_eq!((summary.generation, summary.events_read), (1, 240));
    assert_eq!(summary.documents_written, 30, "one write per ride (pages hold whole streams here)");
    assert_served_views_equal_the_fold(backend, &ids).await;
    let (record, _) = backend.projections.catalogue().load(Projection::Rides).await.unwrap();
    assert_eq!(record.generations.len(), 1, "the old generation is dropped: {record:?}");
    assert_eq!((record.generations[0].number, record.generations[0].state), (1, GenerationState::Active));
    assert!(record.rebuild.is_none());
    assert_eq!(record.last_rebuild, Some(summary));
    assert_eq!(backend.projections.rides(0).get(ids[1]).await.ok().flatten(), None, "generation 0 is gone");
}

async fn writes_made_during_a_rebuild_reach_the_new_generation(setup: Setup) {
    let backend = setup.backend.clone();
    let before = rides(&backend, 20).await;
    // A writer appending rides and projecting them through the served views, as the ride worker does,
    // for as long as the rebuild runs.
    let stop = CancellationToken::new();
    let writer = {
        let (backend, stop) = (backend.clone(), stop.clone());
        tokio::spawn(async move {
            let mut written = Vec::new();
            while !stop.is_cancelled() {
                let id = rides(&backend, 1).await[0];
                let view = fold_of(backend.events.read_stream(id.0).await.unwrap()).unwrap();
                backend.rides.upsert(&view).await.unwrap();
                written.push(id);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            written
        })
    };
    let slow = RebuildOptions { page: 8, max_rate: Some(400), ..options("test") };
    finished(run(&backend, &mut RideFold::default(), slow).await).await;
    stop.cancel();
    let during = writer.await.unwrap();
    assert!(during.len() > 20, "the writer ran through the rebuild ({} rides)", during.len());
    assert_served_views_equal_the_fold(&backend, &before).await;
    assert_served_views_equal_the_fold(&backend, &during).await;
}

/// A fold that stops the rebuild after `pages` pages, as a shutdown or a crash would.
struct StopAfter {
    inner: RideFold,
    pages: usize,
    stop: CancellationToken,
}

#[async_trait]
impl Fold for StopAfter {
    fn projection(&self) -> Projection {
        self.inner.projection()
    }
    fn code_version(&self) -> u32 {
        self.inner.code_version()
    }
    async fn apply(&mut self, backend: &Backend, generation: u64, events: Vec<WireEvent>) -> anyhow::Result<u64> {
        self.pages = self.pages.saturating_sub(1);
        if self.pages == 0 {
            self.stop.cancel();
        }
        self.inner.apply(backend, generation, events).await
    }
}

async fn a_live_lease_refuses_a_second_rebuild_and_a_stopped_one_resumes(setup: Setup) {
    let backend = &setup.backend;
    let ids = rides(backend, 25).await;
    let stop = CancellationToken::new();
    let mut first = StopAfter { inner: RideFold::default(), pages: 2, stop: stop.clone() };
    let first_options = options("first");
    let stopped: RebuildState = match rebuild(backend, &mut first, &first_options, &Silent, &stop).await.unwrap() {
        Outcome::Stopped(state) => state,
        other => panic!("expected a stop, got {other:?}"),
    };
    assert_eq!(stopped.position, 100, "two pages of 50 folded and checkpointed");
    assert_eq!(backend.rides.get(ids[0]).await.unwrap(), None, "still served from generation 0 (never written)");

    // Another process holding a live lease (a crashed one's lapses after its lease).
    let catalogue = backend.projections.catalogue();
    let (mut record, revision) = catalogue.load(Projection::Rides).await.unwrap();
    let lease_until = Utc::now() + chrono::Duration::seconds(60);
    record.rebuild = Some(RebuildState { owner: "crashed".into(), lease_until, ..stopped.clone() });
    assert!(catalogue.store(Projection::Rides, revision, &record).await.unwrap());
    let busy = run(backend, &mut RideFold::default(), options("second")).await;
    assert_eq!(busy, Outcome::Busy { owner: "crashed".into(), lease_until });

    let (mut record, revision) = catalogue.load(Projection::Rides).await.unwrap();
    record.rebuild.as_mut().unwrap().lease_until = Utc::now() - chrono::Duration::seconds(1);
    assert!(catalogue.store(Projection::Rides, revision, &record).await.unwrap());
    let summary = finished(run(backend, &mut RideFold::default(), options("second")).await).await;
    assert_eq!(summary.generation, stopped.generation, "the same generation, resumed");
    assert_eq!(summary.events_read, 200, "the first 100 were not read again");
    assert_served_views_equal_the_fold(backend, &ids).await;
}

/// The ride fold as a newer code version would fold it.
struct Newer(RideFold);

#[async_trait]
impl Fold for Newer {
    fn projection(&self) -> Projection {
        Projection::Rides
    }
    fn code_version(&self) -> u32 {
        ride_worker::projection::VERSION + 1
    }
    async fn apply(&mut self, backend: &Backend, generation: u64, events: Vec<WireEvent>) -> anyhow::Result<u64> {
        self.0.apply(backend, generation, events).await
    }
}

async fn a_code_version_bump_rebuilds_and_an_up_to_date_projection_does_not(setup: Setup) {
    let backend = &setup.backend;
    let ids = rides(backend, 5).await;
    let if_outdated = || RebuildOptions { force: false, ..options("deploy") };
    finished(run(backend, &mut RideFold::default(), options("operator")).await).await;
    assert_eq!(run(backend, &mut RideFold::default(), if_outdated()).await, Outcome::UpToDate);
    let summary = finished(run(backend, &mut Newer(RideFold::default()), if_outdated()).await).await;
    assert_eq!(summary.code_version, ride_worker::projection::VERSION + 1);
    let (record, _) = backend.projections.catalogue().load(Projection::Rides).await.unwrap();
    assert_eq!(record.active().unwrap().code_version, ride_worker::projection::VERSION + 1);
    assert_served_views_equal_the_fold(backend, &ids).await;
    assert_eq!(run(backend, &mut Newer(RideFold::default()), if_outdated()).await, Outcome::UpToDate);
}

/// Events the previous code stored (schema version 1: fares without `total`) are rebuilt into views
/// of this code's shape.
async fn version_1_events_of_the_previous_code_are_rebuilt_into_current_views(setup: Setup) {
    let backend = &setup.backend;
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/crates/events/tests/fixtures/ride-history.v1.json");
    let stored: Vec<WireEvent> = serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    assert_eq!(stored[0].schema_version, 1);
    backend.events.append(0, &stored).await.unwrap();
    finished(run(backend, &mut RideFold::default(), options("t")).await).await;
    let view = backend.rides.get(RideId(stored[0].aggregate_id)).await.unwrap().unwrap();
    let fare = view.fare.expect("completed");
    assert_eq!(
        (fare.total.amount_minor, fare.total.currency.as_str(), fare.total.minor_units),
        (fare.total_minor, "EUR", 2)
    );
    assert_eq!(view.fare_estimate.total.amount_minor, view.fare_estimate.total_minor);
}

/// A worker started on views built by an older code version rebuilds them by itself (`keep_current`,
/// as `ride_worker::run` does), and one on current views does nothing.
async fn a_worker_rebuilds_views_of_an_older_code_version_by_itself(setup: Setup) {
    let backend = &setup.backend;
    let ids = rides(backend, 4).await;
    let never = CancellationToken::new();
    ridehail_runtime::rebuild::keep_current(backend.clone(), RideFold::default(), never.clone()).await.unwrap();
    let (record, _) = backend.projections.catalogue().load(Projection::Rides).await.unwrap();
    assert_eq!(record.active().unwrap().code_version, ride_worker::projection::VERSION);
    assert_eq!(record.last_rebuild.as_ref().map(|r| r.generation), Some(1), "rebuilt: {record:?}");
    assert_served_views_equal_the_fold(backend, &ids).await;
    ridehail_runtime::rebuild::keep_current(backend.clone(), RideFold::default(), never).await.unwrap();
    let (again, _) = backend.projections.catalogue().load(Projection::Rides).await.unwrap();
    assert_eq!(again.last_rebuild, record.last_rebuild, "current: nothing rebuilt");
}

async fn a_new_deployment_without_history_is_current_at_once(setup: Setup) {
    let backend = &setup.backend;
    let if_outdated = RebuildOptions { force: false, ..options("deploy") };
    assert_eq!(run(backend, &mut Newer(RideFold::default()), if_outdated).await, Outcome::UpToDate);
    let (record, _) = backend.projections.catalogue().load(Projection::Rides).await.unwrap();
    let active = record.active().unwrap();
    assert_eq!((active.number, active.code_version), (0, ride_worker::projection::VERSION + 1), "no rebuild needed");
}

async fn users_are_rebuilt_into_a_generation_and_drivers_in_place(setup: Setup) {
    let backend = &setup.backend;
    let origin = GeoPoint { lat: 38.72, lon: -9.14 };
    let drivers: Vec<UserId> = (0..6).map(|_| UserId::new()).collect();
    for (i, driver) in drivers.iter().enumerate() {
        backend.events.append(0, &driver_history(*driver, origin, i * 3, Utc::now())).await.unwrap();
    }
    let summary = finished(run(backend, &mut user_worker::rebuild::UserFold::default(), options("t")).await).await;
    assert_eq!(summary.generation, 1);
    for driver in &drivers {
        let stream = backend.events.read_stream(driver.0).await.unwrap();
        let stream: Vec<_> = stream.into_iter().map(|w| EventEnvelope::from_wire(w).unwrap()).collect();
        let profile = user_worker::projection::project_profile(&stream).unwrap();
        assert_eq!(backend.users.profile(*driver).await.unwrap(), Some(profile.clone()));
        let credentials = backend.users.credentials_by_email(&profile.email.to_lowercase()).await.unwrap();
        assert_eq!(credentials, user_worker::projection::project_credentials(&stream));
    }
    assert_eq!(backend.drivers.online().await.unwrap(), 0, "the geo index starts empty here");
    let summary = finished(run(backend, &mut user_worker::rebuild::DriverFold::default(), options("t")).await).await;
    assert_eq!(summary.generation, 0, "in place");
    assert_eq!(backend.drivers.online().await.unwrap(), 6);
    let found = backend
        .drivers
        .reserve_nearest(origin, 100, &[], RideId::new(), Utc::now() + chrono::Duration::seconds(30), Utc::now())
        .await
        .unwrap()
        .expect("a driver near the origin");
    assert_eq!(found.driver_id, drivers[0], "the driver who never moved is the nearest");
}

/// The embedded files: a deleted `rides.sqlite` after a rebuild comes back with the served
/// generation's table, empty, and a rebuild (or `replay`) fills it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_read_model_file_comes_back_with_the_served_generation() {
    let setup = setup(Store::Embedded).await.unwrap();
    let ids = rides(&setup.backend, 3).await;
    finished(run(&setup.backend, &mut RideFold::default(), options("t")).await).await;
    drop(setup.backend);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(setup._dir.path().join(format!("rides.sqlite{suffix}")));
    }
    let backend = ridehail_sqlite::open(setup._dir.path(), 2, Arc::new(SystemClock)).unwrap();
    assert_eq!(backend.rides.get(ids[0]).await.unwrap(), None, "served, empty");
    finished(run(&backend, &mut RideFold::default(), options("t")).await).await;
    assert_served_views_equal_the_fold(&backend, &ids).await;
}
