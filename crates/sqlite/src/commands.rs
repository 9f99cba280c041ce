//! Embedded command status with in-process wake-ups for `wait_final`: each waiter registers for
//! its own command id, so a completion wakes only the requests waiting for that command.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ridehail_events::CommandId;
use rusqlite::{OptionalExtension, params};

use crate::sqlite::{Db, exec};
use ridehail_ports::{CommandState, CommandStatus, CommandStatusStore, CompletionWaiters};
use ridehail_ports::{StoreError, StoreResult};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS command_status (command_id TEXT PRIMARY KEY, final INTEGER NOT NULL, body TEXT NOT NULL) WITHOUT ROWID;
";

#[derive(Debug, Clone)]
pub struct EmbeddedCommandStatus {
    db: Db,
    waiters: Arc<CompletionWaiters>,
}

impl EmbeddedCommandStatus {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        Self::new(Db::open(path)?)
    }

    pub fn new(db: Db) -> anyhow::Result<Self> {
        db.migrate(SCHEMA)?;
        Ok(Self { db, waiters: Arc::default() })
    }
}

#[async_trait]
impl CommandStatusStore for EmbeddedCommandStatus {
    async fn record(&self, status: &CommandStatus) -> StoreResult<()> {
        self.record_many(std::slice::from_ref(status)).await
    }

    /// One transaction for the batch; the waiters of its final statuses are woken after the commit.
    async fn record_many(&self, statuses: &[CommandStatus]) -> StoreResult<()> {
        let rows = statuses
            .iter()
            .map(|s| Ok((s.command_id, s.state != CommandState::Pending, serde_json::to_string(s)?)))
            .collect::<StoreResult<Vec<_>>>()?;
        self.db.with(|conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            for (command_id, is_final, body) in &rows {
                exec(
                    &tx,
                    "INSERT INTO command_status (command_id, final, body) VALUES (?1, ?2, ?3)
                     ON CONFLICT (command_id) DO UPDATE SET final = excluded.final, body = excluded.body
                     WHERE excluded.final = 1",
                    params![command_id.to_string(), is_final, body],
                )?;
            }
            tx.commit()?;
            Ok(())
        })?;
        for (command_id, ..) in rows.iter().filter(|(_, is_final, _)| *is_final) {
            self.waiters.wake(*command_id);
        }
        Ok(())
    }

    async fn get(&self, command_id: CommandId) -> StoreResult<Option<CommandStatus>> {
        let body: Option<String> = self.db.with(|conn| {
            Ok(conn
                .prepare_cached("SELECT body FROM command_status WHERE command_id = ?1")?
                .query_row(params![command_id.to_string()], |r| r.get(0))
                .optional()?)
        })?;
        body.map(|b| {
            serde_json::from_str(&b)
                .map_err(|e| StoreError::corrupt(format!("stored command status does not decode: {e}")))
        })
        .transpose()
    }

    async fn wait_final(&self, command_id: CommandId, timeout: Duration) -> StoreResult<Option<CommandStatus>> {
        // Also looks again now and then: another process may complete the command.
        self.waiters.wait_final(self, command_id, timeout, Duration::from_millis(100)).await
    }

    async fn ping(&self) -> StoreResult<()> {
        self.db.ping()
    }
}
