//! The embedded adapters of every port: one SQLite file per concern in one data directory, so the
//! whole system runs in one process with no servers.
//!
//! SQLite runs in WAL mode with `synchronous=NORMAL`: a committed transaction survives a process
//! crash (`kill -9`); only an OS crash or power loss may drop the last transactions. Each file has one
//! connection behind a mutex; statements are short, so callers run them in place.

mod bus;
mod commands;
mod drivers;
mod event_store;
mod idempotency;
mod projections;
mod rides;
mod sqlite;
mod timers;
mod users;

use std::path::Path;
use std::sync::Arc;

pub use bus::EmbeddedBus;
pub use commands::EmbeddedCommandStatus;
pub use drivers::EmbeddedDriverLocator;
pub use event_store::EmbeddedEventStore;
pub use idempotency::EmbeddedIdempotency;
pub use projections::{EmbeddedCatalogue, EmbeddedGenerations};
pub use rides::EmbeddedRideViews;
pub use sqlite::Db;
pub use timers::EmbeddedTimers;
pub use users::EmbeddedUserViews;

use ridehail_ports::Backend;
use ridehail_ports::Clock;
use ridehail_ports::{
    CommandStatusStore, DriverLocator, EventStore, GenerationStore, IdempotencyStore, Limiter, RideViews, TimerStore,
    UserViews, VersionedRideViews, VersionedUserViews,
};

/// The event store, ride views, user views, timers, and the generations behind the views.
pub type Stores =
    (Arc<dyn EventStore>, Arc<dyn RideViews>, Arc<dyn UserViews>, Arc<dyn TimerStore>, Arc<dyn GenerationStore>);
/// The driver locator, command status, idempotency keys and the limiter.
pub type HotStores = (Arc<dyn DriverLocator>, Arc<dyn CommandStatusStore>, Arc<dyn IdempotencyStore>, Arc<dyn Limiter>);

fn create(data_dir: &Path) -> anyhow::Result<&Path> {
    std::fs::create_dir_all(data_dir)
        .map_err(|e| anyhow::anyhow!("cannot create data directory {}: {e}", data_dir.display()))?;
    Ok(data_dir)
}

/// The bus under `data_dir`, with `partitions` partitions for each of Ridehail's topics.
pub fn open_bus(data_dir: &Path, partitions: u32) -> anyhow::Result<EmbeddedBus> {
    let topics: Vec<(&str, u32)> = ridehail_events::topics::ALL.iter().map(|t| (*t, partitions)).collect();
    EmbeddedBus::open(&create(data_dir)?.join("bus"), &topics)
}

/// The event store, the read models that rebuilds and `ridehail replay` write (one file each: rides,
/// users; the generations of each in its file, the catalogue in `projections.sqlite`) and the timers.
pub fn open_stores(data_dir: &Path) -> anyhow::Result<Stores> {
    let dir = create(data_dir)?;
    let (rides, users) = (Db::open(&dir.join("rides.sqlite"))?, Db::open(&dir.join("users.sqlite"))?);
    let catalogue = EmbeddedCatalogue::new(Db::open(&dir.join("projections.sqlite"))?)?;
    // The served generation's tables (generation 0's for a projection never rebuilt), created if
    // missing: a deleted `rides.sqlite` comes back empty, for `ridehail replay` to fill.
    let active = |p| catalogue.active_generation(p);
    EmbeddedRideViews::generation(rides.clone(), active(ridehail_ports::Projection::Rides)?).prepare()?;
    EmbeddedUserViews::generation(users.clone(), active(ridehail_ports::Projection::Users)?).prepare()?;
    let generations: Arc<dyn GenerationStore> = Arc::new(EmbeddedGenerations::new(catalogue, rides, users));
    Ok((
        Arc::new(EmbeddedEventStore::open(&dir.join("events.sqlite"))?),
        Arc::new(VersionedRideViews::new(generations.clone())),
        Arc::new(VersionedUserViews::new(generations.clone())),
        Arc::new(EmbeddedTimers::new(Db::open(&dir.join("timers.sqlite"))?)?),
        generations,
    ))
}

/// The driver geo index (rebuilt by replay, a file of its own) and the edge's bookkeeping (command
/// status and idempotency keys, one file).
pub fn open_hot_stores(data_dir: &Path) -> anyhow::Result<HotStores> {
    let dir = create(data_dir)?;
    let bookkeeping = Db::open(&dir.join("commands.sqlite"))?;
    Ok((
        Arc::new(EmbeddedDriverLocator::open(&dir.join("drivers.sqlite"))?),
        Arc::new(EmbeddedCommandStatus::new(bookkeeping.clone())?),
        Arc::new(EmbeddedIdempotency::new(bookkeeping)?),
        Arc::new(ridehail_ports::MemoryLimiter::new()),
    ))
}

/// Opens (creating if needed) every embedded adapter under `data_dir`, with `partitions` partitions
/// for each of Ridehail's topics.
pub fn open(data_dir: &Path, partitions: u32, clock: Arc<dyn Clock>) -> anyhow::Result<Backend> {
    let (events, rides, users, timers, projections) = open_stores(data_dir)?;
    let (drivers, commands, idempotency, limiter) = open_hot_stores(data_dir)?;
    let bus = Arc::new(open_bus(data_dir, partitions)?);
    Ok(Backend { bus, events, rides, users, drivers, commands, idempotency, limiter, timers, projections, clock })
}
