//! Runs of records (docs/throughput.md), through the real consume loop, the user worker's handler
//! and the embedded backend: the commands queued for a partition are handled as one run whose
//! outcomes are recorded in one batch; a run whose deferred effects cannot be written is not
//! committed, is retried, and after a restart every command still comes to its outcome.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use ridehail_contract::driver_history;
use ridehail_events::topics::{USER_COMMANDS, USER_EVENTS};
use ridehail_events::{CommandId, GeoPoint, UserId};
use ridehail_ports::{
    Backend, CommandState, CommandStatus, CommandStatusStore, RetryPolicy, StartFrom, StoreError, StoreResult,
    SystemClock,
};
use ridehail_runtime::consumer::{self, ConsumerConfig};
use ridehail_runtime::executor::CommandHandler;
use ridehail_runtime::records::command_record;
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;
use user_worker::handler::UserAggregate;

const AT: GeoPoint = GeoPoint { lat: 38.72, lon: -9.14 };
const GROUP: &str = "user-worker";

/// The real command status store, with the sizes of its batches noted and batches refused while
/// `down` is set.
#[derive(Debug)]
struct Watched {
    inner: Arc<dyn CommandStatusStore>,
    batches: Mutex<Vec<usize>>,
    down: AtomicBool,
    refused: AtomicUsize,
}

#[async_trait]
impl CommandStatusStore for Watched {
    async fn record(&self, status: &CommandStatus) -> StoreResult<()> {
        self.record_many(std::slice::from_ref(status)).await
    }
    async fn record_many(&self, statuses: &[CommandStatus]) -> StoreResult<()> {
        if self.down.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(StoreError::Unavailable(anyhow::anyhow!("command status store down (test)")));
        }
        self.batches.lock().unwrap().push(statuses.len());
        self.inner.record_many(statuses).await
    }
    async fn get(&self, command_id: CommandId) -> StoreResult<Option<CommandStatus>> {
        self.inner.get(command_id).await
    }
    async fn wait_final(&self, command_id: CommandId, timeout: Duration) -> StoreResult<Option<CommandStatus>> {
        self.inner.wait_final(command_id, timeout).await
    }
    async fn ping(&self) -> StoreResult<()> {
        self.inner.ping().await
    }
}

struct Setup {
    backend: Backend,
    statuses: Arc<Watched>,
    _dir: TempDir,
}

fn setup() -> Setup {
    let dir = TempDir::new().unwrap();
    let mut backend = ridehail_sqlite::open(dir.path(), 2, Arc::new(SystemClock)).unwrap();
    let statuses = Arc::new(Watched {
        inner: backend.commands.clone(),
        batches: Mutex::default(),
        down: AtomicBool::new(false),
        refused: AtomicUsize::new(0),
    });
    backend.commands = statuses.clone();
    Setup { backend, statuses, _dir: dir }
}

/// `drivers` registered drivers, each with an availability command queued on the bus.
async fn queue_commands(backend: &Backend, drivers: usize) -> Vec<CommandId> {
    let mut ids = Vec::new();
    for _ in 0..drivers {
        let driver = UserId::new();
        let history = driver_history(driver, AT, 0, Utc::now() - chrono::Duration::hours(1));
        backend.events.append(0, &history).await.unwrap();
        let command = ridehail_contract::availability_command(driver, false, AT);
        backend.bus.publish(USER_COMMANDS, vec![command_record(&command.to_wire())]).await.unwrap();
        ids.push(command.command_id);
    }
    ids
}

fn config() -> ConsumerConfig {
    let mut config = ConsumerConfig::new(GROUP, &[USER_COMMANDS]);
    config.start = StartFrom::Earliest;
    config.poll_wait = Duration::from_millis(20);
    config.unavailable_retry = RetryPolicy::unbounded(10, 50);
    config
}

fn start(backend: &Backend, shutdown: &CancellationToken) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    let handler = Arc::new(CommandHandler::new(UserAggregate::new(backend.clone()), backend.clone()));
    tokio::spawn(consumer::run(backend.bus.clone(), handler, config(), shutdown.clone()))
}

async fn all_final(backend: &Backend, ids: &[CommandId]) {
    for id in ids {
        let status = backend.commands.wait_final(*id, Duration::from_secs(20)).await.unwrap();
        assert_eq!(status.map(|s| s.state), Some(CommandState::Accepted), "command {id}");
    }
}

/// Offsets the group committed on the command topic, summed over its partitions.
async fn committed(backend: &Backend) -> u64 {
    let subscription = backend.bus.subscribe(GROUP, &[USER_COMMANDS], StartFrom::Committed).await.unwrap();
    subscription.committed().await.unwrap().iter().map(|p| p.offset).sum()
}

async fn events_published(backend: &Backend) -> usize {
    ridehail_contract::records_on(&*backend.bus, USER_EVENTS, Duration::from_millis(200)).await.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_commands_queued_for_a_partition_are_recorded_in_one_batch() {
    let s = setup();
    let ids = queue_commands(&s.backend, 60).await;
    let shutdown = CancellationToken::new();
    let consumer = start(&s.backend, &shutdown);
    all_final(&s.backend, &ids).await;
    shutdown.cancel();
    consumer.await.unwrap().unwrap();

    let batches = s.statuses.batches.lock().unwrap().clone();
    assert_eq!(batches.iter().sum::<usize>(), 60, "every outcome recorded once: {batches:?}");
    // 60 records queued on 2 partitions before the consumer started: runs of up to 32 each.
    assert!(batches.len() <= 6, "one batch per run, not one per command: {batches:?}");
    assert!(batches.iter().all(|b| *b <= 32), "no run beyond max_run: {batches:?}");
    assert_eq!(events_published(&s.backend).await, 60, "each command's event published once");
    assert_eq!(committed(&s.backend).await, 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_effects_are_not_durable_is_not_committed_and_comes_through_after_a_restart() {
    let s = setup();
    let ids = queue_commands(&s.backend, 10).await;
    s.statuses.down.store(true, Ordering::SeqCst);
    let shutdown = CancellationToken::new();
    let consumer = start(&s.backend, &shutdown);
    // The runs are handled (events appended) but their outcomes cannot be recorded: retried.
    while s.statuses.refused.load(Ordering::SeqCst) < 4 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    consumer.await.unwrap().unwrap();
    assert_eq!(committed(&s.backend).await, 0, "nothing of a run is committed before its effects are durable");
    for id in &ids {
        assert_eq!(s.backend.commands.get(*id).await.unwrap(), None);
    }

    // The store is back; a new consumer gets the same records again and finishes them.
    s.statuses.down.store(false, Ordering::SeqCst);
    let shutdown = CancellationToken::new();
    let consumer = start(&s.backend, &shutdown);
    all_final(&s.backend, &ids).await;
    shutdown.cancel();
    consumer.await.unwrap().unwrap();
    assert_eq!(committed(&s.backend).await, 10);
    for id in &ids {
        let events = s.backend.commands.get(*id).await.unwrap().unwrap().events;
        assert_eq!(events, ["DriverWentOffline"], "redelivered, the command appended nothing new");
    }
    // The first consumer published the events before the outcomes failed; the second publishes
    // them again (at least once): every event is there.
    assert!(events_published(&s.backend).await >= 10);
}
