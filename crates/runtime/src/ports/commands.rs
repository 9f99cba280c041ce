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
    async fn wait_final(&self, command_id: CommandId, timeout: Duration) -> anyhow::Result<Option<CommandStatus>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pause = Duration::from_millis(2);
        loop {
            let status = self.get(command_id).await?;
            let is_final = status.as_ref().is_some_and(|s| s.state != CommandState::Pending);
            if is_final || tokio::time::Instant::now() + pause > deadline {
                return Ok(status);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    async fn ping(&self) -> anyhow::Result<()>;
}
