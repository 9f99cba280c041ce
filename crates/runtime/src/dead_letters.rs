//! Dead letters read back, redriven and purged, on any bus (`ridehail dlq …` and the edge's admin
//! endpoints).
//!
//! The dead-letter topic is append-only (Kafka's model), so what an operator did to a dead letter is
//! appended to it too: a *resolution* record (empty payload) with headers
//! `ridehail-dlq-resolves: <partition>:<offset>` and `ridehail-dlq-action: redriven | purged`. Reading
//! the topic folds them: a dead letter is `open` until resolved. Redriving publishes the original
//! record (key, payload, its own headers) to its source topic unchanged, so it keeps its command id:
//! the handlers are idempotent, and a second redrive of the same record changes nothing. Purging only
//! hides a dead letter (the bus's retention removes the bytes).

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
pub use ridehail_events::topics::DEAD_LETTERS;
use ridehail_events::topics::headers;
use ridehail_ports::{BusError, IncomingMessage, MessageBus, OutgoingMessage, StartFrom};
use serde::{Deserialize, Serialize};

/// On resolution records: the dead letter (`partition:offset`) and what was done to it.
pub const RESOLVES: &str = "ridehail-dlq-resolves";
pub const ACTION: &str = "ridehail-dlq-action";

/// What became of a dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterState {
    Open,
    Redriven,
    Purged,
}

/// One dead letter, as operators see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DeadLetter {
    /// `partition:offset` on the dead-letter topic.
    pub id: String,
    pub state: DeadLetterState,
    pub reason: String,
    pub source_topic: String,
    pub source_partition: Option<u32>,
    pub source_offset: Option<u64>,
    /// The record's `ridehail-type` header (the command type), when it has one.
    pub message_type: Option<String>,
    /// The command id in the payload, when it has one.
    pub command_id: Option<String>,
    pub key: String,
    pub dead_lettered_at: DateTime<Utc>,
    /// When it was redriven or purged.
    pub resolved_at: Option<DateTime<Utc>>,
    /// The original headers (the dead-letter ones left out), in order.
    pub headers: Vec<RecordHeader>,
    /// The original payload: JSON when it parses, else the bytes as lossy UTF-8.
    pub payload: serde_json::Value,
    #[serde(skip)]
    #[schemars(skip)]
    raw: Vec<u8>,
}

/// One record header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RecordHeader {
    pub name: String,
    pub value: String,
}

/// Which dead letters to list, redrive or purge; every field narrows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterFilter {
    /// Exactly these ids (`partition:offset`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<String>,
    pub source_topic: Option<String>,
    /// A part of the reason (case-insensitive).
    pub reason: Option<String>,
    pub message_type: Option<String>,
    /// Dead-lettered at or after.
    pub since: Option<DateTime<Utc>>,
    /// Dead-lettered before.
    pub until: Option<DateTime<Utc>>,
    /// Also those already redriven or purged (listing only; redrive and purge act on open ones).
    #[serde(default)]
    pub include_resolved: bool,
}

impl DeadLetterFilter {
    /// Whether it narrows at all (redriving or purging everything takes an explicit "all").
    pub fn narrows(&self) -> bool {
        let Self { ids, source_topic, reason, message_type, since, until, include_resolved: _ } = self;
        !ids.is_empty()
            || source_topic.is_some()
            || reason.is_some()
            || message_type.is_some()
            || since.is_some()
            || until.is_some()
    }

    pub fn matches(&self, letter: &DeadLetter) -> bool {
        let contains = |hay: &str, needle: &str| hay.to_lowercase().contains(&needle.to_lowercase());
        (self.ids.is_empty() || self.ids.contains(&letter.id))
            && self.source_topic.as_ref().is_none_or(|t| *t == letter.source_topic)
            && self.reason.as_ref().is_none_or(|r| contains(&letter.reason, r))
            && self.message_type.as_ref().is_none_or(|t| letter.message_type.as_ref() == Some(t))
            && self.since.is_none_or(|since| letter.dead_lettered_at >= since)
            && self.until.is_none_or(|until| letter.dead_lettered_at < until)
            && (self.include_resolved || letter.state == DeadLetterState::Open)
    }
}

fn header<'a>(message: &'a IncomingMessage, name: &str) -> Option<&'a str> {
    message.header(name)
}

