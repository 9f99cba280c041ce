use crate::error::StoreResult;
use async_trait::async_trait;
use ridehail_events::WireEvent;
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

    /// Everything, in one deterministic order that respects each stream's sequence, for replay.
    async fn read_all(&self, after: Option<&str>, limit: usize) -> StoreResult<ReadAllPage>;

    /// The position of the newest event in [`EventStore::read_all`]'s order (0 when there is none):
    /// how far behind the head a reader at a given position is.
    async fn head(&self) -> StoreResult<u64>;

    async fn ping(&self) -> StoreResult<()>;
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
