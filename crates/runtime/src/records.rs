//! Records on the bus: commands and events as records with their headers, and back.

use chrono::Utc;
use ridehail_events::topics::{JSON_CONTENT_TYPE, headers};
use ridehail_events::{CommandEnvelope, Message, WireCommand, WireEvent};
use ridehail_ports::{IncomingMessage, OutgoingMessage};
use uuid::Uuid;

use crate::consumer::HandleError;

/// Decodes a command record; anything undecodable is poison (dead-lettered, never retried).
pub fn decode_command<C: Message>(message: &IncomingMessage) -> Result<CommandEnvelope<C>, HandleError> {
    let wire = WireCommand::from_json(&message.payload).map_err(|e| HandleError::Poison(e.to_string()))?;
    CommandEnvelope::from_wire(wire).map_err(|e| HandleError::Poison(e.to_string()))
}

/// The command id of a command record, even one that does not decode as a command (for the outcome
/// of a dead letter).
pub fn command_id_of(payload: &[u8]) -> Option<ridehail_events::CommandId> {
    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    value.get("command_id")?.as_str()?.parse().ok()
}

pub fn event_record(wire: &WireEvent) -> OutgoingMessage {
    OutgoingMessage {
        key: wire.aggregate_id.to_string(),
        headers: vec![
            (headers::MESSAGE_TYPE.into(), wire.event_type.clone()),
            (headers::SCHEMA_VERSION.into(), wire.schema_version.to_string()),
            (headers::CORRELATION_ID.into(), wire.correlation_id.to_string()),
            (headers::CAUSATION_ID.into(), wire.causation_id.to_string()),
            (headers::CONTENT_TYPE.into(), JSON_CONTENT_TYPE.into()),
        ],
        payload: wire.to_json(),
    }
}

pub fn command_record(wire: &WireCommand) -> OutgoingMessage {
    let mut headers = vec![
        (headers::MESSAGE_TYPE.into(), wire.command_type.clone()),
        (headers::SCHEMA_VERSION.into(), wire.schema_version.to_string()),
        (headers::CORRELATION_ID.into(), wire.correlation_id.to_string()),
        (headers::CONTENT_TYPE.into(), JSON_CONTENT_TYPE.into()),
    ];
    if let Some(causation) = wire.causation_id {
        headers.push((headers::CAUSATION_ID.into(), causation.to_string()));
    }
    OutgoingMessage { key: wire.aggregate_id.to_string(), headers, payload: wire.to_json() }
}

/// A command record as a consumer receives it from `topic`: for running a command through its
/// handler in-process (seeds, tests), without a bus.
pub fn command_message(topic: &str, wire: &WireCommand) -> IncomingMessage {
    let record = command_record(wire);
    IncomingMessage {
        topic: topic.to_owned(),
        partition: 0,
        offset: 0,
        key: record.key,
        headers: record.headers,
        payload: record.payload,
        timestamp: Utc::now(),
    }
}

/// The id of a command a timer publishes: derived from the timer's id, so a timer that fires twice
/// yields one command id and the second delivery is skipped as already done.
pub fn timer_command_id(timer_id: &str) -> ridehail_events::CommandId {
    const TIMER_NAMESPACE: Uuid = Uuid::from_u128(0x2a4e_51c0_93d2_4d1b_8f0e_6b7c_1d3e_5f70);
    ridehail_events::CommandId(Uuid::new_v5(&TIMER_NAMESPACE, timer_id.as_bytes()))
}
