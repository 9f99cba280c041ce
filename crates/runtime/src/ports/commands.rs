use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ridehail_events::{CommandId, CorrelationId};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandState {
    Pending,
    Accepted,
    Rejected,
}

/// How a rejection maps to a client's expectations (and to an HTTP status at the edge).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    pub kind: RejectionKind,
    /// Stable machine-readable code, e.g. `ride_not_offered_to_driver`.
    pub code: String,
    /// Human-readable explanation without personal data.
    pub detail: String,
}

/// What happened to a submitted command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandStatus {
    pub command_id: CommandId,
    pub correlation_id: CorrelationId,
    pub command_type: String,
    pub aggregate_id: Uuid,
    /// The user who submitted it (only they may read it); `None` for system commands and sign-ups.
    pub issued_by: Option<Uuid>,
    pub state: CommandState,
    pub rejection: Option<Rejection>,
    /// Types of the events the command produced.
    pub events: Vec<String>,
    /// Where to read the affected resource.
    pub resource: Option<String>,
    pub submitted_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

/// Command outcomes, for `GET /v1/commands/{id}` and `Prefer: wait`.
#[async_trait]
pub trait CommandStatusStore: Send + Sync + std::fmt::Debug {
    /// Stores the status. A final status (accepted or rejected) replaces a pending one; a pending
    /// status never replaces a final one.
    async fn record(&self, status: &CommandStatus) -> anyhow::Result<()>;

    async fn get(&self, command_id: CommandId) -> anyhow::Result<Option<CommandStatus>>;

    /// Waits up to `timeout` for the command to reach a final state; returns the latest status seen.
    /// Adapters implement it with [`CompletionWaiters`].
    async fn wait_final(&self, command_id: CommandId, timeout: Duration) -> anyhow::Result<Option<CommandStatus>>;

    async fn ping(&self) -> anyhow::Result<()>;
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
    ) -> anyhow::Result<Option<CommandStatus>> {
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
