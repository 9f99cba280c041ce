//! The command executor: the one loop every command of every aggregate goes through.
//!
//! Per command: load the stream (from its snapshot and the events after it, for an aggregate that
//! keeps snapshots) and fold it → if events caused by this command are already there (a
//! redelivery), only finish their effects → look up the outside facts → `decide` (pure) →
//! claim what the decision needs beyond its own stream → append with optimistic concurrency (on a
//! conflict: give back what the facts reserved, reload, decide again) → give back what the appended
//! events do not use → the effects (read models, timers, publishing), each idempotent → a snapshot,
//! when the stream has grown enough since the last one. The effects nothing later reads back (ride
//! views, published events, the outcome) go to a [`Deferred`], written at the end of the consumer's
//! run of records ([`crate::deferred`]).
//!
//! An aggregate plugs in through [`Aggregate`]; [`CommandHandler`] runs it under the consume loop
//! and records each command's outcome. Spans, metrics, snapshots and retry policy of the command path
//! belong here, once, not in the workers.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ridehail_events::{CommandEnvelope, EventEnvelope, EventId, Message, WireEvent};
use ridehail_ports::{
    AppendError, Backend, CommandState, CommandStatus, Failure, Outcome, RecentCommand, Rejection, Resource, Snapshot,
    StoreError, StoreResult,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{Instrument as _, debug, field, info_span};
use uuid::Uuid;

use crate::consumer::{HandleError, MessageHandler};
use crate::deferred::Deferred;
use crate::records::decode_command;

/// How many times a command is decided again after losing an append race.
pub const MAX_CONFLICT_RETRIES: usize = 8;

/// Why a command did not (yet) come to an outcome, or that it came to a rejection.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// A dependency is unavailable (down, slow, its circuit open) and nothing of the command is
    /// durable yet: wait it out.
    #[error("{0:#}")]
    Unavailable(anyhow::Error),
    /// The command failed in a way a retry is unlikely to fix (corrupt data, a bug): retried a few
    /// times, then dead-lettered.
    #[error("{0:#}")]
    Failed(anyhow::Error),
    /// Part of the command's effects are durable (its events are appended, an address is claimed):
    /// it must be retried until everything is done, never given up on.
    #[error("effects of an appended command are unfinished: {0:#}")]
    EffectsPending(anyhow::Error),
    /// The command is refused for good.
    #[error("rejected: {}", .0.code)]
    Rejected(Rejection),
}

impl ProcessError {
    /// The same failure, once something of the command is durable.
    fn pending(self) -> Self {
        match self {
            Self::Unavailable(e) | Self::Failed(e) => Self::EffectsPending(e),
            other => other,
        }
    }
}

impl From<StoreError> for ProcessError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(e) => Self::Unavailable(e),
            corrupt @ StoreError::Corrupt(_) => Self::Failed(corrupt.into()),
        }
    }
}

impl From<AppendError> for ProcessError {
    fn from(error: AppendError) -> Self {
        match error {
            AppendError::Unavailable(e) => Self::Unavailable(e),
            other => Self::Failed(other.into()),
        }
    }
}

impl From<ridehail_ports::BusError> for ProcessError {
    fn from(error: ridehail_ports::BusError) -> Self {
        match error {
            ridehail_ports::BusError::Unavailable(e) => Self::Unavailable(e),
            other => Self::Failed(other.into()),
        }
    }
}

impl From<anyhow::Error> for ProcessError {
    /// An error that says nothing of its cause is treated as a failure of the handler, not of a
    /// dependency (a dependency's errors come typed, through the ports).
    fn from(error: anyhow::Error) -> Self {
        Self::Failed(error)
    }
}

/// How an aggregate's streams are snapshotted (docs/snapshots.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// The aggregate's name in its snapshots: a snapshot under another name is not its.
    pub aggregate: &'static str,
    /// A snapshot is taken once the stream is this many events past the last one (or past its start).
    pub every: u64,
    /// The version of the state's code and serialised form: raise it when either changes, and
    /// snapshots of the previous version are ignored, then taken again.
    pub version: u32,
}

