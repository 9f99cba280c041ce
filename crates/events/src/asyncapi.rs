//! The AsyncAPI 3.0 document of the topics analytics consumers subscribe to, generated from the same
//! types as `schemas/` and committed at `asyncapi/ridehail.json`. The test `asyncapi_on_disk_matches_the_types`
//! fails when the file and the types drift apart; `tests/api_contract.rs` validates it with the
//! AsyncAPI CLI.
//!
//! Channels: the ride and user event topics (each message's payload is its file in `schemas/`) and
//! the dead-letter topic (the original record, with the reason and source in its headers).

use serde_json::{Map, Value, json};

use crate::schema::catalogue;
use crate::topics::{self, headers};

/// The kafka bindings' version this document uses.
const KAFKA_BINDING: &str = "0.5.0";

/// Where the document lives, relative to the repository root; its `$ref`s to `schemas/` are
/// relative to it.
pub const PATH: &str = "asyncapi/ridehail.json";

fn channel_key(topic: &str) -> &'static str {
    match topic {
        topics::RIDE_EVENTS => "rideEvents",
        topics::USER_EVENTS => "userEvents",
        _ => "deadLetters",
    }
}

fn record_headers() -> Value {
    json!({
        "type": "object",
        "description": "Kafka record headers (UTF-8 strings). The same values are in the envelope.",
        "properties": {
            headers::MESSAGE_TYPE: { "type": "string", "description": "The message type, e.g. RideRequested." },
            headers::SCHEMA_VERSION: { "type": "string", "description": "The payload's schema version (an integer)." },
            headers::CORRELATION_ID: { "type": "string", "format": "uuid", "description": "Ties together everything one client action caused." },
            headers::CAUSATION_ID: { "type": "string", "format": "uuid", "description": "The command that caused this event." },
            headers::CONTENT_TYPE: { "type": "string", "const": topics::JSON_CONTENT_TYPE },
            headers::TRACEPARENT: { "type": "string", "description": "W3C trace context of the publish (optional)." }
        },
        "required": [headers::MESSAGE_TYPE, headers::SCHEMA_VERSION, headers::CORRELATION_ID, headers::CONTENT_TYPE]
    })
}

fn dead_letter_headers() -> Value {
    json!({
        "type": "object",
        "description": "The original record's headers, plus why and where from.",
        "properties": {
            headers::DLQ_REASON: { "type": "string", "description": "Why it was dead-lettered: `poison: …` (could never be processed) or `failed after N attempts: …`." },
            headers::DLQ_SOURCE_TOPIC: { "type": "string" },
            headers::DLQ_SOURCE_PARTITION: { "type": "string", "description": "An integer." },
            headers::DLQ_SOURCE_OFFSET: { "type": "string", "description": "An integer." }
        },
        "required": [headers::DLQ_REASON, headers::DLQ_SOURCE_TOPIC, headers::DLQ_SOURCE_PARTITION, headers::DLQ_SOURCE_OFFSET]
    })
}

