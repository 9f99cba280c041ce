//! The driver geo index in Redis. Every key shares the hash tag `{<prefix>drivers}`, so each script's
//! keys (declared and derived) live in one cluster slot.

use std::sync::LazyLock;

use anyhow::Context as _;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use redis::Script;
use ridehail_events::{GeoPoint, RideId, UserId};
use ridehail_ports::StoreResult;
use ridehail_ports::{Candidate, DriverLocator, Fix, LOCATION_MAX_AGE};

use crate::client::RedisClient;

/// Redis GEO commands refuse latitudes beyond this (the Web Mercator limit).
const GEO_MAX_LATITUDE: f64 = 85.051_128_78;

/// The Earth radius Redis's GEO distances use (`src/geohash_helper.c`).
const REDIS_EARTH_RADIUS_M: f64 = 6_372_797.560_856;

/// Lua: a driver is free at `now` when not held, or held with a deadline before `now`.
/// `h` is `HMGET driver online ride until`.
macro_rules! lua_available {
    () => {
        "local function available(h, now)
             return h[1] == '1' and (not h[2] or (h[3] ~= false and tonumber(h[3]) < now))
         end
        "
    };
}

/// Lua: puts the driver (`driver`, id `id`, whose hash holds their state) where their hash says: in
/// the GEO set and their cell's set when online and located, in neither otherwise. `old_cell` is the
/// cell they were in before this write.
macro_rules! lua_place {
    () => {
        "local function place(geo, driver, id, old_cell, cell_prefix)
             local at = redis.call('HMGET', driver, 'lat', 'lon', 'cell', 'indexable', 'online')
             if old_cell and old_cell ~= at[3] then redis.call('SREM', cell_prefix .. old_cell, id) end
             if at[5] == '1' and at[1] then
                 if at[4] == '1' then redis.call('GEOADD', geo, at[2], at[1], id) else redis.call('ZREM', geo, id) end
                 redis.call('SADD', cell_prefix .. at[3], id)
             else
                 redis.call('ZREM', geo, id)
                 if at[3] then redis.call('SREM', cell_prefix .. at[3], id) end
             end
         end
         local function newer_fix(driver, located_at)
             local stored = redis.call('HGET', driver, 'located_at')
             return located_at ~= '' and (not stored or tonumber(stored) < tonumber(located_at))
         end
        "
    };
}

/// KEYS: geo, driver. ARGV: driver id, version, online (1/0), lat, lon, cell, indexable (1/0: within
/// GEO's latitude range), cell key prefix, fix time (ms; lat, lon, cell and it empty = no fix).
static UPDATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        lua_place!(),
        "local geo, driver, id = KEYS[1], KEYS[2], ARGV[1]
         local stored = redis.call('HGET', driver, 'version')
         if stored and tonumber(stored) >= tonumber(ARGV[2]) then return 0 end
         local old_cell = redis.call('HGET', driver, 'cell')
         if newer_fix(driver, ARGV[9]) then
             redis.call('HSET', driver, 'lat', ARGV[4], 'lon', ARGV[5], 'cell', ARGV[6], 'indexable', ARGV[7],
                 'located_at', ARGV[9])
         end
         redis.call('HSET', driver, 'version', ARGV[2], 'online', ARGV[3])
         place(geo, driver, id, old_cell, ARGV[8])
         return 1"
    ))
});

/// KEYS: geo, driver. ARGV: driver id, lat, lon, cell, indexable (1/0), fix time (ms), cell key
/// prefix. Returns 0 for a driver the index does not know, else 1.
static REPORT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        lua_place!(),
        "local geo, driver, id = KEYS[1], KEYS[2], ARGV[1]
         if redis.call('EXISTS', driver) == 0 then return 0 end
         if not newer_fix(driver, ARGV[6]) then return 1 end
         local old_cell = redis.call('HGET', driver, 'cell')
         redis.call('HSET', driver, 'lat', ARGV[2], 'lon', ARGV[3], 'cell', ARGV[4], 'indexable', ARGV[5],
             'located_at', ARGV[6])
         place(geo, driver, id, old_cell, ARGV[7])
         return 1"
    ))
});

