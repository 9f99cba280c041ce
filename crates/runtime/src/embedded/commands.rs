//! Embedded command status with in-process wake-ups for `wait_final`: each waiter registers for
//! its own command id, so a completion wakes only the requests waiting for that command.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ridehail_events::CommandId;
use rusqlite::{OptionalExtension, params};
use tokio::sync::Notify;

use super::sqlite::{Db, exec};
use crate::ports::{CommandState, CommandStatus, CommandStatusStore};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS command_status (command_id TEXT PRIMARY KEY, final INTEGER NOT NULL, body TEXT NOT NULL) WITHOUT ROWID;
";

#[derive(Debug, Clone)]
pub struct EmbeddedCommandStatus {
    db: Db,
    waiters: Arc<Mutex<HashMap<CommandId, Arc<Notify>>>>,
}

impl EmbeddedCommandStatus {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        Self::new(Db::open(path)?)
    }

    pub fn new(db: Db) -> anyhow::Result<Self> {
        db.migrate(SCHEMA)?;
        Ok(Self { db, waiters: Arc::default() })
    }

    fn waiter(&self, command_id: CommandId) -> Arc<Notify> {
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        waiters.entry(command_id).or_default().clone()
    }

    fn forget_waiter(&self, command_id: CommandId, notify: &Arc<Notify>) {
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        // Drop the entry when only the map and this waiter hold it.
        if waiters.get(&command_id).is_some_and(|n| Arc::ptr_eq(n, notify) && Arc::strong_count(n) <= 2) {
            waiters.remove(&command_id);
        }
    }
}

struct Waiter<'a> {
    store: &'a EmbeddedCommandStatus,
    command_id: CommandId,
    notify: Arc<Notify>,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.store.forget_waiter(self.command_id, &self.notify);
    }
}

#[async_trait]
impl CommandStatusStore for EmbeddedCommandStatus {
    async fn record(&self, status: &CommandStatus) -> anyhow::Result<()> {
        let is_final = status.state != CommandState::Pending;
        let body = serde_json::to_string(status)?;
        self.db.with(|conn| {
            exec(
                conn,
                "INSERT INTO command_status (command_id, final, body) VALUES (?1, ?2, ?3)
                 ON CONFLICT (command_id) DO UPDATE SET final = excluded.final, body = excluded.body
                 WHERE excluded.final = 1",
                params![status.command_id.to_string(), is_final, body],
            )?;
            Ok(())
        })?;
        if is_final {
            let waiting = self.waiters.lock().unwrap_or_else(|e| e.into_inner()).get(&status.command_id).cloned();
            if let Some(notify) = waiting {
                notify.notify_waiters();
            }
        }
        Ok(())
    }

    async fn get(&self, command_id: CommandId) -> anyhow::Result<Option<CommandStatus>> {
        let body: Option<String> = self.db.with(|conn| {
            Ok(conn
                .prepare_cached("SELECT body FROM command_status WHERE command_id = ?1")?
                .query_row(params![command_id.to_string()], |r| r.get(0))
                .optional()?)
        })?;
        body.map(|b| {
            serde_json::from_str(&b).map_err(|e| anyhow::anyhow!("stored command status does not decode: {e}"))
        })
        .transpose()
    }

    async fn wait_final(&self, command_id: CommandId, timeout: Duration) -> anyhow::Result<Option<CommandStatus>> {
        let deadline = tokio::time::Instant::now() + timeout;
        // Unregisters when done, or when the waiting request is dropped half-way.
        let waiter = Waiter { store: self, command_id, notify: self.waiter(command_id) };
        loop {
            let notified = waiter.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let status = self.get(command_id).await?;
            if status.as_ref().is_some_and(|s| s.state != CommandState::Pending) {
                return Ok(status);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(status);
            }
            // Also look again now and then: another process may complete the command.
            let nap = (deadline - now).min(Duration::from_millis(100));
            let _ = tokio::time::timeout(nap, notified).await;
        }
    }

    async fn ping(&self) -> anyhow::Result<()> {
        self.db.ping()
    }
}