/// The whole document.
pub fn document() -> Value {
    let mut messages = Map::new();
    let mut by_topic: Vec<(&'static str, Vec<String>)> =
        vec![(topics::RIDE_EVENTS, vec![]), (topics::USER_EVENTS, vec![])];
    for file in catalogue().into_iter().filter(|f| f.path.starts_with("events/")) {
        let (aggregate, topic) = if file.path.starts_with("events/ride/") {
            ("ride", topics::RIDE_EVENTS)
        } else {
            ("user", topics::USER_EVENTS)
        };
        let title = file.schema["title"].as_str().unwrap_or_default().to_owned();
        let (name, version) = title.split_once(" v").unwrap_or((title.as_str(), "1"));
        let key = format!("{name}.v{version}");
        messages.insert(
            key.clone(),
            json!({
                "name": name,
                "title": title,
                "summary": format!("{name}, schema version {version}, on {topic}."),
                "contentType": topics::JSON_CONTENT_TYPE,
                "headers": { "$ref": "#/components/schemas/RecordHeaders" },
                "payload": { "$ref": format!("../schemas/{}", file.path) },
                "bindings": { "kafka": {
                    "key": { "type": "string", "format": "uuid", "description": format!("The {aggregate} id: a {aggregate}'s records are in one partition, in order.") },
                    "bindingVersion": KAFKA_BINDING
                } }
            }),
        );
        if let Some((_, keys)) = by_topic.iter_mut().find(|(t, _)| *t == topic) {
            keys.push(key);
        }
    }
    messages.insert(
        "DeadLetter".into(),
        json!({
            "name": "DeadLetter",
            "title": "A record a consumer could not process",
            "summary": "The original record's key and value, byte for byte; the reason and the source position in the headers.",
            "contentType": "application/octet-stream",
            "headers": { "$ref": "#/components/schemas/DeadLetterHeaders" },
            "payload": { "type": "string", "description": "The original value (usually a command or event as JSON; possibly not JSON at all)." },
            "bindings": { "kafka": { "key": { "type": "string", "description": "The original key." }, "bindingVersion": KAFKA_BINDING } }
        }),
    );
    let mut channels = Map::new();
    let mut operations = Map::new();
    let describe = |topic: &str| match topic {
        topics::RIDE_EVENTS => "Every public ride event, in order per ride.",
        topics::USER_EVENTS => {
            "Every public user event, in order per user. Holds personal data (e-mail, name): consumers need authorisation. Credentials never appear here."
        }
        _ => "Records a Ridehail consumer dead-lettered after classifying them as poison or failing repeatedly.",
    };
    let mut topics_and_messages = by_topic;
    topics_and_messages.push((topics::DEAD_LETTERS, vec!["DeadLetter".to_owned()]));
    for (topic, keys) in topics_and_messages {
        let channel = channel_key(topic);
        let refs: Map<String, Value> =
            keys.iter().map(|k| (k.clone(), json!({ "$ref": format!("#/components/messages/{k}") }))).collect();
        channels.insert(
            channel.into(),
            json!({
                "address": topic,
                "description": describe(topic),
                "messages": refs,
                "bindings": { "kafka": { "topic": topic, "bindingVersion": KAFKA_BINDING } }
            }),
        );
        let operation_refs: Vec<Value> =
            keys.iter().map(|k| json!({ "$ref": format!("#/channels/{channel}/messages/{k}") })).collect();
        let mut name = channel.to_owned();
        if let Some(first) = name.get_mut(0..1) {
            first.make_ascii_uppercase();
        }
        operations.insert(
            format!("consume{name}"),
            json!({
                "action": "receive",
                "channel": { "$ref": format!("#/channels/{channel}") },
                "summary": format!("Subscribe to {topic}."),
                "description": "Use one consumer group per consuming application (every group gets every record); commit offsets after processing (at least once: a record may come twice, deduplicate by `event_id`). Unknown message types and newer schema versions may appear: skip what you do not know.",
                "messages": operation_refs,
                "bindings": { "kafka": {
                    "groupId": { "type": "string", "description": "Your application's own group, e.g. `analytics-rides`." },
                    "bindingVersion": KAFKA_BINDING
                } }
            }),
        );
    }
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "Ridehail events",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The topics analytics consumers subscribe to. Every record's value is a JSON envelope whose payload is described by its file in schemas/ (generated from the Rust types); records are keyed by aggregate id. Generated by ridehail-events; do not edit."
        },
        "defaultContentType": topics::JSON_CONTENT_TYPE,
        "servers": {
            "production": {
                "host": "kafka:9092",
                "protocol": "kafka",
                "description": "The deployment's Kafka cluster (TLS and SASL as configured; see docs/operations.md)."
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": messages,
            "schemas": { "RecordHeaders": record_headers(), "DeadLetterHeaders": dead_letter_headers() }
        }
    })
}

/// The document's bytes: pretty JSON with a trailing newline.
pub fn contents() -> String {
    let mut text = serde_json::to_string_pretty(&document()).unwrap_or_default();
    text.push('\n');
    text
}
