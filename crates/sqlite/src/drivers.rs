//! The embedded driver geo index: a table of drivers with a (online, lat, lon) index; nearest search
//! scans the radius's bounding box and ranks by great-circle distance. Reservation is atomic because
//! the pick and the hold happen in one transaction.

use std::path::Path;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ridehail_events::{GeoPoint, RideId, UserId};
use rusqlite::{TransactionBehavior, params};

use crate::sqlite::{Db, exec, millis};
use ridehail_ports::StoreResult;
use ridehail_ports::{Candidate, DriverLocator, Fix, LOCATION_MAX_AGE};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS drivers (
    driver_id TEXT PRIMARY KEY,
    lat REAL, lon REAL, cell TEXT,
    located_at INTEGER,
    online INTEGER NOT NULL,
    version INTEGER NOT NULL,
    held_for TEXT,
    held_until INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS drivers_online_by_lat ON drivers (online, lat);
CREATE INDEX IF NOT EXISTS drivers_by_cell ON drivers (cell, online);
";

/// SQL condition: the driver is not held, or the hold lapsed (parameter `:now` in ms).
macro_rules! free {
    () => {
        "(held_for IS NULL OR (held_until IS NOT NULL AND held_until < :now))"
    };
}

/// SQL condition: the driver's fix is not older than `:fresh_since` (ms), so they may be offered rides.
macro_rules! fresh {
    () => {
        " AND located_at >= :fresh_since"
    };
}

const METRES_PER_DEGREE: f64 = 111_320.0;

/// Radius of the first, smallest box looked at by a nearest-driver search.
const FIRST_SEARCH_M: f64 = 300.0;

/// The nearest free driver at most `radius` metres from `at`, not in `excluded`.
fn nearest_within(
    conn: &rusqlite::Connection,
    at: GeoPoint,
    radius: f64,
    excluded: &[String],
    now: DateTime<Utc>,
    fresh_since: DateTime<Utc>,
) -> anyhow::Result<Option<(String, f64)>> {
    let dlat = radius / METRES_PER_DEGREE;
    let dlon = radius / (METRES_PER_DEGREE * at.lat.to_radians().cos().max(0.01));
    let mut stmt = conn.prepare_cached(concat!(
        "SELECT driver_id, lat, lon FROM drivers
         WHERE online = 1 AND lat BETWEEN :lat_min AND :lat_max AND lon BETWEEN :lon_min AND :lon_max AND ",
        free!(),
        fresh!()
    ))?;
    let rows = stmt.query_map(
        rusqlite::named_params! {
            ":lat_min": at.lat - dlat, ":lat_max": at.lat + dlat,
            ":lon_min": at.lon - dlon, ":lon_max": at.lon + dlon,
            ":now": millis(now), ":fresh_since": millis(fresh_since),
        },
        |r| Ok((r.get::<_, String>(0)?, r.get::<_, f64>(1)?, r.get::<_, f64>(2)?)),
    )?;
    let mut best: Option<(String, f64)> = None;
    for row in rows {
        let (driver_id, lat, lon) = row?;
        if excluded.contains(&driver_id) {
            continue;
        }
        let distance = at.distance_m(&GeoPoint { lat, lon });
        if distance <= radius && best.as_ref().is_none_or(|(_, d)| distance < *d) {
            best = Some((driver_id, distance));
        }
    }
    Ok(best)
}

#[derive(Debug, Clone)]
pub struct EmbeddedDriverLocator {
    db: Db,
    max_age: chrono::Duration,
}

impl EmbeddedDriverLocator {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let db = Db::open(path)?;
        db.migrate(SCHEMA)?;
        // Added with location pings: older files get the column, their drivers no fix time (so they
        // are not offered rides until they report a position again).
        db.with(|conn| {
            let has =
                conn.prepare("SELECT 1 FROM pragma_table_info('drivers') WHERE name = 'located_at'")?.exists([])?;
            if !has {
                conn.execute_batch("ALTER TABLE drivers ADD COLUMN located_at INTEGER")?;
            }
            Ok(())
        })?;
        Ok(Self { db, max_age: chrono::Duration::from_std(LOCATION_MAX_AGE)? })
    }

    /// Drivers whose last fix is older than `max_age` are not offered rides.
    pub fn with_location_max_age(mut self, max_age: std::time::Duration) -> anyhow::Result<Self> {
        self.max_age = chrono::Duration::from_std(max_age)?;
        Ok(self)
    }
}

