//! Envelopes: the metadata around every command and event, and their wire form.
//!
//! Typed messages ([`crate::ride::RideEvent`], ...) implement [`Message`]: they split into a type name,
//! a schema version and a JSON payload, and are rebuilt from those parts. The wire structs
//! ([`WireEvent`], [`WireCommand`]) are what the bus and the event store hold, so stored history is
//! independent of the Rust types and old shapes can be upcast when they are read.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::ids::Role;
use crate::ids::{CommandId, CorrelationId, EventId};

/// Which kind of aggregate a stream belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AggregateType {
    Ride,
    User,
    /// The stream that records which user holds an e-mail address (uniqueness guard).
    EmailClaim,
    /// The stream that records the one ride a rider has under way (at most one at a time).
    RiderSlot,
}

impl AggregateType {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Ride => "ride",
            Self::User => "user",
            Self::EmailClaim => "email_claim",
            Self::RiderSlot => "rider_slot",
        }
    }
}

/// Why a wire message could not be turned into a typed one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed JSON: {0}")]
    Json(String),
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    #[error("{type_name} schema version {version} is not supported (newest known: {newest})")]
    UnsupportedVersion { type_name: String, version: u16, newest: u16 },
    #[error("invalid {type_name} payload: {reason}")]
    Payload { type_name: String, reason: String },
    #[error("expected a {expected} message, got {actual}")]
    WrongAggregate { expected: &'static str, actual: String },
}

/// One entry of a message family's catalogue, used to generate `schemas/`.
#[derive(Debug)]
pub struct CatalogueEntry {
    pub type_name: &'static str,
    pub version: u16,
    pub payload_schema: schemars::Schema,
    /// Published on a public topic (internal messages stay in the event store).
    pub public: bool,
}

/// A family of typed messages (the commands or the events of one aggregate).
pub trait Message: Sized + Clone + std::fmt::Debug + PartialEq + Send + Sync + 'static {
    const AGGREGATE: AggregateType;
    fn type_name(&self) -> &'static str;
    fn schema_version(&self) -> u16;
    fn encode_payload(&self) -> Value;
    /// Rebuilds a message from its parts, upcasting older schema versions.
    fn decode(type_name: &str, version: u16, payload: Value) -> Result<Self, DecodeError>;
    fn catalogue() -> Vec<CatalogueEntry>;
    /// Whether this message may leave the event store for a public topic.
    fn is_public(&self) -> bool {
        true
    }
}

/// Rewrites a stored payload of an older schema version into the next version's shape.
///
/// When a payload changes shape, its version is bumped in its `message_enum!` declaration, an arm
/// `("Type", old) => …` goes here, and the old version's schema file stays in `schemas/`
/// (`schema::RETIRED`). Applied wherever a stored or published message is decoded.
///
/// - `RideRequested` and `RideCompleted` v1 → v2: the fare (`estimate`, `fare`) gains `total`,
///   the amount with its currency and minor units, computed from `total_minor` and `currency`.
pub fn upcast(type_name: &str, from_version: u16, mut payload: Value) -> Result<Value, DecodeError> {
    let fare_field = match (type_name, from_version) {
        ("RideRequested", 1) => "estimate",
        ("RideCompleted", 1) => "fare",
        _ => {
            return Err(DecodeError::UnsupportedVersion {
                type_name: type_name.to_owned(),
                version: from_version,
                newest: from_version,
            });
        }
    };
    if let Some(fare) = payload.get_mut(fare_field) {
        crate::ride::Fare::upcast_v1(fare);
    }
    Ok(payload)
}

/// Declares a message enum whose variants each wrap a payload struct, with its [`Message`] impl.
macro_rules! message_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident : $aggregate:path {
            $( $(#[$vmeta:meta])* $variant:ident($payload:ty) = v $version:literal $(, internal $internal:tt)? ; )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq)]
        pub enum $name {
            $( $(#[$vmeta])* $variant($payload), )+
        }

        impl $crate::envelope::Message for $name {
            const AGGREGATE: $crate::envelope::AggregateType = $aggregate;

            fn type_name(&self) -> &'static str {
                match self { $( Self::$variant(_) => stringify!($variant), )+ }
            }

            fn schema_version(&self) -> u16 {
                match self { $( Self::$variant(_) => $version, )+ }
            }

            fn encode_payload(&self) -> serde_json::Value {
                let encoded = match self { $( Self::$variant(p) => serde_json::to_value(p), )+ };
                // Payloads are plain structs with string keys: serialisation cannot fail.
                encoded.unwrap_or(serde_json::Value::Null)
            }

            fn decode(
                type_name: &str,
                version: u16,
                payload: serde_json::Value,
            ) -> Result<Self, $crate::envelope::DecodeError> {
                match type_name {
                    $(
                        stringify!($variant) => {
                            let mut payload = payload;
                            let mut at = version;
                            if at > $version || at == 0 {
                                return Err($crate::envelope::DecodeError::UnsupportedVersion {
                                    type_name: type_name.to_owned(),
                                    version,
                                    newest: $version,
                                });
                            }
                            while at < $version {
                                payload = $crate::envelope::upcast(type_name, at, payload)?;
                                at += 1;
                            }
                            serde_json::from_value::<$payload>(payload)
                                .map(Self::$variant)
                                .map_err(|e| $crate::envelope::DecodeError::Payload {
                                    type_name: type_name.to_owned(),
                                    reason: e.to_string(),
                                })
                        }
                    )+
                    other => Err($crate::envelope::DecodeError::UnknownType(other.to_owned())),
                }
            }

            fn catalogue() -> Vec<$crate::envelope::CatalogueEntry> {
                vec![
                    $(
                        $crate::envelope::CatalogueEntry {
                            type_name: stringify!($variant),
                            version: $version,
                            payload_schema: schemars::schema_for!($payload),
                            public: message_enum!(@public $($internal)?),
                        },
                    )+
                ]
            }

            fn is_public(&self) -> bool {
                match self { $( Self::$variant(_) => message_enum!(@public $($internal)?), )+ }
            }
        }
    };
    (@public) => { true };
    (@public $internal:tt) => { false };
}
pub(crate) use message_enum;

/// Who issued a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Actor {
    /// An authenticated user, through the edge.
    User { user_id: Uuid, role: Role },
    /// Ridehail itself (timers, matching).
    System { component: String },
    /// Someone not yet authenticated (registration).
    Anonymous,
}

/// An event with its metadata, typed.
#[derive(Debug, Clone, PartialEq)]
pub struct EventEnvelope<E> {
    pub event_id: EventId,
    pub aggregate_id: Uuid,
    /// 1-based position of the event in its aggregate's stream.
    pub sequence: u64,
    pub correlation_id: CorrelationId,
    /// The command (or event, for reactions) that caused this event.
    pub causation_id: Uuid,
    pub occurred_at: DateTime<Utc>,
    pub event: E,
}

/// An event as stored and published: metadata plus the payload as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WireEvent {
    /// UUIDv7, unique per event.
    pub event_id: Uuid,
    /// The event's type name, e.g. "RideRequested".
    pub event_type: String,
    /// Version of this event type's payload schema.
    pub schema_version: u16,
    pub aggregate_type: AggregateType,
    pub aggregate_id: Uuid,
    /// 1-based position in the aggregate's stream, increasing, never repeated for another event. On the
    /// public topics a stream's numbers can skip: internal events (e.g. a password change) are stored
    /// in the stream but not published. A record delivered twice carries the same `event_id`.
    #[schemars(range(min = 1))]
    pub sequence: u64,
    /// Shared by everything caused by one client request.
    pub correlation_id: Uuid,
    /// The id of the command (or event) that caused this one.
    pub causation_id: Uuid,
    /// RFC 3339 time at which the event happened.
    pub occurred_at: DateTime<Utc>,
    pub payload: Value,
}

