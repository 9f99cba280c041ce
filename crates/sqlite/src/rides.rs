//! The embedded ride read model: the view as JSON plus the columns queries filter and sort on.

use std::path::Path;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ridehail_events::RideId;
use ridehail_events::ride::RideStatus;
use rusqlite::{OptionalExtension, params};

use crate::sqlite::{Db, exec};
use ridehail_ports::{RideParty, RideQuery, RideView, RideViews};
use ridehail_ports::{StoreError, StoreResult};

/// The table of one generation (generation 0 is `rides`, later ones `rides_g<N>`).
fn table_schema(table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (
            ride_id TEXT PRIMARY KEY,
            rider_id TEXT NOT NULL,
            driver_id TEXT,
            offered_driver_id TEXT,
            status TEXT NOT NULL,
            pickup_cell TEXT NOT NULL,
            version INTEGER NOT NULL,
            body TEXT NOT NULL
        ) WITHOUT ROWID;"
    )
}

/// The indexes the queries use (not the writes: a rebuild creates them once its scan is done).
fn index_schema(table: &str) -> String {
    format!(
        "CREATE INDEX IF NOT EXISTS {table}_by_rider ON {table} (rider_id, ride_id);
        CREATE INDEX IF NOT EXISTS {table}_by_driver ON {table} (driver_id, ride_id);
        CREATE INDEX IF NOT EXISTS {table}_by_offered_driver ON {table} (offered_driver_id, ride_id);
        CREATE INDEX IF NOT EXISTS {table}_waiting_by_cell ON {table} (pickup_cell, status);
        CREATE INDEX IF NOT EXISTS {table}_by_status ON {table} (status);"
    )
}

/// The table name of a generation.
pub(crate) fn table(generation: u64) -> String {
    if generation == 0 { "rides".to_owned() } else { format!("rides_g{generation}") }
}

#[derive(Debug, Clone)]
pub struct EmbeddedRideViews {
    db: Db,
    table: std::sync::Arc<str>,
    upsert: std::sync::Arc<str>,
}

impl EmbeddedRideViews {
    /// Generation 0 in the file at `path`.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let views = Self::generation(Db::open(path)?, 0);
        views.prepare()?;
        Ok(views)
    }

    /// One generation's table in `db` (see [`EmbeddedRideViews::prepare`]).
    pub fn generation(db: Db, generation: u64) -> Self {
        let table = table(generation);
        let upsert = format!(
            "INSERT INTO {table} (ride_id, rider_id, driver_id, offered_driver_id, status, pickup_cell, version, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (ride_id) DO UPDATE SET
                driver_id = excluded.driver_id, offered_driver_id = excluded.offered_driver_id,
                status = excluded.status, version = excluded.version, body = excluded.body
             WHERE excluded.version > {table}.version"
        );
        Self { db, table: table.into(), upsert: upsert.into() }
    }

    /// Creates the table and its indexes unless they exist.
    pub fn prepare(&self) -> anyhow::Result<()> {
        self.prepare_table()?;
        self.prepare_indexes()
    }

    /// Creates the table alone: what writers need.
    pub fn prepare_table(&self) -> anyhow::Result<()> {
        self.db.migrate(&table_schema(&self.table))
    }

    /// Creates the indexes the queries need.
    pub fn prepare_indexes(&self) -> anyhow::Result<()> {
        self.db.migrate(&index_schema(&self.table))
    }

    fn write(&self, conn: &rusqlite::Connection, view: &RideView) -> anyhow::Result<bool> {
        let changed = exec(
            conn,
            &self.upsert,
            params![
                view.ride_id.to_string(),
                view.rider_id.to_string(),
                view.driver_id.map(|d| d.to_string()),
                view.offered_driver_id.map(|d| d.to_string()),
                view.status.as_str(),
                view.pickup_cell,
                view.version,
                serde_json::to_string(view)?
            ],
        )?;
        Ok(changed > 0)
    }
}

fn decode(body: &str) -> StoreResult<RideView> {
    serde_json::from_str(body).map_err(|e| StoreError::corrupt(format!("stored ride view does not decode: {e}")))
}

#[async_trait]
impl RideViews for EmbeddedRideViews {
    async fn upsert(&self, view: &RideView) -> StoreResult<bool> {
        self.db.with(|conn| self.write(conn, view))
    }

    async fn upsert_many(&self, views: &[RideView]) -> StoreResult<u64> {
        self.db.with(|conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let mut written = 0;
            for view in views {
                written += u64::from(self.write(&tx, view)?);
            }
            tx.commit()?;
            Ok(written)
        })
    }

    async fn get(&self, ride_id: RideId) -> StoreResult<Option<RideView>> {
        let body: Option<String> = self.db.with(|conn| {
            Ok(conn
                .prepare_cached(&format!("SELECT body FROM {} WHERE ride_id = ?1", self.table))?
                .query_row(params![ride_id.to_string()], |r| r.get(0))
                .optional()?)
        })?;
        body.as_deref().map(decode).transpose()
    }

    async fn list(&self, query: &RideQuery) -> StoreResult<Vec<RideView>> {
        let (party_sql, party_id) = match query.party {
            RideParty::Rider(id) => ("rider_id = ?1", id),
            RideParty::Driver(id) => ("(driver_id = ?1 OR offered_driver_id = ?1)", id),
        };
        let sql = format!(
            "SELECT body FROM {table} WHERE {party_sql}
               AND (?2 IS NULL OR status = ?2) AND (?3 IS NULL OR ride_id < ?3)
             ORDER BY ride_id DESC LIMIT ?4",
            table = self.table
        );
        let bodies: Vec<String> = self.db.with(|conn| {
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(
                params![
                    party_id.to_string(),
                    query.status.map(|s: RideStatus| s.as_str()),
                    query.before.map(|b| b.to_string()),
                    query.limit as i64
                ],
                |r| r.get::<_, String>(0),
            )?;
            Ok(rows.collect::<Result<_, _>>()?)
        })?;
        bodies.iter().map(|b| decode(b)).collect()
    }

    async fn count_waiting_in_cell(&self, cell: &str) -> StoreResult<u64> {
        self.db.with(|conn| {
            Ok(conn
                .prepare_cached(&format!(
                    "SELECT COUNT(*) FROM {} WHERE pickup_cell = ?1 AND status = 'requested'",
                    self.table
                ))?
                .query_row(params![cell], |r| r.get(0))?)
        })
    }

    async fn waiting_since(&self, before: DateTime<Utc>, limit: usize) -> StoreResult<Vec<RideView>> {
        let bodies: Vec<String> = self.db.with(|conn| {
            let mut stmt =
                conn.prepare_cached(&format!("SELECT body FROM {} WHERE status = 'requested'", self.table))?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })?;
        let mut waiting: Vec<RideView> = bodies
            .iter()
            .map(|b| decode(b))
            .collect::<StoreResult<Vec<_>>>()?
            .into_iter()
            .filter(|v| v.updated_at < before)
            .collect();
        waiting.sort_by_key(|v| v.updated_at);
        waiting.truncate(limit);
        Ok(waiting)
    }

    async fn ping(&self) -> StoreResult<()> {
        self.db.ping()
    }
}