#[async_trait]
impl DriverLocator for EmbeddedDriverLocator {
    async fn update_driver(&self, driver_id: UserId, fix: Option<Fix>, online: bool, version: u64) -> StoreResult<()> {
        self.db.with(|conn| {
            // The fix is taken only when newer than the recorded one (a ping may have come since).
            exec(
                conn,
                "INSERT INTO drivers (driver_id, lat, lon, cell, located_at, online, version)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (driver_id) DO UPDATE SET
                    lat = IIF(excluded.located_at > COALESCE(drivers.located_at, -1), excluded.lat, drivers.lat),
                    lon = IIF(excluded.located_at > COALESCE(drivers.located_at, -1), excluded.lon, drivers.lon),
                    cell = IIF(excluded.located_at > COALESCE(drivers.located_at, -1), excluded.cell, drivers.cell),
                    located_at = MAX(COALESCE(excluded.located_at, -1), COALESCE(drivers.located_at, -1)),
                    online = excluded.online, version = excluded.version
                 WHERE excluded.version > drivers.version",
                params![
                    driver_id.to_string(),
                    fix.map(|f| f.location.lat),
                    fix.map(|f| f.location.lon),
                    fix.map(|f| f.location.cell()),
                    fix.map(|f| millis(f.at)),
                    online,
                    version
                ],
            )?;
            Ok(())
        })
    }

    async fn report_location(&self, driver_id: UserId, fix: Fix) -> StoreResult<bool> {
        let id = driver_id.to_string();
        self.db.with(|conn| {
            let changed = exec(
                conn,
                "UPDATE drivers SET lat = ?2, lon = ?3, cell = ?4, located_at = ?5
                 WHERE driver_id = ?1 AND (located_at IS NULL OR located_at < ?5)",
                params![id, fix.location.lat, fix.location.lon, fix.location.cell(), millis(fix.at)],
            )?;
            if changed > 0 {
                return Ok(true);
            }
            Ok(conn.prepare_cached("SELECT 1 FROM drivers WHERE driver_id = ?1")?.exists(params![id])?)
        })
    }

    async fn reserve_nearest(
        &self,
        at: GeoPoint,
        radius_m: u32,
        exclude: &[UserId],
        ride_id: RideId,
        hold_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Candidate>> {
        let excluded: Vec<String> = exclude.iter().map(|d| d.to_string()).collect();
        self.db.with(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            // Look in growing boxes: with many drivers around, the first small box already holds the
            // nearest one, and only its few rows are read.
            let mut search = FIRST_SEARCH_M.min(f64::from(radius_m));
            let best = loop {
                if let Some(found) = nearest_within(&tx, at, search, &excluded, now, now - self.max_age)? {
                    break Some(found);
                }
                if search >= f64::from(radius_m) {
                    break None;
                }
                search = (search * 2.0).min(f64::from(radius_m));
            };
            let Some((driver_id, distance_m)) = best else { return Ok(None) };
            exec(
                &tx,
                "UPDATE drivers SET held_for = ?2, held_until = ?3 WHERE driver_id = ?1",
                params![driver_id, ride_id.to_string(), millis(hold_until)],
            )?;
            tx.commit()?;
            Ok(Some(Candidate { driver_id: driver_id.parse()?, distance_m }))
        })
    }

    async fn hold(
        &self,
        driver_id: UserId,
        ride_id: RideId,
        until: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        self.db.with(|conn| {
            let changed = exec(
                conn,
                concat!(
                    "UPDATE drivers SET held_for = :ride, held_until = :until
                     WHERE driver_id = :driver AND (held_for = :ride OR ",
                    free!(),
                    ")"
                ),
                rusqlite::named_params! {
                    ":ride": ride_id.to_string(), ":until": until.map(millis),
                    ":driver": driver_id.to_string(), ":now": millis(now),
                },
            )?;
            Ok(changed > 0)
        })
    }

    async fn release(&self, driver_id: UserId, ride_id: RideId) -> StoreResult<()> {
        self.db.with(|conn| {
            exec(
                conn,
                "UPDATE drivers SET held_for = NULL, held_until = NULL WHERE driver_id = ?1 AND held_for = ?2",
                params![driver_id.to_string(), ride_id.to_string()],
            )?;
            Ok(())
        })
    }

    async fn available_in_cell(&self, cell: &str, now: DateTime<Utc>) -> StoreResult<u64> {
        self.db.with(|conn| {
            Ok(conn
                .prepare_cached(concat!(
                    "SELECT COUNT(*) FROM drivers WHERE cell = :cell AND online = 1 AND ",
                    free!(),
                    fresh!()
                ))?
                .query_row(
                    rusqlite::named_params! {
                        ":cell": cell, ":now": millis(now), ":fresh_since": millis(now - self.max_age),
                    },
                    |r| r.get(0),
                )?)
        })
    }

    async fn online(&self) -> StoreResult<u64> {
        self.db.with(|conn| {
            Ok(conn
                .prepare_cached("SELECT COUNT(*) FROM drivers WHERE online = 1 AND lat IS NOT NULL")?
                .query_row([], |r| r.get(0))?)
        })
    }

    async fn ping(&self) -> StoreResult<()> {
        self.db.ping()
    }
}
