use crate::error::StoreResult;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ridehail_events::WireEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Someone appended to the stream since it was read: reload and decide again.
    #[error("stream {aggregate_id} is at version {actual}, expected {expected}")]
    Conflict { aggregate_id: Uuid, expected: u64, actual: u64 },
    /// The batch itself is wrong (mixed streams, gaps in sequences): a bug in the caller.
    #[error("invalid append: {0}")]
    Invalid(String),
    #[error("event store unavailable: {0:#}")]
    Unavailable(#[from] anyhow::Error),
}

impl From<crate::StoreError> for AppendError {
    fn from(error: crate::StoreError) -> Self {
        match error {
            crate::StoreError::Unavailable(e) => Self::Unavailable(e),
            crate::StoreError::Corrupt(what) => Self::Invalid(what),
        }
    }
}

/// One page of the whole history in its global order.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadAllPage {
    pub events: Vec<WireEvent>,
    /// Pass back to continue after the last event of this page; `None` when the page was empty. It is
    /// the last event's position in decimal, as [`EventStore::head`] counts them.
    pub next: Option<String>,
}

/// Append-only history of every aggregate, the source of truth.
#[async_trait]
pub trait EventStore: Send + Sync + std::fmt::Debug {
    /// Appends `events` (one stream, sequences `expected_version + 1 ..`) atomically, or fails with
    /// [`AppendError::Conflict`] when the stream is not at `expected_version`.
    async fn append(&self, expected_version: u64, events: &[WireEvent]) -> Result<(), AppendError>;

    /// The stream in sequence order (empty for an unknown aggregate).
    async fn read_stream(&self, aggregate_id: Uuid) -> StoreResult<Vec<WireEvent>>;

    /// The stream's events after sequence `after`, in sequence order (the tail a snapshot at `after`
    /// leaves to fold).
    async fn read_stream_after(&self, aggregate_id: Uuid, after: u64) -> StoreResult<Vec<WireEvent>>;

    /// The snapshot kept of a stream, if any.
    async fn load_snapshot(&self, stream: Uuid) -> StoreResult<Option<Snapshot>>;

    /// Keeps `snapshot` as the stream's, unless the one kept already is of a later version. A
    /// snapshot is derived data: losing one, or keeping an older one, only costs a longer load.
    async fn save_snapshot(&self, snapshot: &Snapshot) -> StoreResult<()>;

    /// Everything, in one deterministic order that respects each stream's sequence, for replay.
    async fn read_all(&self, after: Option<&str>, limit: usize) -> StoreResult<ReadAllPage>;

    /// The position of the newest event in [`EventStore::read_all`]'s order (0 when there is none):
    /// how far behind the head a reader at a given position is.
    async fn head(&self) -> StoreResult<u64>;

    async fn ping(&self) -> StoreResult<()>;
}

/// A stream's fold at one version, kept beside the stream so that loading it reads only the events
/// that follow (docs/snapshots.md). Written by the executor, never by hand.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub stream: Uuid,
    /// The aggregate whose fold this is.
    pub aggregate: String,
    /// The version of the fold's code: a snapshot of another version is ignored and taken again.
    pub state_version: u32,
    /// The stream's last event folded in.
    pub version: u64,
    /// The fold, as the aggregate serialises it.
    pub state: serde_json::Value,
    /// The newest commands whose events are folded in, oldest first: a redelivered command is
    /// recognised from them without reading the stream from its start.
    pub recent: Vec<RecentCommand>,
    pub taken_at: DateTime<Utc>,
}

/// The events one command appended to a stream: sequences `first..=last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentCommand {
    pub causation_id: Uuid,
    pub first: u64,
    pub last: u64,
}

/// Checks what every adapter must refuse before touching storage; returns the stream id.
pub fn validate_batch(expected_version: u64, events: &[WireEvent]) -> Result<Uuid, AppendError> {
    let first = events.first().ok_or_else(|| AppendError::Invalid("empty batch".into()))?;
    for (i, event) in events.iter().enumerate() {
        if event.aggregate_id != first.aggregate_id {
            return Err(AppendError::Invalid("a batch must hold one stream".into()));
        }
        if event.sequence != expected_version + 1 + i as u64 {
            return Err(AppendError::Invalid(format!(
                "event {i} has sequence {}, expected {}",
                event.sequence,
                expected_version + 1 + i as u64
            )));
        }
    }
    Ok(first.aggregate_id)
}
