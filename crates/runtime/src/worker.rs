//! Building blocks every command worker uses: decode a command record, load and append a stream,
//! publish events with their headers, and report the command's outcome.

use chrono::{DateTime, Utc};
use ridehail_events::topics::{JSON_CONTENT_TYPE, headers};
use ridehail_events::{CommandEnvelope, EventEnvelope, EventId, Message, WireCommand, WireEvent};
use uuid::Uuid;

use crate::backend::Backend;
use crate::consumer::{HandleError, MessageHandler};
use crate::ports::{
    AppendError, CommandState, CommandStatus, CommandStatusStore, EventStore, IncomingMessage, MessageBus,
    OutgoingMessage, Rejection,
};

/// How many times a worker reloads and decides again after losing an append race.
pub const MAX_CONFLICT_RETRIES: usize = 8;

/// Decodes a command record; anything undecodable is poison (dead-lettered, never retried).
pub fn decode_command<C: Message>(message: &IncomingMessage) -> Result<CommandEnvelope<C>, HandleError> {
    let wire = WireCommand::from_json(&message.payload).map_err(|e| HandleError::Poison(e.to_string()))?;
    CommandEnvelope::from_wire(wire).map_err(|e| HandleError::Poison(e.to_string()))
}

/// Reads and decodes a whole stream.
pub async fn load<E: Message>(store: &dyn EventStore, aggregate_id: Uuid) -> anyhow::Result<Vec<EventEnvelope<E>>> {
    let wires = store.read_stream(aggregate_id).await?;
    wires
        .into_iter()
        .map(|w| {
            let (id, seq) = (w.aggregate_id, w.sequence);
            EventEnvelope::from_wire(w).map_err(|e| anyhow::anyhow!("stored event {id}#{seq} does not decode: {e}"))
        })
        .collect()
}

/// Wraps freshly decided events for appending after `version`, caused by `command`.
pub fn envelopes<C, E: Message>(
    command: &CommandEnvelope<C>,
    aggregate_id: Uuid,
    version: u64,
    events: Vec<E>,
    now: DateTime<Utc>,
) -> Vec<EventEnvelope<E>> {
    events
        .into_iter()
        .enumerate()
        .map(|(i, event)| EventEnvelope {
            event_id: EventId::new(),
            aggregate_id,
            sequence: version + 1 + i as u64,
            correlation_id: command.correlation_id,
            causation_id: command.command_id.0,
            occurred_at: now,
            event,
        })
        .collect()
}

/// Appends typed envelopes (see [`EventStore::append`]).
pub async fn append<E: Message>(
    store: &dyn EventStore,
    version: u64,
    envelopes: &[EventEnvelope<E>],
) -> Result<(), AppendError> {
    if envelopes.is_empty() {
        return Ok(());
    }
    let wires: Vec<WireEvent> = envelopes.iter().map(EventEnvelope::to_wire).collect();
    store.append(version, &wires).await
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

/// Publishes the public ones among `events` on `topic`, in order.
pub async fn publish_events<E: Message>(
    bus: &dyn MessageBus,
    topic: &str,
    events: &[EventEnvelope<E>],
) -> anyhow::Result<()> {
    let records: Vec<OutgoingMessage> =
        events.iter().filter(|e| e.event.is_public()).map(|e| event_record(&e.to_wire())).collect();
    if records.is_empty() {
        return Ok(());
    }
    bus.publish(topic, records).await?;
    Ok(())
}

/// Marks an error that happened after a command's events were appended: the consumer must retry the
/// record until its effects are complete instead of dead-lettering it.
#[derive(Debug, thiserror::Error)]
#[error("effects of an appended command are unfinished: {0:#}")]
pub struct EffectsPending(anyhow::Error);

pub fn effects_pending(error: anyhow::Error) -> anyhow::Error {
    anyhow::Error::new(EffectsPending(error))
}

/// What a command came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted; the types of the events it produced (possibly none: nothing to change).
    Accepted(Vec<String>),
    Rejected(Rejection),
}

/// Records the final status of `command`.
pub async fn record_outcome<C: Message>(
    store: &dyn CommandStatusStore,
    command: &CommandEnvelope<C>,
    resource: Option<String>,
    outcome: Outcome,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    let issued_by = match &command.actor {
        ridehail_events::Actor::User { user_id, .. } => Some(*user_id),
        _ => None,
    };
    let (state, rejection, events) = match outcome {
        Outcome::Accepted(events) => (CommandState::Accepted, None, events),
        Outcome::Rejected(rejection) => (CommandState::Rejected, Some(rejection), Vec::new()),
    };
    store
        .record(&CommandStatus {
            command_id: command.command_id,
            correlation_id: command.correlation_id,
            command_type: command.command.type_name().to_owned(),
            aggregate_id: command.aggregate_id,
            issued_by,
            state,
            rejection,
            events,
            resource,
            submitted_at: command.issued_at,
            completed_at: Some(now),
        })
        .await
}

/// True when the command already reached a final state (a redelivery to skip).
pub async fn already_done(
    store: &dyn CommandStatusStore,
    command_id: ridehail_events::CommandId,
) -> anyhow::Result<bool> {
    Ok(store.get(command_id).await?.is_some_and(|s| s.state != CommandState::Pending))
}

/// The events of `history` caused by `command_id`: non-empty when a redelivered command was already
/// appended (its effects must be completed, not decided again).
pub fn caused_by<E: Clone>(history: &[EventEnvelope<E>], command_id: Uuid) -> Vec<EventEnvelope<E>> {
    history.iter().filter(|e| e.causation_id == command_id).cloned().collect()
}

/// The id of a command a timer publishes: derived from the timer's id, so a timer that fires twice
/// yields one command id and the second delivery is skipped as already done.
pub fn timer_command_id(timer_id: &str) -> ridehail_events::CommandId {
    const TIMER_NAMESPACE: Uuid = Uuid::from_u128(0x2a4e_51c0_93d2_4d1b_8f0e_6b7c_1d3e_5f70);
    ridehail_events::CommandId(Uuid::new_v5(&TIMER_NAMESPACE, timer_id.as_bytes()))
}

/// One aggregate type's command handling, run by [`MessageHandler`] for any implementor: a record whose
/// command already has an outcome is skipped (redelivery), otherwise it is processed and its outcome
/// recorded.
#[async_trait::async_trait]
pub trait CommandProcessor: Send + Sync {
    type Command: Message;

    fn backend(&self) -> &Backend;

    /// Where clients read what a command on `aggregate_id` acted on.
    fn resource(&self, aggregate_id: Uuid) -> String;

    /// Decides and applies the command; returns once every effect is durable.
    async fn process(&self, command: &CommandEnvelope<Self::Command>) -> anyhow::Result<Outcome>;
}

#[async_trait::async_trait]
impl<P: CommandProcessor> MessageHandler for P {
    async fn handle(&self, message: &IncomingMessage) -> Result<(), HandleError> {
        let command = decode_command::<P::Command>(message)?;
        let backend = self.backend();
        if already_done(&*backend.commands, command.command_id).await? {
            return Ok(());
        }
        let outcome = self.process(&command).await.map_err(|e| {
            if e.is::<EffectsPending>() { HandleError::Unfinished(e) } else { HandleError::Transient(e) }
        })?;
        let resource = Some(self.resource(command.aggregate_id));
        // The command's effects are done; its outcome must be recorded before the record is let go.
        record_outcome(&*backend.commands, &command, resource, outcome, backend.clock.now())
            .await
            .map_err(HandleError::Unfinished)?;
        Ok(())
    }
}
