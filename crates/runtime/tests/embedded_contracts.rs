//! The port contract suites against the embedded (SQLite) adapters, each on a fresh data directory.

use std::sync::Arc;

use ridehail_runtime::contract;
use ridehail_runtime::embedded::{
    Db, EmbeddedBus, EmbeddedCommandStatus, EmbeddedDriverLocator, EmbeddedEventStore, EmbeddedIdempotency,
    EmbeddedRideViews, EmbeddedTimers, EmbeddedUserViews,
};
use tempfile::TempDir;

const TOPIC: &str = "contract.topic";

fn bus() -> (TempDir, EmbeddedBus) {
    let dir = TempDir::new().unwrap();
    let bus = EmbeddedBus::open(&dir.path().join("bus"), &[(TOPIC, 3)]).unwrap();
    (dir, bus)
}

macro_rules! bus_case {
    ($name:ident) => {
        #[tokio::test]
        async fn $name() {
            let (_dir, bus) = bus();
            contract::$name(&bus, TOPIC, "group-1").await;
        }
    };
}

bus_case!(bus_delivers_each_key_in_order_with_headers);
bus_case!(bus_resumes_a_group_from_its_committed_offsets);
bus_case!(bus_start_positions_select_what_is_read);
bus_case!(bus_poll_returns_empty_when_nothing_arrives);

#[tokio::test]
async fn bus_refuses_unknown_topics() {
    let (_dir, bus) = bus();
    contract::bus_refuses_unknown_topics(&bus).await;
}

#[tokio::test]
async fn bus_committed_offsets_survive_reopening_the_file() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("bus");
    {
        let bus = EmbeddedBus::open(&path, &[(TOPIC, 3)]).unwrap();
        contract::bus_resumes_a_group_from_its_committed_offsets(&bus, TOPIC, "g").await;
    }
    // Reopened: the group resumes after everything it committed in the contract (offset of n=5 + 1).
    let bus = EmbeddedBus::open(&path, &[(TOPIC, 3)]).unwrap();
    use ridehail_runtime::ports::{MessageBus, StartFrom};
    let sub = bus.subscribe("g", &[TOPIC], StartFrom::Committed).await.unwrap();
    assert!(!sub.committed().await.unwrap().is_empty());
}

macro_rules! store_case {
    ($open:expr, $($name:ident),+ $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                let dir = TempDir::new().unwrap();
                let adapter = $open(&dir);
                contract::$name(&adapter).await;
            }
        )+
    };
}

fn event_store(dir: &TempDir) -> EmbeddedEventStore {
    EmbeddedEventStore::open(&dir.path().join("events.sqlite")).unwrap()
}
store_case!(
    event_store,
    event_store_reads_back_a_stream_in_order,
    event_store_rejects_a_stale_expected_version,
    event_store_lets_one_of_two_racing_appends_win,
    event_store_refuses_malformed_batches,
    event_store_reads_everything_in_a_stable_order,
);

fn ride_views(dir: &TempDir) -> EmbeddedRideViews {
    EmbeddedRideViews::open(&dir.path().join("rides.sqlite")).unwrap()
}
store_case!(
    ride_views,
    ride_views_only_move_forward,
    ride_views_page_a_party_s_rides_newest_first,
    ride_views_count_waiting_rides_per_cell,
);

fn user_views(dir: &TempDir) -> EmbeddedUserViews {
    EmbeddedUserViews::new(Db::open(&dir.path().join("users.sqlite")).unwrap()).unwrap()
}
store_case!(user_views, user_views_store_profiles_and_credentials);

fn locator(dir: &TempDir) -> EmbeddedDriverLocator {
    EmbeddedDriverLocator::open(&dir.path().join("drivers.sqlite")).unwrap()
}
store_case!(
    locator,
    locator_reserves_the_nearest_free_driver_within_the_radius,
    locator_skips_excluded_and_offline_drivers,
    locator_holds_expire_and_releases_free_drivers,
    locator_never_gives_one_driver_to_two_rides,
    locator_counts_available_drivers_per_cell,
);

fn command_status(dir: &TempDir) -> EmbeddedCommandStatus {
    EmbeddedCommandStatus::open(&dir.path().join("commands.sqlite")).unwrap()
}
store_case!(command_status, command_status_never_goes_back_to_pending);

#[tokio::test]
async fn command_status_wait_returns_once_final() {
    let dir = TempDir::new().unwrap();
    contract::command_status_wait_returns_once_final(Arc::new(command_status(&dir))).await;
}

fn idempotency(dir: &TempDir) -> EmbeddedIdempotency {
    EmbeddedIdempotency::new(Db::open(&dir.path().join("commands.sqlite")).unwrap()).unwrap()
}
store_case!(idempotency, idempotency_replays_and_detects_mismatches);

fn timers(dir: &TempDir) -> EmbeddedTimers {
    EmbeddedTimers::new(Db::open(&dir.path().join("timers.sqlite")).unwrap()).unwrap()
}
store_case!(timers, timers_fire_when_due_once_per_id);