/// A stream folded up to `version` (its last event), as `effects` and `observe` see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Folded<S> {
    pub stream: Uuid,
    pub version: u64,
    pub state: S,
}

/// One aggregate type, as the executor drives it: the domain parts of handling its commands.
#[async_trait]
pub trait Aggregate: Send + Sync + 'static {
    type Command: Message;
    type Event: Message;
    /// What the executor folds a stream into: all that `decide`, `effects` and `observe` know of it.
    /// The default is the state of an empty stream. With snapshots on, its serialised form is stored
    /// ([`SnapshotPolicy::version`]).
    type State: Default + Serialize + DeserializeOwned + Send + Sync;
    /// What `decide` needs from outside the stream, looked up (and possibly reserved) per attempt.
    type Facts: Send + Sync;
    /// The domain's typed reason for refusing a command.
    type Rejection: Send;

    /// The stream the command is decided on (by default the command's aggregate).
    fn stream_id(&self, command: &CommandEnvelope<Self::Command>) -> Uuid {
        command.aggregate_id
    }

    /// Folds one more event (the stream's next) into `state`.
    fn evolve(&self, state: &mut Self::State, event: &EventEnvelope<Self::Event>);

    /// Whether the executor keeps snapshots of this aggregate's streams, and how (by default, not:
    /// every load folds the whole stream).
    fn snapshots(&self) -> Option<SnapshotPolicy> {
        None
    }

    /// Looks up what `decide` needs from outside; may reserve things (a driver) that
    /// [`Aggregate::release`] gives back, or refuse the command at once ([`ProcessError::Rejected`]).
    async fn facts(
        &self,
        state: &Self::State,
        command: &CommandEnvelope<Self::Command>,
        now: DateTime<Utc>,
    ) -> Result<Self::Facts, ProcessError>;

    /// The pure decision: the new events, or a rejection.
    fn decide(
        &self,
        state: &Self::State,
        command: &Self::Command,
        facts: &Self::Facts,
    ) -> Result<Vec<Self::Event>, Self::Rejection>;

    /// The rejection as clients see it (kind, stable code, detail).
    fn rejection(&self, rejection: Self::Rejection) -> Rejection;

    /// Takes what the decided events need beyond their own stream and cannot be given back (the
    /// address of a sign-up). Returns whether it took something: from then on the command must be
    /// finished, so its later failures are [`ProcessError::EffectsPending`].
    async fn claim(
        &self,
        _command: &CommandEnvelope<Self::Command>,
        _events: &[Self::Event],
    ) -> Result<bool, ProcessError> {
        Ok(false)
    }

    /// Gives back what `facts` reserved and the `appended` events do not use (all of it when nothing
    /// was appended).
    async fn release(&self, _facts: &Self::Facts, _appended: &[EventEnvelope<Self::Event>]) -> StoreResult<()> {
        Ok(())
    }

    /// Everything that follows an append, given the command, the stream folded up to its newest event
    /// and the command's events. Re-run on redelivery, so each step must be idempotent. What no later
    /// command of the run reads back (views, published events) goes to `deferred`, written at the
    /// end of the run.
    async fn effects(
        &self,
        command: &CommandEnvelope<Self::Command>,
        stream: &Folded<Self::State>,
        new: &[EventEnvelope<Self::Event>],
        deferred: &mut Deferred,
    ) -> Result<(), ProcessError>;

    /// The command's `new` events are appended and their effects done (`stream`: folded with them):
    /// report what they say to the business metrics ([`crate::metrics`]).
    fn observe(&self, _stream: &Folded<Self::State>, _new: &[EventEnvelope<Self::Event>]) {}

    /// The event types the command's outcome reports (by default, all of them).
    fn reported(&self, events: &[EventEnvelope<Self::Event>]) -> Vec<String> {
        events.iter().map(|e| e.event.type_name().to_owned()).collect()
    }

    /// Where clients read what a command on `aggregate_id` acted on.
    fn resource(&self, aggregate_id: Uuid) -> Resource;

    /// Whether `command` may arrive on `topic` (by default, any command on any topic the handler
    /// consumes). A refusal dead-letters the record with the reason.
    fn accepts(&self, _topic: &str, _command: &CommandEnvelope<Self::Command>) -> Result<(), String> {
        Ok(())
    }
}

