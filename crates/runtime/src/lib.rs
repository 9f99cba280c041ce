//! The runtime every Ridehail service runs on: the command executor, the at-least-once consume loop,
//! the timer service, the record formats on the bus, secrets and telemetry. It talks to the outside
//! only through the ports of `ridehail-ports`.
//!
//! - [`executor`]: the one command path (load, decide, append with optimistic concurrency, effects),
//!   driven by an [`executor::Aggregate`] per aggregate type, and [`executor::CommandHandler`], which
//!   runs it under the consume loop and records outcomes.
//! - [`consumer`]: the at-least-once consume loop (one in-order worker per partition, offsets
//!   committed after the work, poison messages dead-lettered).
//! - [`deferred`]: the effects of a run of records, written once per run (one batch call per port).
//! - [`dead_letters`]: dead letters read back, redriven and purged (`ridehail dlq`, admin HTTP).
//! - [`guard`]: a span and metrics around every port call, and a deadline and a circuit breaker
//!   around every call to a production engine.
//! - [`rebuild`]: live, resumable projection rebuilds into a new generation, and the switch to it.
//! - [`timers`]: turns due timers into commands on the bus.
//! - [`records`]: commands and events as bus records with their headers, and back.
//! - [`telemetry`], [`logs`], [`metrics`], [`propagation`]: JSON logs, OpenTelemetry traces (their
//!   context in record headers) and Prometheus metrics.

pub mod consumer;
pub mod dead_letters;
pub mod deferred;
pub mod executor;
pub mod guard;
pub mod logs;
pub mod metrics;
pub mod propagation;
pub mod rebuild;
pub mod records;
pub mod secrets;
pub mod telemetry;
pub mod timers;
