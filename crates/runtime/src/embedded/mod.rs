//! Durable embedded adapters: one SQLite file per concern in one data directory.
//!
//! SQLite runs in WAL mode with `synchronous=NORMAL`: a committed transaction survives a process
//! crash (`kill -9`); only an OS crash or power loss may drop the last transactions. Each file has one
//! connection behind a mutex; statements are short, so callers run them in place.

mod bus;
mod commands;
mod drivers;
mod event_store;
mod idempotency;
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
pub use rides::EmbeddedRideViews;
pub use sqlite::Db;
pub use timers::EmbeddedTimers;
pub use users::EmbeddedUserViews;

use crate::backend::Backend;
use crate::clock::Clock;

/// Opens (creating if needed) every embedded adapter under `data_dir`, with `partitions` partitions
/// for each of Ridehail's topics.
pub fn open(data_dir: &Path, partitions: u32, clock: Arc<dyn Clock>) -> anyhow::Result<Backend> {
    std::fs::create_dir_all(data_dir)
        .map_err(|e| anyhow::anyhow!("cannot create data directory {}: {e}", data_dir.display()))?;
    let topics: Vec<(&str, u32)> = ridehail_events::topics::ALL.iter().map(|t| (*t, partitions)).collect();
    // Read models that `ridehail replay` rebuilds live in files of their own (rides, users, drivers),
    // apart from the log, the event store and the edge's bookkeeping (commands, idempotency keys).
    let bookkeeping = Db::open(&data_dir.join("commands.sqlite"))?;
    Ok(Backend {
        bus: Arc::new(EmbeddedBus::open(&data_dir.join("bus"), &topics)?),
        events: Arc::new(EmbeddedEventStore::open(&data_dir.join("events.sqlite"))?),
        rides: Arc::new(EmbeddedRideViews::open(&data_dir.join("rides.sqlite"))?),
        users: Arc::new(EmbeddedUserViews::new(Db::open(&data_dir.join("users.sqlite"))?)?),
        drivers: Arc::new(EmbeddedDriverLocator::open(&data_dir.join("drivers.sqlite"))?),
        commands: Arc::new(EmbeddedCommandStatus::new(bookkeeping.clone())?),
        idempotency: Arc::new(EmbeddedIdempotency::new(bookkeeping)?),
        timers: Arc::new(EmbeddedTimers::new(Db::open(&data_dir.join("timers.sqlite"))?)?),
        clock,
    })
}
