//! Ports: one small trait per outside dependency of a Ridehail service, the types that cross them,
//! and [`Backend`], the set of them one deployment is wired with. The engine adapters live elsewhere: the
//! embedded ones are in `ridehail-sqlite`, the production ones in `ridehail-kafka`, `ridehail-mongo`
//! and `ridehail-redis`, and every adapter runs the suites of `ridehail-contract`. The one engine-free
//! adapter, [`MemoryLimiter`], lives here: the embedded default and the Redis limiter both use it.

mod backend;
mod bus;
mod clock;
mod commands;
mod drivers;
mod error;
mod event_store;
mod idempotency;
mod limits;
mod log_limiter;
mod memory_limiter;
pub mod projections;
mod retry;
mod rides;
mod timers;
mod users;

pub use backend::{Backend, DependencyHealth};
pub use bus::{
    BusError, IncomingMessage, MessageBus, OutgoingMessage, PartitionOffset, StartFrom, Subscription, TopicReport,
    TopicState, partition_for_key,
};
pub use clock::{Clock, ManualClock, SystemClock};
pub use commands::{
    CommandState, CommandStatus, CommandStatusStore, CompletionWaiters, Failure, Outcome, Rejection, RejectionKind,
    Resource,
};
pub use drivers::{Candidate, DriverLocator, Fix, LOCATION_MAX_AGE};
pub use error::{StoreError, StoreResult};
pub use event_store::validate_batch;
pub use event_store::{AppendError, EventStore, ReadAllPage, RecentCommand, Snapshot};
pub use idempotency::{IdempotencyClaim, IdempotencyStore, StoredResponse};
pub use limits::{Admission, Limiter, LockoutPolicy, Rate};
pub use log_limiter::LogLimiter;
pub use memory_limiter::MemoryLimiter;
pub use projections::{GenerationStore, Projection, ProjectionCatalogue, VersionedRideViews, VersionedUserViews};
pub use retry::RetryPolicy;
pub use rides::{Cancellation, RideParty, RideQuery, RideView, RideViews};
pub use timers::{Timer, TimerStore};
pub use users::{Credentials, UserProfile, UserViews};