/// How many commands a snapshot remembers ([`Snapshot::recent`]): a command redelivered after more
/// than this many later commands on its stream (far beyond what a consumer keeps in flight) would
/// no longer be recognised as one.
pub const RECENT_COMMANDS: usize = 256;

/// A stream as loaded for one attempt: folded from a snapshot (if one was usable) and the events after it.
struct Loaded<S, E> {
    state: S,
    version: u64,
    /// The events read: those after the snapshot, or the whole stream.
    tail: Vec<EventEnvelope<E>>,
    /// The snapshot's version and remembered commands (0 and none without one).
    base: u64,
    recent: Vec<RecentCommand>,
}

/// Runs commands of one aggregate type against the event store.
#[derive(Debug)]
pub struct Executor<A> {
    aggregate: A,
    backend: Backend,
}

impl<A: Aggregate> Executor<A> {
    pub fn new(aggregate: A, backend: Backend) -> Self {
        Self { aggregate, backend }
    }

    pub fn aggregate(&self) -> &A {
        &self.aggregate
    }

    /// Decides and applies `command`; returns its events once every effect is durable (on a
    /// redelivery, the events it appended before).
    pub async fn execute(
        &self,
        command: &CommandEnvelope<A::Command>,
    ) -> Result<Vec<EventEnvelope<A::Event>>, ProcessError> {
        let mut deferred = Deferred::default();
        let events = self.execute_deferred(command, &mut deferred).await?;
        deferred.flush(&self.backend).await.map_err(ProcessError::pending)?;
        Ok(events)
    }

    /// [`Executor::execute`], leaving the effects the aggregate defers in `deferred` (for the caller
    /// to flush): its events are appended when it returns.
    pub async fn execute_deferred(
        &self,
        command: &CommandEnvelope<A::Command>,
        deferred: &mut Deferred,
    ) -> Result<Vec<EventEnvelope<A::Event>>, ProcessError> {
        self.execute_on(self.aggregate.stream_id(command), command, deferred).await
    }

    /// [`Executor::execute_deferred`] on a stream the caller names (when the command alone does not
    /// say which, e.g. the slot of the rider whose ride this command ends).
    pub async fn execute_on(
        &self,
        stream: Uuid,
        command: &CommandEnvelope<A::Command>,
        deferred: &mut Deferred,
    ) -> Result<Vec<EventEnvelope<A::Event>>, ProcessError> {
        let a = &self.aggregate;
        let mut claimed = false;
        let mut trust_snapshot = true;
        for _ in 0..MAX_CONFLICT_RETRIES {
            let span = info_span!("load", events = field::Empty, snapshot = field::Empty);
            let loaded = self.load(stream, trust_snapshot).instrument(span).await?;
            let already = self.already(stream, &loaded, command).await?;
            if !already.is_empty() {
                let folded = Folded { stream, version: loaded.version, state: loaded.state };
                a.effects(command, &folded, &already, deferred)
                    .instrument(info_span!("effects", redelivery = true))
                    .await
                    .map_err(ProcessError::pending)?;
                return Ok(already);
            }
            let now = self.backend.clock.now();
            let facts = a.facts(&loaded.state, command, now).instrument(info_span!("facts")).await?;
            let decided = info_span!("decide").in_scope(|| a.decide(&loaded.state, &command.command, &facts));
            let decided = match decided {
                Ok(events) => events,
                Err(rejection) => {
                    a.release(&facts, &[]).await?;
                    return Err(ProcessError::Rejected(a.rejection(rejection)));
                }
            };
            match a.claim(command, &decided).await {
                Ok(took) => claimed |= took,
                Err(e) => {
                    a.release(&facts, &[]).await?;
                    return Err(e);
                }
            }
            let version = loaded.version;
            let new = envelopes(command, stream, version, decided, now);
            let appended = self.append(version, &new).instrument(info_span!("append", events = new.len() as i64)).await;
            match appended {
                Ok(()) => {
                    let Loaded { mut state, tail, base, recent, .. } = loaded;
                    for event in &new {
                        a.evolve(&mut state, event);
                    }
                    let folded = Folded { stream, version: version + new.len() as u64, state };
                    async {
                        a.release(&facts, &new).await?;
                        a.effects(command, &folded, &new, deferred).await
                    }
                    .instrument(info_span!("effects", redelivery = false))
                    .await
                    .map_err(ProcessError::pending)?;
                    self.snapshot(&folded, base, recent, tail.iter().chain(&new)).await;
                    // Counted once, by the process that appended them (a redelivery does not count again).
                    a.observe(&folded, &new);
                    return Ok(new);
                }
                Err(AppendError::Conflict { actual, .. }) => {
                    debug!(%stream, "append conflict; deciding again");
                    // A stream behind its snapshot (restored from an older backup than the
                    // snapshots): the events are the truth, so fold them all.
                    trust_snapshot &= actual >= version;
                    a.release(&facts, &[]).await?;
                }
                Err(e) => {
                    a.release(&facts, &[]).await?;
                    let error = ProcessError::from(e);
                    return Err(if claimed { error.pending() } else { error });
                }
            }
        }
        let error = ProcessError::Failed(anyhow::anyhow!(
            "stream {stream}: gave up after {MAX_CONFLICT_RETRIES} append conflicts"
        ));
        Err(if claimed { error.pending() } else { error })
    }