impl<E: Message> EventEnvelope<E> {
    pub fn to_wire(&self) -> WireEvent {
        WireEvent {
            event_id: self.event_id.0,
            event_type: self.event.type_name().to_owned(),
            schema_version: self.event.schema_version(),
            aggregate_type: E::AGGREGATE,
            aggregate_id: self.aggregate_id,
            sequence: self.sequence,
            correlation_id: self.correlation_id.0,
            causation_id: self.causation_id,
            occurred_at: self.occurred_at,
            payload: self.event.encode_payload(),
        }
    }

    pub fn from_wire(wire: WireEvent) -> Result<Self, DecodeError> {
        if wire.aggregate_type != E::AGGREGATE {
            return Err(DecodeError::WrongAggregate {
                expected: E::AGGREGATE.as_str(),
                actual: wire.aggregate_type.as_str().to_owned(),
            });
        }
        let event = E::decode(&wire.event_type, wire.schema_version, wire.payload)?;
        Ok(Self {
            event_id: EventId(wire.event_id),
            aggregate_id: wire.aggregate_id,
            sequence: wire.sequence,
            correlation_id: CorrelationId(wire.correlation_id),
            causation_id: wire.causation_id,
            occurred_at: wire.occurred_at,
            event,
        })
    }
}

impl WireEvent {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, DecodeError> {
        serde_json::from_slice(bytes).map_err(|e| DecodeError::Json(e.to_string()))
    }
}

/// A command with its metadata, typed.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandEnvelope<C> {
    pub command_id: CommandId,
    pub aggregate_id: Uuid,
    pub correlation_id: CorrelationId,
    /// Set when the command is a reaction to an event (e.g. a timer).
    pub causation_id: Option<Uuid>,
    pub actor: Actor,
    pub issued_at: DateTime<Utc>,
    pub command: C,
}

/// A command as published on a command topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WireCommand {
    /// UUIDv7, unique per submission; the idempotency key of the command.
    pub command_id: Uuid,
    pub command_type: String,
    pub schema_version: u16,
    pub aggregate_type: AggregateType,
    pub aggregate_id: Uuid,
    pub correlation_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    pub actor: Actor,
    pub issued_at: DateTime<Utc>,
    pub payload: Value,
}

impl<C: Message> CommandEnvelope<C> {
    pub fn to_wire(&self) -> WireCommand {
        WireCommand {
            command_id: self.command_id.0,
            command_type: self.command.type_name().to_owned(),
            schema_version: self.command.schema_version(),
            aggregate_type: C::AGGREGATE,
            aggregate_id: self.aggregate_id,
            correlation_id: self.correlation_id.0,
            causation_id: self.causation_id,
            actor: self.actor.clone(),
            issued_at: self.issued_at,
            payload: self.command.encode_payload(),
        }
    }

    pub fn from_wire(wire: WireCommand) -> Result<Self, DecodeError> {
        if wire.aggregate_type != C::AGGREGATE {
            return Err(DecodeError::WrongAggregate {
                expected: C::AGGREGATE.as_str(),
                actual: wire.aggregate_type.as_str().to_owned(),
            });
        }
        let command = C::decode(&wire.command_type, wire.schema_version, wire.payload)?;
        Ok(Self {
            command_id: CommandId(wire.command_id),
            aggregate_id: wire.aggregate_id,
            correlation_id: CorrelationId(wire.correlation_id),
            causation_id: wire.causation_id,
            actor: wire.actor,
            issued_at: wire.issued_at,
            command,
        })
    }
}

impl WireCommand {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, DecodeError> {
        serde_json::from_slice(bytes).map_err(|e| DecodeError::Json(e.to_string()))
    }
}
