//! The embedded projection catalogue (`projections.sqlite`, one row per projection) and the
//! generations of the ride and user views (tables beside generation 0's in `rides.sqlite` and
//! `users.sqlite`).

use std::sync::Arc;

use async_trait::async_trait;
use ridehail_ports::projections::{GenerationStore, Projection, ProjectionCatalogue, ProjectionRecord};
use ridehail_ports::{RideViews, StoreError, StoreResult, UserViews};
use rusqlite::{OptionalExtension, params};

use crate::sqlite::{Db, exec};
use crate::{EmbeddedRideViews, EmbeddedUserViews};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS projections (
    name TEXT PRIMARY KEY,
    revision INTEGER NOT NULL,
    body TEXT NOT NULL
) WITHOUT ROWID;
";

#[derive(Debug, Clone)]
pub struct EmbeddedCatalogue {
    db: Db,
}

impl EmbeddedCatalogue {
    pub fn new(db: Db) -> anyhow::Result<Self> {
        db.migrate(SCHEMA)?;
        Ok(Self { db })
    }

    /// The generation readers use (0 for a projection never rebuilt), read at start-up.
    pub fn active_generation(&self, projection: Projection) -> anyhow::Result<u64> {
        let body: Option<String> = self.db.with(|conn| {
            Ok(conn
                .prepare_cached("SELECT body FROM projections WHERE name = ?1")?
                .query_row(params![projection.as_str()], |r| r.get(0))
                .optional()?)
        })?;
        match body {
            None => Ok(0),
            Some(body) => Ok(serde_json::from_str::<ProjectionRecord>(&body)?.active()?.number),
        }
    }
}

#[async_trait]
impl ProjectionCatalogue for EmbeddedCatalogue {
    async fn load(&self, projection: Projection) -> StoreResult<(ProjectionRecord, u64)> {
        let row: Option<(u64, String)> = self.db.with(|conn| {
            Ok(conn
                .prepare_cached("SELECT revision, body FROM projections WHERE name = ?1")?
                .query_row(params![projection.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?)
        })?;
        match row {
            None => Ok((ProjectionRecord::initial(), 0)),
            Some((revision, body)) => Ok((
                serde_json::from_str(&body)
                    .map_err(|e| StoreError::corrupt(format!("the {projection} catalogue record: {e}")))?,
                revision,
            )),
        }
    }

    async fn store(&self, projection: Projection, expected: u64, record: &ProjectionRecord) -> StoreResult<bool> {
        let body = serde_json::to_string(record)?;
        self.db.with(|conn| {
            let changed = if expected == 0 {
                exec(
                    conn,
                    "INSERT INTO projections (name, revision, body) VALUES (?1, 1, ?2) ON CONFLICT (name) DO NOTHING",
                    params![projection.as_str(), body],
                )?
            } else {
                exec(
                    conn,
                    "UPDATE projections SET revision = revision + 1, body = ?3 WHERE name = ?1 AND revision = ?2",
                    params![projection.as_str(), expected, body],
                )?
            };
            Ok(changed == 1)
        })
    }
}

/// The generations of the embedded read models.
#[derive(Debug, Clone)]
pub struct EmbeddedGenerations {
    catalogue: Arc<EmbeddedCatalogue>,
    rides: Db,
    users: Db,
}

impl EmbeddedGenerations {
    pub fn new(catalogue: EmbeddedCatalogue, rides: Db, users: Db) -> Self {
        Self { catalogue: Arc::new(catalogue), rides, users }
    }
}

#[async_trait]
impl GenerationStore for EmbeddedGenerations {
    fn catalogue(&self) -> Arc<dyn ProjectionCatalogue> {
        self.catalogue.clone()
    }

    async fn prepare(&self, projection: Projection, generation: u64) -> StoreResult<()> {
        match projection {
            Projection::Rides => EmbeddedRideViews::generation(self.rides.clone(), generation).prepare_table()?,
            Projection::Users => EmbeddedUserViews::generation(self.users.clone(), generation).prepare()?,
            Projection::Drivers => {}
        }
        Ok(())
    }

    async fn complete(&self, projection: Projection, generation: u64) -> StoreResult<()> {
        if projection == Projection::Rides {
            EmbeddedRideViews::generation(self.rides.clone(), generation).prepare_indexes()?;
        }
        Ok(())
    }

    async fn drop_generation(&self, projection: Projection, generation: u64) -> StoreResult<()> {
        let (db, tables) = match projection {
            Projection::Rides => (&self.rides, vec![crate::rides::table(generation)]),
            Projection::Users => (&self.users, crate::users::tables(generation).to_vec()),
            Projection::Drivers => return Ok(()),
        };
        // Dropping a table drops its indexes.
        let sql: String = tables.iter().map(|t| format!("DROP TABLE IF EXISTS {t};")).collect();
        db.with(|conn| Ok(conn.execute_batch(&sql)?))
    }

    fn rides(&self, generation: u64) -> Arc<dyn RideViews> {
        Arc::new(EmbeddedRideViews::generation(self.rides.clone(), generation))
    }

    fn users(&self, generation: u64) -> Arc<dyn UserViews> {
        Arc::new(EmbeddedUserViews::generation(self.users.clone(), generation))
    }
}
