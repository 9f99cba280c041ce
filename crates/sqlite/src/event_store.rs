//! The embedded event store: one row per event; `(aggregate_id, sequence)` is unique, so a concurrent
//! append surfaces as a typed conflict; the global order for replay is the insertion position (the
//! rowid: rows are never deleted, so it only grows).

use std::path::Path;

use async_trait::async_trait;
use ridehail_events::WireEvent;
use rusqlite::{OptionalExtension as _, TransactionBehavior, params};
use uuid::Uuid;

use crate::sqlite::{Db, one};
use ridehail_ports::validate_batch;
use ridehail_ports::{AppendError, EventStore, ReadAllPage, Snapshot};
use ridehail_ports::{StoreError, StoreResult};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    position INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    aggregate_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    body TEXT NOT NULL,
    UNIQUE (aggregate_id, sequence)
);
CREATE TABLE IF NOT EXISTS snapshots (
    stream TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    state_version INTEGER NOT NULL,
    body TEXT NOT NULL
) WITHOUT ROWID;
";

#[derive(Debug, Clone)]
pub struct EmbeddedEventStore {
    db: Db,
}

impl EmbeddedEventStore {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let db = Db::open(path)?;
        db.migrate(SCHEMA)?;
        Ok(Self { db })
    }
}

fn current_version(conn: &rusqlite::Connection, aggregate_id: &str) -> rusqlite::Result<u64> {
    // A bare MAX is answered from the (aggregate_id, sequence) index's last entry.
    one(conn, "SELECT MAX(sequence) FROM events WHERE aggregate_id = ?1", params![aggregate_id], |r| {
        Ok(r.get::<_, Option<u64>>(0)?.unwrap_or(0))
    })
}

#[async_trait]
impl EventStore for EmbeddedEventStore {
    async fn append(&self, expected_version: u64, events: &[WireEvent]) -> Result<(), AppendError> {
        let aggregate_id = validate_batch(expected_version, events)?;
        let id = aggregate_id.to_string();
        let mut conflict = None;
        self.db.with(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let actual = current_version(&tx, &id)?;
            if actual != expected_version {
                conflict = Some(actual);
                return Ok(());
            }
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT INTO events (event_id, aggregate_id, sequence, body) VALUES (?1, ?2, ?3, ?4)",
                )?;
                for event in events {
                    stmt.execute(params![
                        event.event_id.to_string(),
                        id,
                        event.sequence,
                        serde_json::to_string(event)?
                    ])?;
                }
            }
            tx.commit()?;
            Ok(())
        })?;
        match conflict {
            Some(actual) => Err(AppendError::Conflict { aggregate_id, expected: expected_version, actual }),
            None => Ok(()),
        }
    }

    async fn read_stream(&self, aggregate_id: Uuid) -> StoreResult<Vec<WireEvent>> {
        self.read_stream_after(aggregate_id, 0).await
    }

    async fn read_stream_after(&self, aggregate_id: Uuid, after: u64) -> StoreResult<Vec<WireEvent>> {
        self.db.with(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT body FROM events WHERE aggregate_id = ?1 AND sequence > ?2 ORDER BY sequence",
            )?;
            let rows = stmt.query_map(params![aggregate_id.to_string(), after], |r| r.get::<_, String>(0))?;
            let mut out = Vec::new();
            for body in rows {
                out.push(serde_json::from_str(&body?)?);
            }
            Ok(out)
        })
    }

    async fn load_snapshot(&self, stream: Uuid) -> StoreResult<Option<Snapshot>> {
        self.db.with(|conn| {
            let mut stmt = conn.prepare_cached("SELECT body FROM snapshots WHERE stream = ?1")?;
            let body: Option<String> = stmt.query_row(params![stream.to_string()], |r| r.get(0)).optional()?;
            Ok(body.map(|b| serde_json::from_str(&b)).transpose()?)
        })
    }

    async fn save_snapshot(&self, snapshot: &Snapshot) -> StoreResult<()> {
        let body = serde_json::to_string(snapshot).map_err(|e| StoreError::corrupt(e.to_string()))?;
        self.db.with(|conn| {
            // A snapshot of another code version is replaced whatever its version: it is of no use.
            conn.prepare_cached(
                "INSERT INTO snapshots (stream, version, state_version, body) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (stream) DO UPDATE SET
                     version = excluded.version, state_version = excluded.state_version, body = excluded.body
                 WHERE excluded.version > snapshots.version OR excluded.state_version != snapshots.state_version",
            )?
            .execute(params![
                snapshot.stream.to_string(),
                snapshot.version,
                snapshot.state_version,
                body
            ])?;
            Ok(())
        })
    }

    async fn read_all(&self, after: Option<&str>, limit: usize) -> StoreResult<ReadAllPage> {
        let after: i64 = match after {
            Some(token) => {
                token.parse().map_err(|_| StoreError::corrupt(format!("invalid read-all position {token:?}")))?
            }
            None => 0,
        };
        self.db.with(|conn| {
            let mut stmt = conn
                .prepare_cached("SELECT position, body FROM events WHERE position > ?1 ORDER BY position LIMIT ?2")?;
            let rows =
                stmt.query_map(params![after, limit as i64], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
            let mut events = Vec::new();
            let mut last = None;
            for row in rows {
                let (position, body) = row?;
                events.push(serde_json::from_str(&body)?);
                last = Some(position);
            }
            Ok(ReadAllPage { events, next: last.map(|p| p.to_string()) })
        })
    }

    async fn head(&self) -> StoreResult<u64> {
        self.db.with(|conn| Ok(one(conn, "SELECT COALESCE(MAX(position), 0) FROM events", [], |r| r.get(0))?))
    }

    async fn ping(&self) -> StoreResult<()> {
        self.db.ping()
    }
}
