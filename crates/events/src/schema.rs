//! The JSON Schema catalogue published in `schemas/`, generated from the Rust types.
//!
//! Each file describes one whole message as it appears on a topic: the envelope with its type name and
//! schema version fixed, and the payload's own schema inline. A consumer written in any language can
//! validate a record's value against `schemas/<kind>/<aggregate>/<Type>.v<version>.json`.
//! The test `schemas_on_disk_match_the_types` fails when a file and the types drift apart.

use serde_json::{Map, Value, json};

use crate::envelope::{Message, WireCommand, WireEvent};
use crate::ride::{RideCommand, RideEvent};
use crate::topics;
use crate::user::{UserCommand, UserEvent};

/// Schema files of versions the code no longer writes, kept as they were committed: records already
/// stored or published in them are still read (upcast, see `envelope::upcast`), and consumers still
/// validate them. Never regenerated; each must exist.
pub const RETIRED: [&str; 2] = ["events/ride/RideRequested.v1.json", "events/ride/RideCompleted.v1.json"];

/// One generated schema file.
#[derive(Debug, Clone, PartialEq)]
pub struct SchemaFile {
    /// Path relative to `schemas/`.
    pub path: String,
    pub schema: Value,
}

impl SchemaFile {
    /// The file's bytes: pretty JSON with a trailing newline.
    pub fn contents(&self) -> String {
        let mut text = serde_json::to_string_pretty(&self.schema).unwrap_or_default();
        text.push('\n');
        text
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Command,
    Event,
}

fn family<M: Message>(kind: Kind, aggregate: &str, topic_of: fn(&str) -> &'static str, out: &mut Vec<SchemaFile>) {
    let (envelope, type_field, kind_dir) = match kind {
        Kind::Command => (schemars::schema_for!(WireCommand), "command_type", "commands"),
        Kind::Event => (schemars::schema_for!(WireEvent), "event_type", "events"),
    };
    for entry in M::catalogue().into_iter().filter(|e| e.public) {
        let topic = topic_of(entry.type_name);
        let mut root = envelope.clone().to_value();
        let mut payload = entry.payload_schema.to_value();
        let mut defs = take_defs(&mut root);
        defs.extend(take_defs(&mut payload));
        if let Some(obj) = payload.as_object_mut() {
            obj.remove("$schema");
        }
        let path = format!("{kind_dir}/{aggregate}/{}.v{}.json", entry.type_name, entry.version);
        if let Some(obj) = root.as_object_mut() {
            obj.insert("$id".into(), json!(format!("https://ridehail.example/schemas/{path}")));
            obj.insert("title".into(), json!(format!("{} v{}", entry.type_name, entry.version)));
            obj.insert(
                "description".into(),
                json!(format!(
                    "{} {} on topic {topic}, key = aggregate id. Generated from the Rust types; do not edit.",
                    aggregate,
                    match kind {
                        Kind::Command => "command",
                        Kind::Event => "event",
                    }
                )),
            );
            if !defs.is_empty() {
                obj.insert("$defs".into(), Value::Object(defs));
            }
            if let Some(props) = obj.get_mut("properties").and_then(Value::as_object_mut) {
                props.insert(type_field.into(), json!({ "const": entry.type_name }));
                props.insert("schema_version".into(), json!({ "const": entry.version }));
                props.insert("aggregate_type".into(), json!({ "const": M::AGGREGATE.as_str() }));
                props.insert("payload".into(), payload);
            }
        }
        out.push(SchemaFile { path, schema: root });
    }
}

fn take_defs(schema: &mut Value) -> Map<String, Value> {
    schema
        .as_object_mut()
        .and_then(|obj| obj.remove("$defs"))
        .and_then(|defs| match defs {
            Value::Object(map) => Some(map),
            _ => None,
        })
        .unwrap_or_default()
}

/// Every schema file, in a stable order.
pub fn catalogue() -> Vec<SchemaFile> {
    let mut out = Vec::new();
    let ride_commands = |type_name: &str| match type_name {
        "ExpireOffer" | "RetryMatching" => topics::RIDE_SYSTEM_COMMANDS,
        _ => topics::RIDE_COMMANDS,
    };
    family::<RideCommand>(Kind::Command, "ride", ride_commands, &mut out);
    family::<UserCommand>(Kind::Command, "user", |_| topics::USER_COMMANDS, &mut out);
    family::<RideEvent>(Kind::Event, "ride", |_| topics::RIDE_EVENTS, &mut out);
    family::<UserEvent>(Kind::Event, "user", |_| topics::USER_EVENTS, &mut out);
    out
}