/// KEYS: geo. ARGV: lon, lat, radius (m), now (ms), hold until (ms), ride id, driver key prefix,
/// oldest fix offered (ms), excluded driver ids... Returns `{driver id, lat, lon}` of the driver now held, or nil.
///
/// Looks at the nearest 16, then 64, 256... drivers, so a crowded area costs a short scan and an empty
/// one a single search.
static RESERVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        lua_available!(),
        "local now = tonumber(ARGV[4])
         local excluded = {}
         local fresh_since = tonumber(ARGV[8])
         for i = 9, #ARGV do excluded[ARGV[i]] = true end
         local count = 16
         while true do
             local found = redis.call('GEOSEARCH', KEYS[1], 'FROMLONLAT', ARGV[1], ARGV[2],
                 'BYRADIUS', ARGV[3], 'm', 'ASC', 'COUNT', count)
             for _, id in ipairs(found) do
                 if not excluded[id] then
                     local driver = ARGV[7] .. id
                     local h = redis.call('HMGET', driver, 'online', 'ride', 'until', 'lat', 'lon', 'located_at')
                     if available(h, now) and tonumber(h[6] or 0) >= fresh_since then
                         redis.call('HSET', driver, 'ride', ARGV[6], 'until', ARGV[5])
                         return {id, h[4], h[5]}
                     end
                 end
             end
             if #found < count then return false end
             count = count * 4
         end"
    ))
});

/// KEYS: driver. ARGV: ride id, until (ms, empty = no deadline), now (ms). Returns 1 when held.
static HOLD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
         local h = redis.call('HMGET', KEYS[1], 'ride', 'until')
         if h[1] and h[1] ~= ARGV[1] and not (h[2] and tonumber(h[2]) < tonumber(ARGV[3])) then return 0 end
         if ARGV[2] == '' then
             redis.call('HSET', KEYS[1], 'ride', ARGV[1])
             redis.call('HDEL', KEYS[1], 'until')
         else
             redis.call('HSET', KEYS[1], 'ride', ARGV[1], 'until', ARGV[2])
         end
         return 1",
    )
});

/// KEYS: driver. ARGV: ride id.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('HGET', KEYS[1], 'ride') == ARGV[1] then redis.call('HDEL', KEYS[1], 'ride', 'until') end
         return 0",
    )
});

/// KEYS: cell set. ARGV: now (ms), driver key prefix, oldest fix counted (ms). Returns how many of the
/// cell's drivers are free.
static AVAILABLE_IN_CELL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        lua_available!(),
        "local now, fresh_since, n = tonumber(ARGV[1]), tonumber(ARGV[3]), 0
         for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
             local h = redis.call('HMGET', ARGV[2] .. id, 'online', 'ride', 'until', 'located_at')
             if available(h, now) and tonumber(h[4] or 0) >= fresh_since then n = n + 1 end
         end
         return n"
    ))
});

/// [`DriverLocator`] on Redis: a GEO set of online located drivers, a hash per driver (version, online,
/// position, cell, hold) and a set of online drivers per surge cell. Every decision that reads and
/// then writes runs in one Lua script, so it is atomic.
#[derive(Debug, Clone)]
pub struct RedisDriverLocator {
    redis: RedisClient,
    geo: String,
    driver_prefix: String,
    cell_prefix: String,
    max_age: chrono::Duration,
}

impl RedisDriverLocator {
    pub fn new(redis: RedisClient) -> Self {
        let tag = format!("{{{}}}", redis.key("drivers"));
        Self {
            geo: format!("{tag}:geo"),
            driver_prefix: format!("{tag}:driver:"),
            cell_prefix: format!("{tag}:cell:"),
            redis,
            max_age: chrono::Duration::seconds(LOCATION_MAX_AGE.as_secs() as i64),
        }
    }

    /// Drivers whose last fix is older than `max_age` are not offered rides.
    pub fn with_location_max_age(mut self, max_age: std::time::Duration) -> anyhow::Result<Self> {
        self.max_age = chrono::Duration::from_std(max_age)?;
        Ok(self)
    }

    fn driver_key(&self, driver_id: UserId) -> String {
        format!("{}{driver_id}", self.driver_prefix)
    }
}

/// A fix as script arguments: lat, lon, cell, whether GEO can index it, its time (ms).
fn fix_args(fix: Fix) -> (String, String, String, bool, String) {
    let at = fix.location;
    let indexable = at.lat.abs() <= GEO_MAX_LATITUDE;
    if !indexable {
        tracing::warn!("driver position beyond the GEO index's latitude range: not searchable");
    }
    (at.lat.to_string(), at.lon.to_string(), at.cell(), indexable, fix.at.timestamp_millis().to_string())
}

/// Redis measures with a slightly larger Earth than [`GeoPoint::distance_m`]; scaling the search radius
/// by the ratio makes both agree on who is within the radius.
fn redis_radius(radius_m: u32) -> f64 {
    let one_degree = GeoPoint { lat: 0.0, lon: 0.0 }.distance_m(&GeoPoint { lat: 0.0, lon: 1.0 });
    let our_earth_radius = one_degree.to_degrees();
    f64::from(radius_m) * REDIS_EARTH_RADIUS_M / our_earth_radius
}

