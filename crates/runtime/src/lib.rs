//! What every Ridehail service shares: the ports the services talk through, their embedded adapters,
//! the consumer runner, timers, settings helpers and telemetry.
//!
//! - [`ports`]: small traits, one per outside dependency (message bus, event store, read models,
//!   driver geo index, command status, idempotency keys, timers, clock). Services hold them as
//!   `Arc<dyn Trait>` inside a [`Backend`].
//! - [`embedded`]: durable adapters on SQLite files in one data directory, so the whole system runs in
//!   one process with no servers. They survive a restart or a `kill -9` (WAL, synchronous=NORMAL).
//! - [`consumer`]: the at-least-once consume loop (partitions in parallel, each in order, offsets
//!   committed after the work, poison messages dead-lettered).
//! - [`timers`]: turns due timers into commands on the bus.
//! - [`contract`] (feature `contract-tests`): one test body per port behaviour, run against every
//!   adapter.

pub mod backend;
pub mod clock;
pub mod consumer;
#[cfg(any(test, feature = "contract-tests"))]
pub mod contract;
pub mod embedded;
pub mod ports;
pub mod secrets;
pub mod telemetry;
pub mod timers;
pub mod worker;

pub use backend::Backend;
pub use clock::{Clock, ManualClock, SystemClock};
