use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use rusqlite::Connection;

/// Runs one write inside the batch transaction; reports whether it succeeded and how to deliver its
/// result once the batch's commit outcome is known.
type Job = Box<dyn FnOnce(&Connection) -> (bool, Deliver) + Send>;
type Deliver = Box<dyn FnOnce(Result<(), String>) + Send>;

/// Most writes committed together in one transaction.
const MAX_BATCH: usize = 512;

/// One SQLite database file: a writer thread that group-commits, and a connection for reads.
///
/// Writes from concurrent tasks are queued to the writer, which runs everything queued in one
/// transaction (each write in its own savepoint, so one failing write does not undo the others) and
/// answers every caller only after the commit: a returned write is durable. Under load this turns
/// many small commits into few larger ones. Reads go to their own connection; in WAL mode they see
/// every committed write and never wait for the writer.
#[derive(Clone)]
pub struct Db {
    path: Arc<PathBuf>,
    reader: Arc<Mutex<Connection>>,
    writer: Sender<Job>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("path", &self.path).finish()
    }
}

fn connect(path: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "busy_timeout", 5000)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.pragma_update(None, "cache_size", -8000)?;
    // Fewer WAL restarts: each one makes SQLite drop its page cache.
    conn.pragma_update(None, "wal_autocheckpoint", 4000)?;
    Ok(conn)
}

impl Db {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let reader = connect(path)?;
        let writer_conn = connect(path)?;
        let (writer, jobs) = channel::<Job>();
        let name = format!("sqlite-{}", path.file_stem().map(|s| s.to_string_lossy()).unwrap_or_default());
        std::thread::Builder::new().name(name).spawn(move || write_loop(writer_conn, jobs))?;
        Ok(Self { path: Arc::new(path.to_path_buf()), reader: Arc::new(Mutex::new(reader)), writer })
    }

    /// Runs `f` on the read connection (statements are short, callers run them in place). Also used
    /// for schema set-up at open time.
    pub fn with<T>(&self, f: impl FnOnce(&mut Connection) -> anyhow::Result<T>) -> anyhow::Result<T> {
        let mut conn = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut conn).with_context(|| format!("sqlite {}", self.path.display()))
    }

    /// Runs `f` on the writer, atomically, and returns once it is committed.
    pub async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| f(conn)))
                .unwrap_or_else(|_| Err(anyhow::anyhow!("a database write panicked")));
            let ok = result.is_ok();
            let deliver: Deliver = Box::new(move |commit| {
                let outcome = match (result, commit) {
                    (Ok(value), Ok(())) => Ok(value),
                    (Ok(_), Err(e)) => Err(anyhow::anyhow!("commit failed: {e}")),
                    (Err(e), _) => Err(e),
                };
                let _ = tx.send(outcome);
            });
            (ok, deliver)
        });
        self.writer.send(job).map_err(|_| anyhow::anyhow!("the writer of {} stopped", self.path.display()))?;
        rx.await
            .map_err(|_| anyhow::anyhow!("the writer of {} stopped", self.path.display()))?
            .with_context(|| format!("sqlite {}", self.path.display()))
    }

    pub fn migrate(&self, schema: &str) -> anyhow::Result<()> {
        self.with(|conn| conn.execute_batch(schema).map_err(Into::into))
    }

    pub fn ping(&self) -> anyhow::Result<()> {
        self.with(|conn| {
            conn.query_row("SELECT 1", [], |_| Ok(()))?;
            Ok(())
        })
    }
}

fn write_loop(conn: Connection, jobs: Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            // Nothing ran; dropping the jobs tells each caller its write failed.
            tracing::warn!(error = %e, "could not begin a write transaction");
            drop(batch);
            continue;
        }
        let mut deliveries = Vec::with_capacity(batch.len());
        for job in batch {
            let savepoint = conn.execute_batch("SAVEPOINT job");
            let (ok, deliver) = job(&conn);
            if savepoint.is_ok() {
                let end = if ok { "RELEASE job" } else { "ROLLBACK TO job; RELEASE job" };
                let _ = conn.execute_batch(end);
            }
            deliveries.push(deliver);
        }
        let commit = conn.execute_batch("COMMIT").map_err(|e| e.to_string());
        if commit.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        for deliver in deliveries {
            deliver(commit.clone());
        }
    }
}

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

pub fn from_millis(ms: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
}
