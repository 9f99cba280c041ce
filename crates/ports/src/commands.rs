use crate::error::StoreResult;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ridehail_events::{Actor, CommandEnvelope, CommandId, CorrelationId, Message};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CommandState {
    Pending,
    Accepted,
    Rejected,
    /// The command could not be processed (dead-lettered); operators can redrive it.
    Failed,
}

/// Why a command failed: what a client may read (the full reason is on the dead letter and in the
/// logs, which may name internal hosts and data).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Failure {
    /// `poison_message` (it can never be processed as sent) or `processing_failed`.
    pub code: String,
    pub detail: String,
}

impl Failure {
    /// The client's view of a dead letter's `reason`.
    pub fn of(reason: &str, poison: bool) -> Self {
        if poison {
            let detail = reason.strip_prefix("poison: ").unwrap_or(reason);
            Self { code: "poison_message".into(), detail: format!("the command cannot be processed: {detail}") }
        } else {
            Self {
                code: "processing_failed".into(),
                detail: "the command failed repeatedly and was set aside for operators".into(),
            }
        }
    }
}

/// How a rejection maps to a client's expectations (and to an HTTP status at the edge).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RejectionKind {
    /// The target does not exist (or is not the caller's).
    NotFound,
    /// Not allowed in the target's current state.
    Conflict,
    /// The request itself is unacceptable.
    Invalid,
    /// The caller may not do this.
    Forbidden,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Rejection {
    pub kind: RejectionKind,
    /// Stable machine-readable code, e.g. `ride_not_offered_to_driver`.
    pub code: String,
    /// Human-readable explanation without personal data.
    pub detail: String,
}

/// What happened to a submitted command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CommandStatus {
    pub command_id: CommandId,
    pub correlation_id: CorrelationId,
    pub command_type: String,
    pub aggregate_id: Uuid,
    /// The user who submitted it (only they may read it); `None` for system commands and sign-ups.
    pub issued_by: Option<Uuid>,
    pub state: CommandState,
    pub rejection: Option<Rejection>,
    /// Why the command failed (state `failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// Types of the events the command produced.
    pub events: Vec<String>,
    /// Where to read the affected resource.
    pub resource: Option<String>,
    pub submitted_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

/// What a command acts on: where its client reads the result once the command is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Ride(Uuid),
    /// A user's own profile (only that user can read it).
    User(Uuid),
}

impl Resource {
    /// The resource's URL on the edge (the one place it is spelled).
    pub fn url(&self) -> String {
        match self {
            Self::Ride(id) => format!("/v1/rides/{id}"),
            Self::User(_) => "/v1/me".to_owned(),
        }
    }
}

/// What a command came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted; the types of the events it produced (possibly none: nothing to change).
    Accepted(Vec<String>),
    Rejected(Rejection),
}

impl CommandStatus {
    /// The status of `command` as it is submitted, before any worker saw it.
    pub fn pending<C: Message>(command: &CommandEnvelope<C>, resource: Resource) -> Self {
        Self {
            command_id: command.command_id,
            correlation_id: command.correlation_id,
            command_type: command.command.type_name().to_owned(),
            aggregate_id: command.aggregate_id,
            issued_by: match &command.actor {
                Actor::User { user_id, .. } => Some(*user_id),
                _ => None,
            },
            state: CommandState::Pending,
            rejection: None,
            failure: None,
            events: Vec::new(),
            resource: Some(resource.url()),
            submitted_at: command.issued_at,
            completed_at: None,
        }
    }

    /// The final status of `command`, which came to `outcome` at `now`.
    pub fn finished<C: Message>(
        command: &CommandEnvelope<C>,
        resource: Resource,
        outcome: Outcome,
        now: DateTime<Utc>,
    ) -> Self {
        let (state, rejection, events) = match outcome {
            Outcome::Accepted(events) => (CommandState::Accepted, None, events),
            Outcome::Rejected(rejection) => (CommandState::Rejected, Some(rejection), Vec::new()),
        };
        Self { state, rejection, events, completed_at: Some(now), ..Self::pending(command, resource) }
    }

    /// The same command, failed at `now`.
    pub fn failed(self, failure: Failure, now: DateTime<Utc>) -> Self {
        Self { state: CommandState::Failed, failure: Some(failure), completed_at: Some(now), ..self }
    }

