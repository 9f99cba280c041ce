//! The Ridehail contract: everything that crosses a process boundary, and nothing that does I/O.
//!
//! - [`envelope`]: the metadata that travels with every command and event (ids, aggregate, sequence,
//!   correlation and causation ids, time) and the [`Message`] trait that turns a typed command or event
//!   into its wire parts and back, upcasting old schema versions on read.
//! - [`ride`] and [`user`]: commands (imperative: `RequestRide`) and events (past tense:
//!   `RideRequested`) of the two aggregates, plus the value types they carry.
//! - [`topics`]: every topic name, in one place.
//! - [`schema`]: the JSON Schema catalogue written to `schemas/` for consumers outside this codebase.
//!
//! Wire enums are append-only: a variant is never removed or renamed, and a payload that changes shape
//! gets a new schema version with an upcaster in [`envelope::upcast`].

pub mod asyncapi;
pub mod envelope;
pub mod geo;
pub mod ids;
pub mod money;
pub mod ride;
pub mod schema;
pub mod topics;
pub mod user;
pub mod validation;

pub use envelope::{
    Actor, AggregateType, CommandEnvelope, DecodeError, EventEnvelope, Message, WireCommand, WireEvent,
};
pub use geo::GeoPoint;
pub use ids::{CommandId, CorrelationId, EventId, RideId, Role, UserId};
pub use money::Money;
