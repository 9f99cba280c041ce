//! Embedded durable timers.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::params;

use crate::sqlite::{Db, exec, from_millis, millis, millis_ceil};
use ridehail_ports::StoreResult;
use ridehail_ports::{Timer, TimerStore};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS timers (
    id TEXT PRIMARY KEY, due_at INTEGER NOT NULL, topic TEXT NOT NULL, key TEXT NOT NULL,
    headers TEXT NOT NULL, payload BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS timers_by_due ON timers (due_at);
";

#[derive(Debug, Clone)]
pub struct EmbeddedTimers {
    db: Db,
}

impl EmbeddedTimers {
    pub fn new(db: Db) -> anyhow::Result<Self> {
        db.migrate(SCHEMA)?;
        Ok(Self { db })
    }
}

#[async_trait]
impl TimerStore for EmbeddedTimers {
    async fn schedule(&self, timer: &Timer) -> StoreResult<()> {
        let headers = serde_json::to_string(&timer.headers)?;
        self.db.with(|conn| {
            exec(conn,
                "INSERT OR IGNORE INTO timers (id, due_at, topic, key, headers, payload) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![timer.id, millis_ceil(timer.due_at), timer.topic, timer.key, headers, timer.payload],
            )?;
            Ok(())
        })
    }

    async fn cancel(&self, id: &str) -> StoreResult<()> {
        self.db.with(|conn| {
            exec(conn, "DELETE FROM timers WHERE id = ?1", params![id])?;
            Ok(())
        })
    }

    async fn due(&self, now: DateTime<Utc>, limit: usize) -> StoreResult<Vec<Timer>> {
        self.db.with(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, due_at, topic, key, headers, payload FROM timers WHERE due_at <= ?1 ORDER BY due_at LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![millis(now), limit as i64], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, Vec<u8>>(5)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (id, due_at, topic, key, headers, payload) = row?;
                out.push(Timer { id, due_at: from_millis(due_at), topic, key, headers: serde_json::from_str(&headers)?, payload });
            }
            Ok(out)
        })
    }

    async fn ping(&self) -> StoreResult<()> {
        self.db.ping()
    }
}