    /// The stream folded up to its newest event: from its snapshot and the events after it when a
    /// usable snapshot is kept (and `trust_snapshot`), else from its start.
    async fn load(&self, stream: Uuid, trust_snapshot: bool) -> StoreResult<Loaded<A::State, A::Event>> {
        let a = &self.aggregate;
        let events = &self.backend.events;
        let snapshot = match a.snapshots() {
            Some(policy) if trust_snapshot => self.usable_snapshot(stream, policy).await,
            _ => None,
        };
        if let Some((snapshot, state)) = snapshot {
            let tail = decode(events.read_stream_after(stream, snapshot.version).await?)?;
            // The tail must continue the snapshot; anything else (a stream rewritten under it) is
            // answered from the events alone.
            if tail.first().is_none_or(|e| e.sequence == snapshot.version + 1) {
                let span = tracing::Span::current();
                span.record("events", tail.len() as i64);
                span.record("snapshot", snapshot.version as i64);
                return Ok(self.fold(state, snapshot.version, tail, snapshot.recent));
            }
            tracing::warn!(%stream, version = snapshot.version, "snapshot does not precede the stream's tail; ignored");
        }
        let all = decode(events.read_stream(stream).await?)?;
        tracing::Span::current().record("events", all.len() as i64);
        Ok(self.fold(A::State::default(), 0, all, Vec::new()))
    }

    fn fold(
        &self,
        mut state: A::State,
        base: u64,
        tail: Vec<EventEnvelope<A::Event>>,
        recent: Vec<RecentCommand>,
    ) -> Loaded<A::State, A::Event> {
        for event in &tail {
            self.aggregate.evolve(&mut state, event);
        }
        Loaded { state, version: base + tail.len() as u64, tail, base, recent }
    }

    /// The stream's snapshot and its state, if one is kept for this aggregate and code version. A
    /// snapshot that cannot be read or decoded is only a slower load.
    async fn usable_snapshot(&self, stream: Uuid, policy: SnapshotPolicy) -> Option<(Snapshot, A::State)> {
        let mut snapshot = match self.backend.events.load_snapshot(stream).await {
            Ok(found) => found?,
            Err(e) => {
                tracing::warn!(%stream, error = %e, "snapshot unreadable; folding the whole stream");
                return None;
            }
        };
        if snapshot.aggregate != policy.aggregate || snapshot.state_version != policy.version {
            return None;
        }
        // Decoded once, into the state: the JSON is not needed again.
        match serde_json::from_value(snapshot.state.take()) {
            Ok(state) => Some((snapshot, state)),
            Err(e) => {
                tracing::warn!(%stream, error = %e, "snapshot does not decode; folding the whole stream");
                None
            }
        }
    }