fn dead_letter(message: IncomingMessage) -> DeadLetter {
    let original: Vec<RecordHeader> = message
        .headers
        .iter()
        .filter(|(k, _)| !k.starts_with("ridehail-dlq-"))
        .map(|(name, value)| RecordHeader { name: name.clone(), value: value.clone() })
        .collect();
    let payload = serde_json::from_slice(&message.payload)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&message.payload).into_owned()));
    DeadLetter {
        id: format!("{}:{}", message.partition, message.offset),
        state: DeadLetterState::Open,
        reason: header(&message, headers::DLQ_REASON).unwrap_or_default().to_owned(),
        source_topic: header(&message, headers::DLQ_SOURCE_TOPIC).unwrap_or_default().to_owned(),
        source_partition: header(&message, headers::DLQ_SOURCE_PARTITION).and_then(|p| p.parse().ok()),
        source_offset: header(&message, headers::DLQ_SOURCE_OFFSET).and_then(|o| o.parse().ok()),
        message_type: header(&message, headers::MESSAGE_TYPE).map(str::to_owned),
        command_id: crate::records::command_id_of(&message.payload).map(|id| id.to_string()),
        key: message.key.clone(),
        dead_lettered_at: message.timestamp,
        resolved_at: None,
        headers: original,
        payload,
        raw: message.payload,
    }
}

/// Every dead letter on `topic`, in order, with what became of it. Reads the topic from its start
/// with a consumer group of its own (nothing is committed): once its partitions are assigned, until
/// nothing arrives for a second.
pub async fn read(bus: &dyn MessageBus, topic: &str) -> Result<Vec<DeadLetter>, BusError> {
    let group = format!("ridehail-dlq-reader-{}", uuid::Uuid::now_v7().simple());
    let mut subscription = bus.subscribe(&group, &[topic], StartFrom::Earliest).await?;
    let mut letters: Vec<DeadLetter> = Vec::new();
    // Resolutions may sit in another partition than their dead letter: applied once all is read.
    let mut resolutions: Vec<(String, DeadLetterState, DateTime<Utc>)> = Vec::new();
    let (started, mut quiet) = (std::time::Instant::now(), 0);
    while quiet < 2 {
        let batch = subscription.poll(500, Duration::from_millis(500)).await?;
        if batch.is_empty() {
            // A new group member has no partitions until the group is joined (Kafka).
            let assigned = !subscription.end_offsets().await?.is_empty();
            if assigned || started.elapsed() > Duration::from_secs(30) {
                quiet += 1;
            }
            continue;
        }
        quiet = 0;
        for message in batch {
            match header(&message, RESOLVES) {
                Some(target) => {
                    let state = match header(&message, ACTION) {
                        Some("purged") => DeadLetterState::Purged,
                        _ => DeadLetterState::Redriven,
                    };
                    resolutions.push((target.to_owned(), state, message.timestamp));
                }
                None => letters.push(dead_letter(message)),
            }
        }
    }
    let index: HashMap<String, usize> = letters.iter().enumerate().map(|(i, l)| (l.id.clone(), i)).collect();
    for (target, state, at) in resolutions {
        if let Some(letter) = index.get(&target).and_then(|i| letters.get_mut(*i)) {
            letter.state = state;
            letter.resolved_at = Some(at);
        }
    }
    Ok(letters)
}

/// The dead letters on `topic` (Ridehail's is [`DEAD_LETTERS`]) that `filter` selects.
pub async fn list(bus: &dyn MessageBus, topic: &str, filter: &DeadLetterFilter) -> Result<Vec<DeadLetter>, BusError> {
    Ok(read(bus, topic).await?.into_iter().filter(|l| filter.matches(l)).collect())
}

fn resolution(letter: &DeadLetter, action: &str) -> OutgoingMessage {
    OutgoingMessage {
        key: letter.key.clone(),
        headers: vec![(RESOLVES.to_owned(), letter.id.clone()), (ACTION.to_owned(), action.to_owned())],
        payload: Vec::new(),
    }
}

/// Publishes each open dead letter `filter` selects back to its source topic, as it was, then marks
/// it redriven. Returns those redriven.
pub async fn redrive(
    bus: &dyn MessageBus,
    topic: &str,
    filter: &DeadLetterFilter,
) -> Result<Vec<DeadLetter>, BusError> {
    let selected = DeadLetterFilter { include_resolved: false, ..filter.clone() };
    let letters = list(bus, topic, &selected).await?;
    for letter in &letters {
        let headers: Vec<_> = letter.headers.iter().map(|h| (h.name.clone(), h.value.clone())).collect();
        let headers = crate::propagation::without_context(&headers);
        let original = OutgoingMessage { key: letter.key.clone(), headers, payload: letter.raw.clone() };
        bus.publish(&letter.source_topic, vec![original]).await?;
        // Marked after: a crash in between leaves it open, and a second redrive is harmless.
        bus.publish(topic, vec![resolution(letter, "redriven")]).await?;
    }
    Ok(letters)
}

/// Marks each open dead letter `filter` selects purged (hidden from listings). Returns them.
pub async fn purge(bus: &dyn MessageBus, topic: &str, filter: &DeadLetterFilter) -> Result<Vec<DeadLetter>, BusError> {
    let selected = DeadLetterFilter { include_resolved: false, ..filter.clone() };
    let letters = list(bus, topic, &selected).await?;
    let markers: Vec<OutgoingMessage> = letters.iter().map(|l| resolution(l, "purged")).collect();
    if !markers.is_empty() {
        bus.publish(topic, markers).await?;
    }
    Ok(letters)
}
