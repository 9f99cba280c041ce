//! Snapshots of long streams, through the command executor on the user aggregate (a driver's stream
//! grows with every change of availability), on the embedded store and on MongoDB: a long stream is
//! loaded from its snapshot and the events after it; the snapshot equals the fold of the stream; one
//! of another code version, or ahead of its stream, is not trusted and is taken again; a command
//! redelivered after a snapshot covered its events is still recognised and appends nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use chrono::Utc;
use ridehail_contract::{driver_history, test_server, unique_name};
use ridehail_events::user::{UserCommand, UserEvent};
use ridehail_events::{CommandEnvelope, EventEnvelope, GeoPoint, UserId, WireEvent};
use ridehail_ports::{AppendError, Backend, EventStore, ReadAllPage, Snapshot, StoreResult, SystemClock};
use ridehail_runtime::executor::{Executor, ProcessError};
use tempfile::TempDir;
use user_worker::handler::{SNAPSHOT_EVERY, SNAPSHOT_VERSION, UserAggregate};
use user_worker::projection::UserStream;
use uuid::Uuid;

const AT: GeoPoint = GeoPoint { lat: 38.72, lon: -9.14 };

/// The real event store under test, counting the events loads read from it.
#[derive(Debug)]
struct Counting {
    inner: Arc<dyn EventStore>,
    read: AtomicUsize,
}

impl Counting {
    fn take(&self) -> usize {
        self.read.swap(0, Ordering::SeqCst)
    }

    fn counted(&self, events: StoreResult<Vec<WireEvent>>) -> StoreResult<Vec<WireEvent>> {
        if let Ok(events) = &events {
            self.read.fetch_add(events.len(), Ordering::SeqCst);
        }
        events
    }
}

#[async_trait]
impl EventStore for Counting {
    async fn append(&self, expected_version: u64, events: &[WireEvent]) -> Result<(), AppendError> {
        self.inner.append(expected_version, events).await
    }
    async fn read_stream(&self, aggregate_id: Uuid) -> StoreResult<Vec<WireEvent>> {
        self.counted(self.inner.read_stream(aggregate_id).await)
    }
    async fn read_stream_after(&self, aggregate_id: Uuid, after: u64) -> StoreResult<Vec<WireEvent>> {
        self.counted(self.inner.read_stream_after(aggregate_id, after).await)
    }
    async fn load_snapshot(&self, stream: Uuid) -> StoreResult<Option<Snapshot>> {
        self.inner.load_snapshot(stream).await
    }
    async fn save_snapshot(&self, snapshot: &Snapshot) -> StoreResult<()> {
        self.inner.save_snapshot(snapshot).await
    }
    async fn read_all(&self, after: Option<&str>, limit: usize) -> StoreResult<ReadAllPage> {
        self.inner.read_all(after, limit).await
    }
    async fn head(&self) -> StoreResult<u64> {
        self.inner.head().await
    }
    async fn ping(&self) -> StoreResult<()> {
        self.inner.ping().await
    }
}

#[macro_use]
#[path = "support/on_every_store.rs"]
mod on_every_store;

enum Store {
    Embedded,
    Mongo,
}

struct Setup {
    backend: Backend,
    events: Arc<Counting>,
    executor: Executor<UserAggregate>,
    _dir: TempDir,
}

async fn setup(store: Store) -> Option<Setup> {
    let dir = TempDir::new().unwrap();
    let mut backend = ridehail_sqlite::open(dir.path(), 2, Arc::new(SystemClock)).unwrap();
    if let Store::Mongo = store {
        let uri = test_server("RIDEHAIL_TEST_MONGODB_URI")?;
        let settings = ridehail_mongo::MongoSettings {
            uri,
            database: unique_name("ridehail-snapshots"),
            ..ridehail_mongo::MongoSettings::default()
        };
        let db = ridehail_mongo::connect(&settings).await.unwrap();
        ridehail_mongo::migrations::up(&db).await.unwrap();
        let stores = ridehail_mongo::Stores::new(&db, false);
        backend.events = stores.events;
        backend.users = stores.users;
        backend.projections = stores.projections;
    }
    let events = Arc::new(Counting { inner: backend.events.clone(), read: AtomicUsize::new(0) });
    backend.events = events.clone();
    let executor = Executor::new(UserAggregate::new(backend.clone()), backend.clone());
    Some(Setup { backend, events, executor, _dir: dir })
}

/// A driver whose stream holds `events` events (registered, online, moving).
async fn driver(backend: &Backend, events: usize) -> UserId {
    let driver = UserId::new();
    let history = driver_history(driver, AT, events - 3, Utc::now() - chrono::Duration::days(1));
    backend.events.append(0, &history).await.unwrap();
    driver
}

fn availability(driver: UserId, online: bool) -> CommandEnvelope<UserCommand> {
    ridehail_contract::availability_command(driver, online, AT)
}

async fn stream(backend: &Backend, driver: UserId) -> Vec<EventEnvelope<UserEvent>> {
    let wires = backend.events.read_stream(driver.0).await.unwrap();
    wires.into_iter().map(|w| EventEnvelope::from_wire(w).unwrap()).collect()
}

async fn snapshot(backend: &Backend, driver: UserId) -> Snapshot {
    backend.events.load_snapshot(driver.0).await.unwrap().expect("a snapshot of the stream")
}

