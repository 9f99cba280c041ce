//! Every topic Ridehail produces or consumes. Records are keyed by aggregate id, so everything about
//! one ride (or one user) stays in one partition, in order.

/// Commands for the ride aggregate from clients (through the edge), consumed by ride-worker. Key:
/// ride id. System commands arriving here are refused (dead-lettered).
pub const RIDE_COMMANDS: &str = "ridehail.ride.commands";
/// Ride commands only Ridehail itself issues (offer expiry, wider search), written by ride-worker's
/// timer service and by nobody else (a Kafka ACL in production, see docs/operations.md). Key: ride id.
pub const RIDE_SYSTEM_COMMANDS: &str = "ridehail.ride.system-commands";
/// Commands for the user aggregate, consumed by user-worker. Key: user id.
pub const USER_COMMANDS: &str = "ridehail.user.commands";
/// Ride events, public (see `schemas/`). Key: ride id.
pub const RIDE_EVENTS: &str = "ridehail.ride.events";
/// User events, public but holding personal data (e-mail, name): consumers need authorisation.
/// Credentials never appear here. Key: user id.
pub const USER_EVENTS: &str = "ridehail.user.events";
/// Messages a consumer could not process: original bytes and headers plus the reason.
pub const DEAD_LETTERS: &str = "ridehail.dead-letters";

/// Every topic, for creating them and for start-up checks.
pub const ALL: [&str; 6] = [RIDE_COMMANDS, RIDE_SYSTEM_COMMANDS, USER_COMMANDS, RIDE_EVENTS, USER_EVENTS, DEAD_LETTERS];

/// Header names carried by every record.
pub mod headers {
    pub const MESSAGE_TYPE: &str = "ridehail-type";
    pub const SCHEMA_VERSION: &str = "ridehail-schema-version";
    pub const CORRELATION_ID: &str = "ridehail-correlation-id";
    pub const CAUSATION_ID: &str = "ridehail-causation-id";
    pub const CONTENT_TYPE: &str = "content-type";
    /// W3C trace context, so traces continue across the bus.
    pub const TRACEPARENT: &str = "traceparent";
    /// On dead letters: why the message was dead-lettered, and where it came from.
    pub const DLQ_REASON: &str = "ridehail-dlq-reason";
    pub const DLQ_SOURCE_TOPIC: &str = "ridehail-dlq-source-topic";
    pub const DLQ_SOURCE_PARTITION: &str = "ridehail-dlq-source-partition";
    pub const DLQ_SOURCE_OFFSET: &str = "ridehail-dlq-source-offset";
}

pub const JSON_CONTENT_TYPE: &str = "application/json";