    /// The events `command` appended to the stream before (it is redelivered), or none: looked for
    /// among the events read, then among the commands the snapshot remembers.
    async fn already(
        &self,
        stream: Uuid,
        loaded: &Loaded<A::State, A::Event>,
        command: &CommandEnvelope<A::Command>,
    ) -> StoreResult<Vec<EventEnvelope<A::Event>>> {
        let id = command.command_id.0;
        let read: Vec<_> = loaded.tail.iter().filter(|e| e.causation_id == id).cloned().collect();
        let Some(earlier) = loaded.recent.iter().find(|r| r.causation_id == id).filter(|_| read.is_empty()) else {
            return Ok(read);
        };
        let events = decode(self.backend.events.read_stream_after(stream, earlier.first - 1).await?)?;
        Ok(events.into_iter().take_while(|e| e.sequence <= earlier.last).filter(|e| e.causation_id == id).collect())
    }

    /// Keeps a snapshot of `folded` when the aggregate takes them and the stream has grown by
    /// [`SnapshotPolicy::every`] events since the last one (`base`). Best effort: a failure is logged.
    async fn snapshot<'e>(
        &self,
        folded: &Folded<A::State>,
        base: u64,
        mut recent: Vec<RecentCommand>,
        since: impl Iterator<Item = &'e EventEnvelope<A::Event>>,
    ) {
        let Some(policy) = self.aggregate.snapshots() else { return };
        if folded.version < base + policy.every {
            return;
        }
        for event in since {
            match recent.last_mut() {
                Some(last) if last.causation_id == event.causation_id => last.last = event.sequence,
                _ => recent.push(RecentCommand {
                    causation_id: event.causation_id,
                    first: event.sequence,
                    last: event.sequence,
                }),
            }
        }
        let drop = recent.len().saturating_sub(RECENT_COMMANDS);
        recent.drain(..drop);
        let state = match serde_json::to_value(&folded.state) {
            Ok(state) => state,
            Err(e) => {
                return tracing::warn!(stream = %folded.stream, error = %e, "state does not serialise; no snapshot");
            }
        };
        let snapshot = Snapshot {
            stream: folded.stream,
            aggregate: policy.aggregate.to_owned(),
            state_version: policy.version,
            version: folded.version,
            state,
            recent,
            taken_at: self.backend.clock.now(),
        };
        match self.backend.events.save_snapshot(&snapshot).instrument(info_span!("snapshot")).await {
            Ok(()) => debug!(stream = %folded.stream, version = folded.version, "snapshot taken"),
            Err(e) => tracing::warn!(stream = %folded.stream, error = %e, "snapshot not kept"),
        }
    }

    async fn append(&self, version: u64, envelopes: &[EventEnvelope<A::Event>]) -> Result<(), AppendError> {
        if envelopes.is_empty() {
            return Ok(());
        }
        let wires: Vec<WireEvent> = envelopes.iter().map(EventEnvelope::to_wire).collect();
        self.backend.events.append(version, &wires).await
    }
}

/// Decodes stored events; one that does not decode is corrupt data.
fn decode<E: Message>(wires: Vec<WireEvent>) -> StoreResult<Vec<EventEnvelope<E>>> {
    wires
        .into_iter()
        .map(|w| {
            let (id, seq) = (w.aggregate_id, w.sequence);
            EventEnvelope::from_wire(w)
                .map_err(|e| StoreError::Corrupt(format!("stored event {id}#{seq} does not decode: {e}")))
        })
        .collect()
}

/// Wraps freshly decided events for appending to `stream` after `version`, caused by `command`.
fn envelopes<C, E: Message>(
    command: &CommandEnvelope<C>,
    stream: Uuid,
    version: u64,
    events: Vec<E>,
    now: DateTime<Utc>,
) -> Vec<EventEnvelope<E>> {
    events
        .into_iter()
        .enumerate()
        .map(|(i, event)| EventEnvelope {
            event_id: EventId::new(),
            aggregate_id: stream,
            sequence: version + 1 + i as u64,
            correlation_id: command.correlation_id,
            causation_id: command.command_id.0,
            occurred_at: now,
            event,
        })
        .collect()
}