    /// Whether the command reached its final state.
    pub fn is_final(&self) -> bool {
        self.state != CommandState::Pending
    }
}

/// Command outcomes, for `GET /v1/commands/{id}` and `Prefer: wait`.
#[async_trait]
pub trait CommandStatusStore: Send + Sync + std::fmt::Debug {
    /// Stores the status. A final status (accepted or rejected) replaces a pending one; a pending
    /// status never replaces a final one.
    async fn record(&self, status: &CommandStatus) -> StoreResult<()>;

    /// [`CommandStatusStore::record`] of each status in order, as one batch where the store can (a
    /// worker records the outcomes of a consumer batch at once). When it fails, any prefix of the
    /// statuses may be recorded: recording them again is harmless.
    async fn record_many(&self, statuses: &[CommandStatus]) -> StoreResult<()> {
        for status in statuses {
            self.record(status).await?;
        }
        Ok(())
    }

    async fn get(&self, command_id: CommandId) -> StoreResult<Option<CommandStatus>>;

    /// Waits up to `timeout` for the command to reach a final state; returns the latest status seen.
    /// Adapters implement it with [`CompletionWaiters`].
    async fn wait_final(&self, command_id: CommandId, timeout: Duration) -> StoreResult<Option<CommandStatus>>;

    async fn ping(&self) -> StoreResult<()>;
}

/// The requests of this process waiting for commands to complete, by command id: what an adapter
/// needs for a [`CommandStatusStore::wait_final`] woken by completions instead of polling alone.
/// A completion wakes only the requests waiting for that command.
#[derive(Debug, Default)]
pub struct CompletionWaiters(
    std::sync::Mutex<std::collections::HashMap<CommandId, std::sync::Arc<tokio::sync::Notify>>>,
);

/// One waiting request; unregisters when done, or when the request is dropped half-way.
struct Registration<'a> {
    waiters: &'a CompletionWaiters,
    command_id: CommandId,
    notify: std::sync::Arc<tokio::sync::Notify>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut waiters = self.waiters.0.lock().unwrap_or_else(|e| e.into_inner());
        // Drop the entry when only the map and this waiter hold it.
        let last = |n: &std::sync::Arc<tokio::sync::Notify>| {
            std::sync::Arc::ptr_eq(n, &self.notify) && std::sync::Arc::strong_count(n) <= 2
        };
        if waiters.get(&self.command_id).is_some_and(last) {
            waiters.remove(&self.command_id);
        }
    }
}

impl CompletionWaiters {
    /// Wakes the requests waiting for `command_id` (call it once its final status is stored).
    pub fn wake(&self, command_id: CommandId) {
        let notify = self.0.lock().unwrap_or_else(|e| e.into_inner()).get(&command_id).cloned();
        if let Some(notify) = notify {
            notify.notify_waiters();
        }
    }

    /// How many commands have requests waiting for them.
    pub fn waiting(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Wakes every waiting request (e.g. when completions may have been missed).
    pub fn wake_all(&self) {
        for notify in self.0.lock().unwrap_or_else(|e| e.into_inner()).values() {
            notify.notify_waiters();
        }
    }

    /// `wait_final` for `store`: reads the status, and again on each wake-up for this command or
    /// every `poll_interval` (completions recorded by another process), until final or `timeout`.
    pub async fn wait_final<S: CommandStatusStore + ?Sized>(
        &self,
        store: &S,
        command_id: CommandId,
        timeout: Duration,
        poll_interval: Duration,
    ) -> StoreResult<Option<CommandStatus>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let notify = self.0.lock().unwrap_or_else(|e| e.into_inner()).entry(command_id).or_default().clone();
        let registration = Registration { waiters: self, command_id, notify };
        loop {
            let notified = registration.notify.notified();
            tokio::pin!(notified);
            // Registered before reading, so a completion between the read and the wait is not lost.
            notified.as_mut().enable();
            let status = store.get(command_id).await?;
            if status.as_ref().is_some_and(|s| s.state != CommandState::Pending) {
                return Ok(status);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(status);
            }
            let _ = tokio::time::timeout((deadline - now).min(poll_interval), notified).await;
        }
    }
}
