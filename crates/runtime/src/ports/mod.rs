//! Ports: one small trait per outside dependency. Each has an embedded adapter (SQLite) and a contract
//! suite in [`crate::contract`] that every adapter must pass.

mod bus;
mod commands;
mod drivers;
mod event_store;
mod idempotency;
mod rides;
mod timers;
mod users;

pub use bus::{BusError, IncomingMessage, MessageBus, OutgoingMessage, PartitionOffset, StartFrom, Subscription};
pub use commands::{CommandState, CommandStatus, CommandStatusStore, CompletionWaiters, Rejection, RejectionKind};
pub use drivers::{Candidate, DriverLocator};
pub use event_store::validate_batch;
pub use event_store::{AppendError, EventStore, ReadAllPage};
pub use idempotency::{IdempotencyClaim, IdempotencyStore, StoredResponse};
pub use rides::{Cancellation, RideParty, RideQuery, RideView, RideViews};
pub use timers::{Timer, TimerStore};
pub use users::{Credentials, UserProfile, UserViews};
