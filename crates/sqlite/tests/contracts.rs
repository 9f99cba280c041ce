//! Every port contract suite against the embedded (SQLite) adapters, each case on a fresh data
//! directory; plus what only the embedded adapters promise (offsets surviving a reopened file).

use std::sync::Arc;

use ridehail_contract::Fixture;
use ridehail_sqlite::{
    Db, EmbeddedBus, EmbeddedCatalogue, EmbeddedCommandStatus, EmbeddedDriverLocator, EmbeddedEventStore,
    EmbeddedGenerations, EmbeddedIdempotency, EmbeddedRideViews, EmbeddedTimers, EmbeddedUserViews,
};
use tempfile::TempDir;

const TOPIC: &str = "contract.topic";
const DEAD_LETTERS: &str = "contract.dead-letters";

/// An adapter opened on a file of a fresh directory, which lives as long as the case.
fn on_disk<A: Send + Sync + 'static>(open: impl FnOnce(&TempDir) -> A) -> Option<Fixture<A>> {
    let dir = TempDir::new().unwrap();
    let adapter = open(&dir);
    Some(Fixture::new(Arc::new(adapter)).keeping(dir))
}

async fn bus() -> Option<Fixture<EmbeddedBus>> {
    on_disk(|dir| EmbeddedBus::open(&dir.path().join("bus"), &[(TOPIC, 3), (DEAD_LETTERS, 1)]).unwrap())
        .map(|f| f.with_topics(TOPIC, DEAD_LETTERS))
}
ridehail_contract::bus_suite!(bus);
ridehail_contract::consumer_suite!(bus);

async fn event_store() -> Option<Fixture<EmbeddedEventStore>> {
    on_disk(|dir| EmbeddedEventStore::open(&dir.path().join("events.sqlite")).unwrap())
}
ridehail_contract::event_store_suite!(event_store);

async fn ride_views() -> Option<Fixture<EmbeddedRideViews>> {
    on_disk(|dir| EmbeddedRideViews::open(&dir.path().join("rides.sqlite")).unwrap())
}
ridehail_contract::ride_views_suite!(ride_views);

async fn user_views() -> Option<Fixture<EmbeddedUserViews>> {
    on_disk(|dir| EmbeddedUserViews::new(Db::open(&dir.path().join("users.sqlite")).unwrap()).unwrap())
}
ridehail_contract::user_views_suite!(user_views);

async fn generations() -> Option<Fixture<EmbeddedGenerations>> {
    on_disk(|dir| {
        let db = |name: &str| Db::open(&dir.path().join(name)).unwrap();
        let generations = EmbeddedGenerations::new(
            EmbeddedCatalogue::new(db("projections.sqlite")).unwrap(),
            db("rides.sqlite"),
            db("users.sqlite"),
        );
        EmbeddedRideViews::generation(db("rides.sqlite"), 0).prepare().unwrap();
        EmbeddedUserViews::new(db("users.sqlite")).unwrap();
        generations
    })
}
ridehail_contract::generations_suite!(generations);

async fn locator() -> Option<Fixture<EmbeddedDriverLocator>> {
    on_disk(|dir| EmbeddedDriverLocator::open(&dir.path().join("drivers.sqlite")).unwrap())
}
ridehail_contract::locator_suite!(locator);

async fn command_status() -> Option<Fixture<EmbeddedCommandStatus>> {
    on_disk(|dir| EmbeddedCommandStatus::open(&dir.path().join("commands.sqlite")).unwrap())
}
ridehail_contract::command_status_suite!(command_status);

async fn idempotency() -> Option<Fixture<EmbeddedIdempotency>> {
    on_disk(|dir| EmbeddedIdempotency::new(Db::open(&dir.path().join("commands.sqlite")).unwrap()).unwrap())
}
ridehail_contract::idempotency_suite!(idempotency);

async fn timers() -> Option<Fixture<EmbeddedTimers>> {
    on_disk(|dir| EmbeddedTimers::new(Db::open(&dir.path().join("timers.sqlite")).unwrap()).unwrap())
}
ridehail_contract::timers_suite!(timers);

async fn limiter() -> Option<Fixture<ridehail_ports::MemoryLimiter>> {
    Some(Fixture::new(Arc::new(ridehail_ports::MemoryLimiter::new())))
}
ridehail_contract::limiter_suite!(limiter);

#[tokio::test]
async fn bus_committed_offsets_survive_reopening_the_file() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("bus");
    {
        let bus = EmbeddedBus::open(&path, &[(TOPIC, 3)]).unwrap();
        ridehail_contract::bus_resumes_a_group_from_its_committed_offsets(&bus, TOPIC, "g").await;
    }
    // Reopened: the group resumes after everything it committed in the contract (offset of n=5 + 1).
    let bus = EmbeddedBus::open(&path, &[(TOPIC, 3)]).unwrap();
    use ridehail_ports::{MessageBus, StartFrom};
    let sub = bus.subscribe("g", &[TOPIC], StartFrom::Committed).await.unwrap();
    assert!(!sub.committed().await.unwrap().is_empty());
}
