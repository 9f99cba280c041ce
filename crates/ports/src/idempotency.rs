use crate::error::StoreResult;
use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

/// The response first given to a request, replayed for its retries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyClaim {
    /// First time this key is seen: go ahead, then `complete` it.
    Claimed,
    /// Another request with this key is being processed.
    InProgress,
    /// Same key, same request: here is the first response.
    Replay(StoredResponse),
    /// Same key, different request.
    Mismatch,
}

/// `Idempotency-Key` bookkeeping, scoped per caller.
#[async_trait]
pub trait IdempotencyStore: Send + Sync + std::fmt::Debug {
    /// Claims `key` for a request whose body/route hash is `fingerprint`. Keys older than `ttl` are
    /// forgotten.
    async fn claim(
        &self,
        scope: &str,
        key: &str,
        fingerprint: &str,
        now: DateTime<Utc>,
        ttl: Duration,
    ) -> StoreResult<IdempotencyClaim>;

    async fn complete(&self, scope: &str, key: &str, response: &StoredResponse) -> StoreResult<()>;

    /// Forgets an unfinished claim (the request failed before producing anything).
    async fn release(&self, scope: &str, key: &str) -> StoreResult<()>;

    async fn ping(&self) -> StoreResult<()>;
}
