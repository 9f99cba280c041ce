//! Embedded idempotency keys.

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use rusqlite::{OptionalExtension, TransactionBehavior, params};

use crate::sqlite::{Db, exec, millis, one};
use ridehail_ports::StoreResult;
use ridehail_ports::{IdempotencyClaim, IdempotencyStore, StoredResponse};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS idempotency_keys (
    scope TEXT NOT NULL, key TEXT NOT NULL, fingerprint TEXT NOT NULL, created_at INTEGER NOT NULL,
    response TEXT,
    PRIMARY KEY (scope, key)
) WITHOUT ROWID;
";

#[derive(Debug, Clone)]
pub struct EmbeddedIdempotency {
    db: Db,
}

impl EmbeddedIdempotency {
    pub fn new(db: Db) -> anyhow::Result<Self> {
        db.migrate(SCHEMA)?;
        Ok(Self { db })
    }
}

#[async_trait]
impl IdempotencyStore for EmbeddedIdempotency {
    async fn claim(
        &self,
        scope: &str,
        key: &str,
        fingerprint: &str,
        now: DateTime<Utc>,
        ttl: Duration,
    ) -> StoreResult<IdempotencyClaim> {
        self.db.with(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let existing: Option<(String, i64, Option<String>)> = one(&tx,
                    "SELECT fingerprint, created_at, response FROM idempotency_keys WHERE scope = ?1 AND key = ?2",
                    params![scope, key],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            let claim = match existing {
                Some((_, created_at, _)) if created_at < millis(now - ttl) => None,
                Some((stored, _, _)) if stored != fingerprint => Some(IdempotencyClaim::Mismatch),
                Some((_, _, Some(response))) => Some(IdempotencyClaim::Replay(serde_json::from_str(&response)?)),
                Some((_, _, None)) => Some(IdempotencyClaim::InProgress),
                None => None,
            };
            if let Some(claim) = claim {
                return Ok(claim);
            }
            exec(&tx,
                "INSERT INTO idempotency_keys (scope, key, fingerprint, created_at, response) VALUES (?1, ?2, ?3, ?4, NULL)
                 ON CONFLICT (scope, key) DO UPDATE SET fingerprint = excluded.fingerprint,
                    created_at = excluded.created_at, response = NULL",
                params![scope, key, fingerprint, millis(now)],
            )?;
            tx.commit()?;
            Ok(IdempotencyClaim::Claimed)
        })
    }

    async fn complete(&self, scope: &str, key: &str, response: &StoredResponse) -> StoreResult<()> {
        let body = serde_json::to_string(response)?;
        self.db.with(|conn| {
            exec(
                conn,
                "UPDATE idempotency_keys SET response = ?3 WHERE scope = ?1 AND key = ?2",
                params![scope, key, body],
            )?;
            Ok(())
        })
    }

    async fn release(&self, scope: &str, key: &str) -> StoreResult<()> {
        self.db.with(|conn| {
            exec(
                conn,
                "DELETE FROM idempotency_keys WHERE scope = ?1 AND key = ?2 AND response IS NULL",
                params![scope, key],
            )?;
            Ok(())
        })
    }

    async fn ping(&self) -> StoreResult<()> {
        self.db.ping()
    }
}
