//! The read-through cache shared by [`CachedRideViews`] and [`CachedUserViews`]: entries, the
//! store-if-newer script, counters and the fallback when Redis fails (the crate documentation describes
//! the guarantees).

mod rides;
mod users;

use ridehail_ports::StoreResult;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use redis::Script;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use rides::CachedRideViews;
pub use users::CachedUserViews;

use crate::client::RedisClient;
pub(crate) use ridehail_ports::LogLimiter;

/// Keys remembered for deletion while Redis is down; beyond this, a stale entry lives until its TTL.
const MAX_PENDING_DELETES: usize = 10_000;

/// KEYS: entry. ARGV: version, body, keep (s). Stores when the entry is absent or older, with the
/// time it was stored (ms, Redis's clock); returns 1 if so.
static STORE_IF_NEWER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "local cached = redis.call('HGET', KEYS[1], 'version')
         if cached and tonumber(cached) >= tonumber(ARGV[1]) then return 0 end
         local t = redis.call('TIME')
         local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
         redis.call('HSET', KEYS[1], 'version', ARGV[1], 'body', ARGV[2], 'stored_at', string.format('%.0f', now))
         redis.call('EXPIRE', KEYS[1], ARGV[3])
         return 1",
    )
});

/// How a cache decorator's reads went since it was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Reads answered from Redis.
    pub hits: u64,
    /// Reads not in Redis, answered by the inner store (and then cached).
    pub misses: u64,
    /// Reads answered by the inner store because Redis failed or is being skipped after a failure.
    pub fallbacks: u64,
}

/// A view that knows its projection version.
pub(crate) trait Versioned: Serialize + DeserializeOwned {
    fn version(&self) -> u64;
}

/// What a cache lookup found.
enum Lookup<T> {
    Hit(T),
    /// Stored longer ago than the TTL: kept only to be served while the inner store is down.
    Aged(T, Duration),
    Miss,
    /// Redis failed or is skipped: ask the inner store and leave the cache alone.
    Unavailable,
}

/// One kind of cached view (`<prefix>cache:<kind>:<id>`) with its counters and failure handling.
#[derive(Debug)]
pub(crate) struct ReadThrough {
    redis: RedisClient,
    kind: &'static str,
    ttl_seconds: u64,
    /// How much longer than the TTL an entry is kept, for reads while the inner store is down.
    stale_seconds: u64,
    retry_interval: Duration,
    call_timeout: Duration,
    hits: AtomicU64,
    misses: AtomicU64,
    fallbacks: AtomicU64,
    stale_served: AtomicU64,
    /// While set and in the future, Redis is skipped.
    skip_until: Mutex<Option<Instant>>,
    /// Keys whose entries may be older than the inner store, to delete once Redis answers.
    pending_deletes: Mutex<HashSet<String>>,
    /// One task at a time deletes the pending keys.
    flushing: tokio::sync::Mutex<()>,
    failures: LogLimiter,
    overflows: LogLimiter,
}

impl ReadThrough {
    pub(crate) fn new(redis: RedisClient, kind: &'static str) -> Self {
        let settings = redis.settings();
        Self {
            kind,
            ttl_seconds: settings.cache_ttl_seconds,
            stale_seconds: settings.cache_stale_seconds,
            retry_interval: Duration::from_millis(settings.cache_retry_interval_ms),
            call_timeout: settings.response_timeout(),
            failures: LogLimiter::new(Duration::from_secs(settings.fallback_log_interval_seconds)),
            overflows: LogLimiter::new(Duration::from_secs(settings.fallback_log_interval_seconds)),
            redis,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
            stale_served: AtomicU64::new(0),
            skip_until: Mutex::new(None),
            pending_deletes: Mutex::new(HashSet::new()),
            flushing: tokio::sync::Mutex::new(()),
        }
    }

    pub(crate) fn key(&self, id: &impl std::fmt::Display) -> String {
        self.redis.key(&format!("cache:{}:{id}", self.kind))
    }

