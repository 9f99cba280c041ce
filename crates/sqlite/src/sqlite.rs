use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use ridehail_ports::{StoreError, StoreResult};
use rusqlite::Connection;

/// One SQLite database file with its single connection.
#[derive(Clone)]
pub struct Db {
    path: Arc<PathBuf>,
    conn: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("path", &self.path).finish()
    }
}

impl Db {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let conn = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "busy_timeout", 5000)?;
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        conn.pragma_update(None, "cache_size", -4000)?;
        // Fewer WAL restarts: each one makes SQLite drop its page cache.
        conn.pragma_update(None, "wal_autocheckpoint", 4000)?;
        Ok(Self { path: Arc::new(path.to_path_buf()), conn: Arc::new(Mutex::new(conn)) })
    }

    /// Runs `f` with the connection. A poisoned lock is recovered: SQLite rolls back any transaction
    /// a panicking holder left open when the `Transaction` guard dropped.
    ///
    /// In place, on the calling task's thread: statements are short (a commit is a WAL append, no
    /// `fsync`). Running them under `block_in_place` was measured (docs/throughput.md): it made the
    /// location pings faster but the ride path ten times slower (200 rides/s: p50 5 → 48 ms), since
    /// every one of a command's dozen statements handed the thread's other tasks to the other worker.
    pub fn with<T>(&self, f: impl FnOnce(&mut Connection) -> anyhow::Result<T>) -> StoreResult<T> {
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut conn).with_context(|| format!("sqlite {}", self.path.display())).map_err(|e| {
            // A stored value that does not decode is corrupt data, not a dependency failure.
            let corrupt = e.chain().any(|c| c.is::<serde_json::Error>() || c.is::<uuid::Error>());
            if corrupt { StoreError::Corrupt(format!("{e:#}")) } else { StoreError::Unavailable(e) }
        })
    }

    pub fn migrate(&self, schema: &str) -> anyhow::Result<()> {
        Ok(self.with(|conn| conn.execute_batch(schema).map_err(Into::into))?)
    }

    pub fn ping(&self) -> StoreResult<()> {
        self.with(|conn| {
            conn.query_row("SELECT 1", [], |_| Ok(()))?;
            Ok(())
        })
    }
}

// Transactions that read before they write begin IMMEDIATE: they take the write lock up front and
// wait for it (busy_timeout), instead of failing when another process wrote after their read.

/// Runs a statement through the connection's prepared-statement cache.
pub fn exec(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params)
}

/// Reads one row through the connection's prepared-statement cache.
pub fn one<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    conn.prepare_cached(sql)?.query_row(params, f)
}

/// Milliseconds since the epoch, the time column format of the embedded tables.
pub fn millis(t: chrono::DateTime<chrono::Utc>) -> i64 {
    t.timestamp_millis()
}

/// Milliseconds since the epoch, rounded up: a deadline stored this way is never earlier than asked.
pub fn millis_ceil(t: chrono::DateTime<chrono::Utc>) -> i64 {
    let ms = t.timestamp_millis();
    if t.timestamp_subsec_nanos().is_multiple_of(1_000_000) { ms } else { ms + 1 }
}

pub fn from_millis(ms: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
}