async fn a_long_stream_is_loaded_from_its_snapshot_and_the_events_after_it(s: Setup) {
    let len = 2 * SNAPSHOT_EVERY as usize + 50;
    let driver = driver(&s.backend, len).await;
    s.executor.execute(&availability(driver, false)).await.unwrap();
    assert_eq!(s.events.take(), len, "without a snapshot the whole stream is folded");
    let taken = snapshot(&s.backend, driver).await;
    assert_eq!(
        (taken.aggregate.as_str(), taken.state_version, taken.version),
        ("user", SNAPSHOT_VERSION, len as u64 + 1)
    );
    let folded: UserStream = serde_json::from_value(taken.state).unwrap();
    assert_eq!(folded, UserStream::of(&stream(&s.backend, driver).await), "the snapshot is the fold of its stream");
    s.events.take();
    for (i, online) in [true, false, true].into_iter().enumerate() {
        s.executor.execute(&availability(driver, online)).await.unwrap();
        assert_eq!(s.events.take(), i, "only the events after the snapshot are read");
    }
    let profile = s.backend.users.profile(driver).await.unwrap().unwrap();
    assert!(profile.online);
    assert_eq!(profile.version, len as u64 + 4, "the views are written from the snapshot's fold");
    assert_eq!(
        snapshot(&s.backend, driver).await.version,
        len as u64 + 1,
        "not taken again before `every` more events"
    );
}

async fn a_snapshot_of_the_current_code_version_is_what_decides(s: Setup) {
    let len = SNAPSHOT_EVERY as usize + 10;
    let driver = driver(&s.backend, len).await;
    // A snapshot claiming the stream holds no user: trusted, it is what the decision comes from.
    let empty = Snapshot {
        stream: driver.0,
        aggregate: "user".into(),
        state_version: SNAPSHOT_VERSION,
        version: len as u64,
        state: serde_json::to_value(UserStream::default()).unwrap(),
        recent: Vec::new(),
        taken_at: Utc::now(),
    };
    s.backend.events.save_snapshot(&empty).await.unwrap();
    let refused = s.executor.execute(&availability(driver, false)).await;
    assert!(matches!(&refused, Err(ProcessError::Rejected(r)) if r.code == "user_not_found"), "{refused:?}");

    // The same of another code version is ignored: the whole stream decides, and it is taken again.
    let stale = Snapshot { state_version: SNAPSHOT_VERSION + 1, ..empty };
    s.backend.events.save_snapshot(&stale).await.unwrap();
    s.events.take();
    s.executor.execute(&availability(driver, false)).await.unwrap();
    assert_eq!(s.events.take(), len);
    let retaken = snapshot(&s.backend, driver).await;
    assert_eq!((retaken.state_version, retaken.version), (SNAPSHOT_VERSION, len as u64 + 1));
    let folded: UserStream = serde_json::from_value(retaken.state).unwrap();
    assert_eq!(folded, UserStream::of(&stream(&s.backend, driver).await));
}

async fn a_snapshot_ahead_of_its_stream_is_not_trusted(s: Setup) {
    let driver = driver(&s.backend, 5).await;
    let ahead = UserStream::of(&stream(&s.backend, driver).await);
    let snapshot = Snapshot {
        stream: driver.0,
        aggregate: "user".into(),
        state_version: SNAPSHOT_VERSION,
        version: 1_000,
        state: serde_json::to_value(ahead).unwrap(),
        recent: Vec::new(),
        taken_at: Utc::now(),
    };
    // As after restoring the events from a backup older than the snapshots: the append after the
    // snapshot's version conflicts, and the command is decided again on the stream alone.
    s.backend.events.save_snapshot(&snapshot).await.unwrap();
    let events = s.executor.execute(&availability(driver, false)).await.unwrap();
    assert_eq!(events.iter().map(|e| e.sequence).collect::<Vec<_>>(), [6]);
    assert!(matches!(events[0].event, UserEvent::DriverWentOffline(_)));
    assert_eq!(stream(&s.backend, driver).await.len(), 6);
}

async fn a_command_redelivered_after_its_snapshot_appends_nothing(s: Setup) {
    let driver = driver(&s.backend, SNAPSHOT_EVERY as usize - 1).await;
    let first = availability(driver, false);
    let appended = s.executor.execute(&first).await.unwrap();
    assert_eq!(snapshot(&s.backend, driver).await.version, SNAPSHOT_EVERY, "the snapshot covers the command's events");
    s.executor.execute(&availability(driver, true)).await.unwrap();
    s.executor.execute(&availability(driver, false)).await.unwrap();
    s.events.take();

    let again = s.executor.execute(&first).await.unwrap();
    let read = s.events.take();
    assert_eq!(again, appended, "the redelivery answers with the events the command appended");
    assert_eq!(stream(&s.backend, driver).await.len(), SNAPSHOT_EVERY as usize + 2, "nothing appended again");
    assert_eq!(read, 5, "recognised from the snapshot: the 2 events after it, then the command's 3 from its own");
}

on_every_store!(
    a_long_stream_is_loaded_from_its_snapshot_and_the_events_after_it,
    a_snapshot_of_the_current_code_version_is_what_decides,
    a_snapshot_ahead_of_its_stream_is_not_trusted,
    a_command_redelivered_after_its_snapshot_appends_nothing,
);