#[async_trait]
impl DriverLocator for RedisDriverLocator {
    async fn update_driver(&self, driver_id: UserId, fix: Option<Fix>, online: bool, version: u64) -> StoreResult<()> {
        let (lat, lon, cell, indexable, at) = match fix {
            Some(fix) => fix_args(fix),
            None => Default::default(),
        };
        UPDATE
            .key(&self.geo)
            .key(self.driver_key(driver_id))
            .arg(driver_id.to_string())
            .arg(version)
            .arg(u8::from(online))
            .arg(lat)
            .arg(lon)
            .arg(cell)
            .arg(u8::from(indexable))
            .arg(&self.cell_prefix)
            .arg(at)
            .invoke_async::<i64>(&mut self.redis.conn())
            .await
            .context("updating a driver in the Redis geo index")?;
        Ok(())
    }

    async fn report_location(&self, driver_id: UserId, fix: Fix) -> StoreResult<bool> {
        let (lat, lon, cell, indexable, at) = fix_args(fix);
        let known: i64 = REPORT
            .key(&self.geo)
            .key(self.driver_key(driver_id))
            .arg(driver_id.to_string())
            .arg(lat)
            .arg(lon)
            .arg(cell)
            .arg(u8::from(indexable))
            .arg(at)
            .arg(&self.cell_prefix)
            .invoke_async(&mut self.redis.conn())
            .await
            .context("reporting a driver's location to the Redis geo index")?;
        Ok(known == 1)
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
        if at.lat.abs() > GEO_MAX_LATITUDE {
            // GEOSEARCH refuses such a centre, and no driver that far north or south is indexed.
            return Ok(None);
        }
        let mut script = RESERVE.key(&self.geo);
        script
            .arg(at.lon)
            .arg(at.lat)
            .arg(redis_radius(radius_m))
            .arg(now.timestamp_millis())
            .arg(hold_until.timestamp_millis())
            .arg(ride_id.to_string())
            .arg(&self.driver_prefix)
            .arg((now - self.max_age).timestamp_millis());
        for driver in exclude {
            script.arg(driver.to_string());
        }
        let held: Option<(String, f64, f64)> =
            script.invoke_async(&mut self.redis.conn()).await.context("reserving the nearest driver in Redis")?;
        let Some((driver_id, lat, lon)) = held else { return Ok(None) };
        Ok(Some(Candidate {
            driver_id: driver_id.parse().context("a driver id in the Redis geo index does not parse")?,
            distance_m: at.distance_m(&GeoPoint { lat, lon }),
        }))
    }

    async fn hold(
        &self,
        driver_id: UserId,
        ride_id: RideId,
        until: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let held: i64 = HOLD
            .key(self.driver_key(driver_id))
            .arg(ride_id.to_string())
            .arg(until.map(|u| u.timestamp_millis().to_string()).unwrap_or_default())
            .arg(now.timestamp_millis())
            .invoke_async(&mut self.redis.conn())
            .await
            .context("holding a driver in Redis")?;
        Ok(held == 1)
    }

    async fn release(&self, driver_id: UserId, ride_id: RideId) -> StoreResult<()> {
        RELEASE
            .key(self.driver_key(driver_id))
            .arg(ride_id.to_string())
            .invoke_async::<i64>(&mut self.redis.conn())
            .await
            .context("releasing a driver in Redis")?;
        Ok(())
    }

    async fn available_in_cell(&self, cell: &str, now: DateTime<Utc>) -> StoreResult<u64> {
        Ok(AVAILABLE_IN_CELL
            .key(format!("{}{cell}", self.cell_prefix))
            .arg(now.timestamp_millis())
            .arg(&self.driver_prefix)
            .arg((now - self.max_age).timestamp_millis())
            .invoke_async(&mut self.redis.conn())
            .await
            .context("counting available drivers in a cell in Redis")?)
    }

    /// The geo index holds exactly the online drivers with a location.
    async fn online(&self) -> StoreResult<u64> {
        let mut conn = self.redis.conn();
        Ok(redis::cmd("ZCARD")
            .arg(&self.geo)
            .query_async(&mut conn)
            .await
            .context("counting online drivers in Redis")?)
    }

    async fn ping(&self) -> StoreResult<()> {
        self.redis.ping().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_search_radius_is_scaled_to_redis_s_earth() {
        let scaled = redis_radius(1_000);
        assert!((1_000.2..1_000.3).contains(&scaled), "{scaled}");
    }
}