/// One aggregate's commands under the consume loop: a record whose command already has an outcome
/// is skipped (redelivery); any other is executed and its outcome recorded before the record is let
/// go.
#[derive(Debug, Clone)]
pub struct CommandHandler<A> {
    executor: Arc<Executor<A>>,
}

impl<A: Aggregate> CommandHandler<A> {
    pub fn new(aggregate: A, backend: Backend) -> Self {
        Self { executor: Arc::new(Executor::new(aggregate, backend)) }
    }

    pub fn executor(&self) -> &Executor<A> {
        &self.executor
    }

    /// Executes the command and says what it came to, without recording the outcome (its deferred
    /// effects are left in `deferred`); a failure is classified for the consume loop.
    pub async fn process(
        &self,
        command: &CommandEnvelope<A::Command>,
        deferred: &mut Deferred,
    ) -> Result<Outcome, HandleError> {
        match self.executor.execute_deferred(command, deferred).await {
            Ok(events) => Ok(Outcome::Accepted(self.executor.aggregate.reported(&events))),
            Err(ProcessError::Rejected(rejection)) => Ok(Outcome::Rejected(rejection)),
            Err(ProcessError::EffectsPending(e)) => Err(HandleError::Unfinished(e)),
            Err(ProcessError::Unavailable(e)) => Err(HandleError::Unavailable(e)),
            Err(ProcessError::Failed(e)) => Err(HandleError::Failed(e)),
        }
    }
}

#[async_trait]
impl<A: Aggregate> MessageHandler for CommandHandler<A> {
    async fn handle_deferred(
        &self,
        message: &ridehail_ports::IncomingMessage,
        deferred: &mut Deferred,
    ) -> Result<(), HandleError> {
        let command = decode_command::<A::Command>(message)?;
        self.executor.aggregate.accepts(&message.topic, &command).map_err(HandleError::Poison)?;
        let backend = &self.executor.backend;
        let seen = backend.commands.get(command.command_id).await.map_err(store_error)?;
        // Done already (a redelivery), unless it failed: a failed command is one an operator redrove
        // from the dead letters, and it runs again (its own events, if any, make that harmless).
        if seen.is_some_and(|s| s.is_final() && s.state != CommandState::Failed) {
            return Ok(());
        }
        let outcome = self.process(&command, deferred).await?;
        let resource = self.executor.aggregate.resource(command.aggregate_id);
        // Recorded after the command's other effects, before the record is let go.
        deferred.record(CommandStatus::finished(&command, resource, outcome, backend.clock.now()));
        Ok(())
    }

    async fn flush(&self, deferred: &mut Deferred) -> Result<(), HandleError> {
        deferred.flush(&self.executor.backend).await.map_err(|e| HandleError::Unfinished(e.into()))
    }

    /// A dead-lettered command gets its final `failed` outcome, so a client following it learns so.
    /// Known from its pending status (recorded by the edge) or, for a command no edge submitted (a
    /// timer's), from the record itself.
    async fn dead_lettered(
        &self,
        message: &ridehail_ports::IncomingMessage,
        reason: &str,
        poison: bool,
    ) -> anyhow::Result<()> {
        let backend = &self.executor.backend;
        let failure = Failure::of(reason, poison);
        let decoded = decode_command::<A::Command>(message).ok();
        let command_id = match &decoded {
            Some(command) => command.command_id,
            None => match crate::records::command_id_of(&message.payload) {
                Some(id) => id,
                None => return Ok(()), // Not even an id: nothing to tell anyone.
            },
        };
        let now = backend.clock.now();
        let status = match (backend.commands.get(command_id).await?, decoded) {
            (Some(seen), _) if seen.is_final() => return Ok(()),
            (Some(pending), _) => pending.failed(failure, now),
            (None, Some(command)) => {
                let resource = self.executor.aggregate.resource(command.aggregate_id);
                CommandStatus::pending(&command, resource).failed(failure, now)
            }
            (None, None) => return Ok(()),
        };
        backend.commands.record(&status).await?;
        Ok(())
    }
}

fn store_error(error: StoreError) -> HandleError {
    match error {
        StoreError::Unavailable(e) => HandleError::Unavailable(e),
        corrupt @ StoreError::Corrupt(_) => HandleError::Failed(corrupt.into()),
    }
}
