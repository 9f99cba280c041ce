use crate::error::StoreResult;
use async_trait::async_trait;
use chrono::{DateTime, Utc};

/// A record to publish at `due_at` (e.g. "this offer expired").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timer {
    /// Unique; scheduling the same id twice keeps one timer.
    pub id: String,
    pub due_at: DateTime<Utc>,
    pub topic: String,
    pub key: String,
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
}

/// Durable timers: they fire after a restart too.
#[async_trait]
pub trait TimerStore: Send + Sync + std::fmt::Debug {
    async fn schedule(&self, timer: &Timer) -> StoreResult<()>;
    async fn cancel(&self, id: &str) -> StoreResult<()>;
    /// Timers due at `now`, earliest first.
    async fn due(&self, now: DateTime<Utc>, limit: usize) -> StoreResult<Vec<Timer>>;
    async fn ping(&self) -> StoreResult<()>;
}