    pub(crate) fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            fallbacks: self.fallbacks.load(Ordering::Relaxed),
        }
    }

    /// One read of this cache in `ridehail_cache_reads_total{view, result}` (described with the
    /// other metrics in `ridehail_runtime::metrics`).
    fn count(&self, result: &'static str) {
        metrics::counter!("ridehail_cache_reads_total", "view" => self.kind, "result" => result).increment(1);
    }

    /// Reads served from an aged entry because the inner store was unavailable.
    pub(crate) fn stale_served(&self) -> u64 {
        self.stale_served.load(Ordering::Relaxed)
    }

    /// The cached view, or the inner store's (`load`), which is then cached.
    pub(crate) async fn read<T, F>(&self, key: String, load: F) -> StoreResult<Option<T>>
    where
        T: Versioned,
        F: Future<Output = StoreResult<Option<T>>>,
    {
        Ok(self.read_allowing_stale(key, load, false).await?.map(|(view, _)| view))
    }

    /// [`ReadThrough::read`]; with `allow_stale`, an entry older than the TTL is served (with its
    /// age) when the inner store is unavailable.
    pub(crate) async fn read_allowing_stale<T, F>(
        &self,
        key: String,
        load: F,
        allow_stale: bool,
    ) -> StoreResult<Option<(T, Option<Duration>)>>
    where
        T: Versioned,
        F: Future<Output = StoreResult<Option<T>>>,
    {
        match self.lookup(&key).await {
            Lookup::Hit(view) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                self.count("hit");
                Ok(Some((view, None)))
            }
            Lookup::Aged(aged, age) => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                self.count("miss");
                match load.await {
                    Ok(view) => {
                        if let Some(view) = &view {
                            let _ = self.store(&key, view).await;
                        }
                        Ok(view.map(|v| (v, None)))
                    }
                    Err(ridehail_ports::StoreError::Unavailable(e)) if allow_stale => {
                        tracing::debug!(
                            key,
                            error = format!("{e:#}"),
                            "inner store unavailable; serving an aged entry"
                        );
                        self.stale_served.fetch_add(1, Ordering::Relaxed);
                        self.count("stale");
                        Ok(Some((aged, Some(age))))
                    }
                    Err(e) => Err(e),
                }
            }
            Lookup::Miss => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                self.count("miss");
                let view = load.await?;
                if let Some(view) = &view {
                    // A failure is logged and handled inside; the reader has its answer either way.
                    let _ = self.store(&key, view).await;
                }
                Ok(view.map(|v| (v, None)))
            }
            Lookup::Unavailable => {
                self.fallbacks.fetch_add(1, Ordering::Relaxed);
                self.count("fallback");
                Ok(load.await?.map(|v| (v, None)))
            }
        }
    }

    /// After the inner store took `view`: brings the cache up to it, or makes sure no older entry stays.
    pub(crate) async fn written<T: Versioned>(&self, key: String, view: &T) {
        if !self.usable(Instant::now()).await {
            self.remember_delete(key);
            return;
        }
        if self.store(&key, view).await.is_ok() {
            return;
        }
        let deleted = self.bounded(redis::cmd("DEL").arg(&key).query_async::<i64>(&mut self.redis.conn())).await;
        if deleted.is_err() {
            self.remember_delete(key);
        }
    }

    async fn lookup<T: Versioned>(&self, key: &str) -> Lookup<T> {
        if !self.usable(Instant::now()).await || self.is_pending_delete(key) {
            return Lookup::Unavailable;
        }
        let found: (Option<String>, Option<i64>) = match self
            .bounded(redis::cmd("HMGET").arg(key).arg("body").arg("stored_at").query_async(&mut self.redis.conn()))
            .await
        {
            Ok(found) => found,
            Err(error) => {
                self.failed(&error);
                return Lookup::Unavailable;
            }
        };
        let (Some(body), stored_at) = found else { return Lookup::Miss };
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let age = Duration::from_millis(u64::try_from(now_ms - stored_at.unwrap_or(now_ms)).unwrap_or(0));
        match serde_json::from_str(&body) {
            Ok(view) if age.as_secs() >= self.ttl_seconds => Lookup::Aged(view, age),
            Ok(view) => Lookup::Hit(view),
            Err(error) => {
                tracing::warn!(key, %error, "cached entry does not decode; dropping it and reading the inner store");
                // Gone, so the fill that follows is not refused as "not newer".
                let deleted = self.bounded(redis::cmd("DEL").arg(key).query_async::<i64>(&mut self.redis.conn())).await;
                if let Err(error) = deleted {
                    self.failed(&error);
                    return Lookup::Unavailable;
                }
                Lookup::Miss
            }
        }
    }

    async fn store<T: Versioned>(&self, key: &str, view: &T) -> Result<(), ()> {
        let body = match serde_json::to_string(view) {
            Ok(body) => body,
            Err(error) => {
                tracing::warn!(key, %error, "view does not encode for the cache");
                return Err(());
            }
        };
        let mut script = STORE_IF_NEWER.key(key);
        script.arg(view.version()).arg(body).arg(self.ttl_seconds + self.stale_seconds);
        let stored = self.bounded(script.invoke_async::<i64>(&mut self.redis.conn())).await;
        stored.map(|_| ()).map_err(|error| self.failed(&error))
    }

    /// Whether to use Redis now: not within the pause after a failure, and any key that may hold a stale
    /// entry is deleted first.
    /// Deletes every entry of this kind (SCAN, then DEL in batches). Returns how many.
    pub(crate) async fn forget_all(&self) -> StoreResult<u64> {
        let pattern = self.key(&"*");
        let mut conn = self.redis.conn();
        let mut cursor: u64 = 0;
        let mut deleted = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .map_err(ridehail_ports::StoreError::unavailable)?;
            let mut pipe = redis::pipe();
            for key in &keys {
                // One DEL per key: cached entries live in different cluster slots.
                pipe.cmd("DEL").arg(key).ignore();
            }
            pipe.exec_async(&mut conn).await.map_err(ridehail_ports::StoreError::unavailable)?;
            deleted += keys.len() as u64;
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }

    async fn usable(&self, now: Instant) -> bool {
        let skip_until = *self.skip_until.lock().unwrap_or_else(|e| e.into_inner());
        if skip_until.is_some_and(|until| now < until) {
            return false;
        }
        self.flush_pending_deletes().await
    }

    async fn flush_pending_deletes(&self) -> bool {
        if self.pending_deletes.lock().unwrap_or_else(|e| e.into_inner()).is_empty() {
            return true;
        }
        // Another task is deleting them; the keys still pending are skipped by `lookup` meanwhile.
        let Ok(_flushing) = self.flushing.try_lock() else { return true };
        let keys: Vec<String> =
            self.pending_deletes.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect();
        let mut pipe = redis::pipe();
        for key in &keys {
            // One DEL per key: cached entries live in different cluster slots.
            pipe.cmd("DEL").arg(key).ignore();
        }
        match self.bounded(pipe.exec_async(&mut self.redis.conn())).await {
            Ok(()) => {
                let mut pending = self.pending_deletes.lock().unwrap_or_else(|e| e.into_inner());
                for key in &keys {
                    pending.remove(key);
                }
                tracing::info!(
                    kind = self.kind,
                    deleted = keys.len(),
                    "Redis answers again; possibly stale cache entries deleted"
                );
                true
            }
            Err(error) => {
                self.failed(&error);
                false
            }
        }
    }

    fn is_pending_delete(&self, key: &str) -> bool {
        let pending = self.pending_deletes.lock().unwrap_or_else(|e| e.into_inner());
        !pending.is_empty() && pending.contains(key)
    }

    fn remember_delete(&self, key: String) {
        let mut pending = self.pending_deletes.lock().unwrap_or_else(|e| e.into_inner());
        if pending.len() < MAX_PENDING_DELETES {
            pending.insert(key);
        } else if let Some(suppressed) = self.overflows.occurred(Instant::now()) {
            tracing::warn!(
                kind = self.kind,
                suppressed,
                "too many cache entries awaiting deletion; further ones may stay stale until their TTL"
            );
        }
    }

    /// Bounds a call, connecting included, by the response timeout: a cache that answers late is no
    /// use, and a request should not wait out connection retries.
    async fn bounded<T>(&self, call: impl Future<Output = redis::RedisResult<T>>) -> redis::RedisResult<T> {
        match tokio::time::timeout(self.call_timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "Redis cache call timed out").into()),
        }
    }

    /// Notes a Redis failure: skip Redis for a while, and log if this interval has not logged yet.
    fn failed(&self, error: &redis::RedisError) {
        let now = Instant::now();
        *self.skip_until.lock().unwrap_or_else(|e| e.into_inner()) = Some(now + self.retry_interval);
        if let Some(suppressed) = self.failures.occurred(now) {
            tracing::warn!(
                kind = self.kind,
                %error,
                suppressed,
                "Redis cache unavailable; serving from the inner store"
            );
        }
    }
}
