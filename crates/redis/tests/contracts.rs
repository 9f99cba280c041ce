//! The port contract suites against the Redis adapters, each test under its own key prefix on the shared
//! test server (`RIDEHAIL_TEST_REDIS_URL`), and the cache decorators' own behaviour.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use ridehail_contract::Fixture;
use ridehail_events::{RideId, UserId};
use ridehail_ports::StoreResult;
use ridehail_ports::{DriverLocator, Fix, RideParty, RideQuery, RideView, RideViews, UserViews};
use ridehail_redis::{
    CacheStats, CachedRideViews, CachedUserViews, RedisClient, RedisCommandStatus, RedisDriverLocator,
    RedisIdempotency, RedisSettings,
};
use ridehail_sqlite::{Db, EmbeddedRideViews, EmbeddedUserViews};
use tempfile::TempDir;
use tokio::sync::oneshot;

fn settings(url: String) -> RedisSettings {
    RedisSettings {
        url,
        key_prefix: format!("{}:", ridehail_contract::unique_name("ridehail-test")),
        ..RedisSettings::default()
    }
}

/// A client under a fresh key prefix, or `None` (test skipped) without a test server.
async fn redis() -> Option<RedisClient> {
    let url = ridehail_contract::test_server("RIDEHAIL_TEST_REDIS_URL")?;
    Some(ridehail_redis::connect(&settings(url)).await.unwrap())
}

/// A client for a Redis that is not there: a loopback port nothing listens on.
fn unreachable_redis() -> RedisClient {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    ridehail_redis::connect_lazy(&settings(format!("redis://127.0.0.1:{port}"))).unwrap()
}

fn embedded_rides(dir: &TempDir) -> EmbeddedRideViews {
    EmbeddedRideViews::open(&dir.path().join("rides.sqlite")).unwrap()
}

fn embedded_users(dir: &TempDir) -> EmbeddedUserViews {
    EmbeddedUserViews::new(Db::open(&dir.path().join("users.sqlite")).unwrap()).unwrap()
}

async fn locator() -> Option<Fixture<RedisDriverLocator>> {
    Some(Fixture::new(Arc::new(RedisDriverLocator::new(redis().await?))))
}
ridehail_contract::locator_suite!(locator);

async fn command_status() -> Option<Fixture<RedisCommandStatus>> {
    Some(Fixture::new(Arc::new(RedisCommandStatus::new(redis().await?))))
}
ridehail_contract::command_status_suite!(command_status);

async fn idempotency() -> Option<Fixture<RedisIdempotency>> {
    Some(Fixture::new(Arc::new(RedisIdempotency::new(redis().await?))))
}
ridehail_contract::idempotency_suite!(idempotency);

async fn limiter() -> Option<Fixture<ridehail_redis::RedisLimiter>> {
    Some(Fixture::new(Arc::new(ridehail_redis::RedisLimiter::new(redis().await?))))
}
ridehail_contract::limiter_suite!(limiter);

/// The limiter over an unreachable Redis counts in this process instead: the same contract holds.
async fn limiter_without_redis() -> Option<Fixture<ridehail_redis::RedisLimiter>> {
    Some(Fixture::new(Arc::new(ridehail_redis::RedisLimiter::new(unreachable_redis()))))
}
mod limiter_over_unreachable_redis {
    use super::*;
    ridehail_contract::limiter_suite!(limiter_without_redis);
}

/// The cache over embedded views, on a healthy Redis: after the case, nothing fell back.
async fn cached_rides() -> Option<Fixture<CachedRideViews>> {
    let redis = redis().await?;
    let dir = TempDir::new().unwrap();
    let views = Arc::new(CachedRideViews::new(Arc::new(embedded_rides(&dir)), redis));
    let after = views.clone();
    Some(Fixture::new(views).keeping(dir).then(async move {
        assert_eq!(after.stats().fallbacks, 0, "Redis was up: {:?}", after.stats());
    }))
}
ridehail_contract::ride_views_suite!(cached_rides);

async fn cached_users() -> Option<Fixture<CachedUserViews>> {
    let redis = redis().await?;
    let dir = TempDir::new().unwrap();
    let views = Arc::new(CachedUserViews::new(Arc::new(embedded_users(&dir)), redis));
    let after = views.clone();
    Some(Fixture::new(views).keeping(dir).then(async move {
        assert_eq!(after.stats().fallbacks, 0, "Redis was up: {:?}", after.stats());
    }))
}
ridehail_contract::user_views_suite!(cached_users);

// ------------------------------------------------------------------ locator, beyond the contract

#[tokio::test]
async fn a_driver_who_moves_is_counted_in_the_new_cell_only() {
    let Some(redis) = redis().await else { return };
    let locator = RedisDriverLocator::new(redis);
    let from = ridehail_events::GeoPoint { lat: 10.005, lon: 20.005 };
    let to = ridehail_events::GeoPoint { lat: 10.025, lon: 20.005 };
    assert_ne!(from.cell(), to.cell());
    let now = chrono::Utc::now();
    let driver = UserId::new();
    let fix = |location, seconds_ago| Fix { location, at: now - chrono::Duration::seconds(seconds_ago) };
    locator.update_driver(driver, Some(fix(from, 3)), true, 1).await.unwrap();
    assert_eq!(locator.available_in_cell(&from.cell(), now).await.unwrap(), 1);
    assert!(locator.report_location(driver, fix(to, 2)).await.unwrap());
    assert_eq!(locator.available_in_cell(&from.cell(), now).await.unwrap(), 0);
    assert_eq!(locator.available_in_cell(&to.cell(), now).await.unwrap(), 1);
    // Offline keeps the position; back online without a new one, the driver is found there again.
    locator.update_driver(driver, None, false, 3).await.unwrap();
    assert_eq!(locator.available_in_cell(&to.cell(), now).await.unwrap(), 0);
    locator.update_driver(driver, None, true, 4).await.unwrap();
    let found = locator.reserve_nearest(to, 100, &[], RideId::new(), now, now).await.unwrap().unwrap();
    assert_eq!(found.driver_id, driver);
    assert!(found.distance_m < 1.0, "distance {}", found.distance_m);
}

#[tokio::test]
async fn a_driver_beyond_the_geo_latitude_range_is_recorded_but_not_searchable() {
    let Some(redis) = redis().await else { return };
    let locator = RedisDriverLocator::new(redis);
    let polar = ridehail_events::GeoPoint { lat: 89.5, lon: 0.0 };
    let now = chrono::Utc::now();
    locator.update_driver(UserId::new(), Some(Fix { location: polar, at: now }), true, 1).await.unwrap();
    assert_eq!(locator.available_in_cell(&polar.cell(), now).await.unwrap(), 1);
    assert_eq!(locator.reserve_nearest(polar, 1_000, &[], RideId::new(), now, now).await.unwrap(), None);
}

// ------------------------------------------------------------------ cache decorators

/// A new ride's id, and its view at a given version.
fn new_ride() -> (RideId, impl Fn(u64) -> RideView) {
    let (ride_id, rider_id) = (RideId::new(), UserId::new());
    (ride_id, move |version| ridehail_contract::ride_view(ride_id, rider_id, version))
}

#[tokio::test]
async fn ride_reads_count_hits_and_misses() {
    let Some(redis) = redis().await else { return };
    let dir = TempDir::new().unwrap();
    let inner = Arc::new(embedded_rides(&dir));
    let views = CachedRideViews::new(inner.clone(), redis);
    let (ride_id, view) = new_ride();
    // Written behind the cache's back: the first read misses and fills, the second hits.
    inner.upsert(&view(1)).await.unwrap();
    assert_eq!(views.get(ride_id).await.unwrap(), Some(view(1)));
    assert_eq!(views.get(ride_id).await.unwrap(), Some(view(1)));
    assert_eq!(views.stats(), CacheStats { hits: 1, misses: 1, fallbacks: 0 });
    // An unknown ride is not cached: each read asks the inner store.
    let unknown = RideId::new();
    assert_eq!(views.get(unknown).await.unwrap(), None);
    assert_eq!(views.get(unknown).await.unwrap(), None);
    assert_eq!(views.stats(), CacheStats { hits: 1, misses: 3, fallbacks: 0 });
    // Lists and counts are not cached reads.
    let query = RideQuery { party: RideParty::Rider(UserId::new()), status: None, limit: 5, before: None };
    views.list(&query).await.unwrap();
    views.count_waiting_in_cell("0:0").await.unwrap();
    assert_eq!(views.stats(), CacheStats { hits: 1, misses: 3, fallbacks: 0 });
}

#[tokio::test]
async fn a_read_after_an_upsert_returns_the_new_view_from_the_cache() {
    let Some(redis) = redis().await else { return };
    let dir = TempDir::new().unwrap();
    let views = CachedRideViews::new(Arc::new(embedded_rides(&dir)), redis);
    let (ride_id, view) = new_ride();
    views.upsert(&view(1)).await.unwrap();
    assert_eq!(views.get(ride_id).await.unwrap(), Some(view(1)));
    let mut newer = view(2);
    newer.status = ridehail_events::ride::RideStatus::DriverAssigned;
    assert!(views.upsert(&newer).await.unwrap());
    assert_eq!(views.get(ride_id).await.unwrap(), Some(newer.clone()));
    // A stale upsert the inner store refuses leaves the cache alone too.
    assert!(!views.upsert(&view(1)).await.unwrap());
    assert_eq!(views.get(ride_id).await.unwrap(), Some(newer));
    assert_eq!(views.stats(), CacheStats { hits: 3, misses: 0, fallbacks: 0 });
}

#[tokio::test]
async fn profile_reads_are_cached_and_credentials_pass_through() {
    let Some(redis) = redis().await else { return };
    let dir = TempDir::new().unwrap();
    let views = CachedUserViews::new(Arc::new(embedded_users(&dir)), redis);
    ridehail_contract::user_views_store_profiles_and_credentials(&views).await;
    // The contract read one stored profile (written through, so a hit) and one unknown user (a miss);
    // its credential reads did not touch the cache.
    assert_eq!(views.stats(), CacheStats { hits: 1, misses: 1, fallbacks: 0 });
}

/// A ride store whose next `get` pauses after reading, as a reader descheduled between loading a view
/// and caching it would.
#[derive(Debug)]
struct PausedRead {
    inner: EmbeddedRideViews,
    /// (tell the test the read happened, wait for the test's go-ahead)
    pause: Mutex<Option<(oneshot::Sender<()>, oneshot::Receiver<()>)>>,
}

#[async_trait]
impl RideViews for PausedRead {
    async fn upsert(&self, view: &RideView) -> StoreResult<bool> {
        self.inner.upsert(view).await
    }
    async fn get(&self, ride_id: RideId) -> StoreResult<Option<RideView>> {
        let view = self.inner.get(ride_id).await?;
        let pause = self.pause.lock().unwrap().take();
        if let Some((read, go)) = pause {
            read.send(()).unwrap();
            go.await.unwrap();
        }
        Ok(view)
    }
    async fn list(&self, query: &RideQuery) -> StoreResult<Vec<RideView>> {
        self.inner.list(query).await
    }
    async fn count_waiting_in_cell(&self, cell: &str) -> StoreResult<u64> {
        self.inner.count_waiting_in_cell(cell).await
    }
    async fn waiting_since(&self, before: chrono::DateTime<chrono::Utc>, limit: usize) -> StoreResult<Vec<RideView>> {
        self.inner.waiting_since(before, limit).await
    }
    async fn ping(&self) -> StoreResult<()> {
        self.inner.ping().await
    }
}

#[tokio::test]
async fn a_reader_that_loaded_an_old_view_cannot_cache_it_over_a_newer_one() {
    let Some(redis) = redis().await else { return };
    let dir = TempDir::new().unwrap();
    let (read_tx, read_rx) = oneshot::channel();
    let (go_tx, go_rx) = oneshot::channel();
    let inner = Arc::new(PausedRead { inner: embedded_rides(&dir), pause: Mutex::new(Some((read_tx, go_rx))) });
    let views = Arc::new(CachedRideViews::new(inner.clone(), redis));
    let (ride_id, view) = new_ride();
    inner.inner.upsert(&view(1)).await.unwrap();

    // The reader misses, loads version 1, and pauses before caching it.
    let reader = tokio::spawn({
        let views = views.clone();
        async move { views.get(ride_id).await.unwrap() }
    });
    read_rx.await.unwrap();
    // Meanwhile the projection writes version 2, through the cache.
    assert!(views.upsert(&view(2)).await.unwrap());
    go_tx.send(()).unwrap();
    assert_eq!(reader.await.unwrap(), Some(view(1)), "the reader answers what it loaded");

    // Its late fill was refused: the cache serves version 2.
    assert_eq!(views.get(ride_id).await.unwrap(), Some(view(2)));
    assert_eq!(views.stats(), CacheStats { hits: 1, misses: 1, fallbacks: 0 });
}

#[tokio::test]
async fn with_redis_unreachable_the_decorators_serve_from_the_inner_store() {
    let dir = TempDir::new().unwrap();
    let rides = CachedRideViews::new(Arc::new(embedded_rides(&dir)), unreachable_redis());
    let users = CachedUserViews::new(Arc::new(embedded_users(&dir)), unreachable_redis());
    let started = std::time::Instant::now();
    ridehail_contract::ride_views_only_move_forward(&rides).await;
    ridehail_contract::ride_views_page_a_party_s_rides_newest_first(&rides).await;
    ridehail_contract::ride_views_count_waiting_rides_per_cell(&rides).await;
    ridehail_contract::user_views_store_profiles_and_credentials(&users).await;
    for stats in [rides.stats(), users.stats()] {
        assert_eq!((stats.hits, stats.misses), (0, 0), "{stats:?}");
        assert!(stats.fallbacks >= 2, "{stats:?}");
    }
    rides.ping().await.unwrap();
    users.ping().await.unwrap();
    // Connection refused fails fast, and later calls skip Redis instead of retrying each time.
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "took {:?}", started.elapsed());
}

/// Forwards every connection to `port` on to `target` once started, standing in for a Redis that comes
/// back on the address the client was given.
async fn forward(port: u16, target: String) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else { return };
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut server) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    })
}

#[tokio::test]
async fn a_write_made_while_redis_was_down_deletes_the_stale_entry_once_redis_is_back() {
    let Some(url) = ridehail_contract::test_server("RIDEHAIL_TEST_REDIS_URL") else { return };
    let up = settings(url.clone());
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let down = RedisSettings { url: format!("redis://127.0.0.1:{port}"), cache_retry_interval_ms: 50, ..up.clone() };
    let dir = TempDir::new().unwrap();
    let store: Arc<dyn RideViews> = Arc::new(embedded_rides(&dir));
    // Another process (the edge) reads through the same cache; this one (a projection) lost Redis.
    let edge = CachedRideViews::new(store.clone(), ridehail_redis::connect(&up).await.unwrap());
    let projection = CachedRideViews::new(store, ridehail_redis::connect_lazy(&down).unwrap());
    let (ride_id, view) = new_ride();
    edge.upsert(&view(1)).await.unwrap();

    assert!(projection.upsert(&view(2)).await.unwrap());
    assert_eq!(edge.get(ride_id).await.unwrap(), Some(view(1)), "stale until the projection reaches Redis");

    let target = url.trim_start_matches("redis://").trim_end_matches('/').to_owned();
    let forwarder = forward(port, target).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    // Reads keep being answered (from the store) until the projection's client reconnects.
    while projection.stats().hits + projection.stats().misses == 0 {
        assert!(std::time::Instant::now() < deadline, "never reconnected: {:?}", projection.stats());
        assert_eq!(projection.get(ride_id).await.unwrap(), Some(view(2)));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(edge.get(ride_id).await.unwrap(), Some(view(2)));
    forwarder.abort();
}

#[tokio::test]
async fn a_silent_redis_costs_one_timeout_per_retry_interval_not_one_per_read() {
    // Accepts connections (the kernel completes the handshake) but never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}", silent.local_addr().unwrap());
    let settings = RedisSettings { response_timeout_ms: 200, cache_retry_interval_ms: 60_000, ..settings(url) };
    let dir = TempDir::new().unwrap();
    let views = CachedRideViews::new(Arc::new(embedded_rides(&dir)), ridehail_redis::connect_lazy(&settings).unwrap());
    let (ride_id, view) = new_ride();
    let started = std::time::Instant::now();
    views.upsert(&view(1)).await.unwrap();
    for _ in 0..20 {
        assert_eq!(views.get(ride_id).await.unwrap(), Some(view(1)));
    }
    assert_eq!(views.stats(), CacheStats { hits: 0, misses: 0, fallbacks: 20 });
    // The upsert waited for its cache update (and the delete after it); every read skipped Redis.
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "took {:?}", started.elapsed());
}

/// The whole views contract through the caches while Redis is unreachable: every read and write is
/// served by the inner store, and the cache never claims a hit or a miss.
mod over_unreachable_redis {
    use super::*;

    fn served_without_redis<A: Send + Sync + 'static>(views: Arc<A>, stats: fn(&A) -> CacheStats) -> Fixture<A> {
        let after = views.clone();
        Fixture::new(views).then(async move {
            let stats = stats(&after);
            assert_eq!((stats.hits, stats.misses), (0, 0), "{stats:?}");
        })
    }

    async fn cached_rides() -> Option<Fixture<CachedRideViews>> {
        let dir = TempDir::new().unwrap();
        let views = Arc::new(CachedRideViews::new(Arc::new(embedded_rides(&dir)), unreachable_redis()));
        Some(served_without_redis(views, CachedRideViews::stats).keeping(dir))
    }
    ridehail_contract::ride_views_suite!(cached_rides);

    async fn cached_users() -> Option<Fixture<CachedUserViews>> {
        let dir = TempDir::new().unwrap();
        let views = Arc::new(CachedUserViews::new(Arc::new(embedded_users(&dir)), unreachable_redis()));
        Some(served_without_redis(views, CachedUserViews::stats).keeping(dir))
    }
    ridehail_contract::user_views_suite!(cached_users);
}

/// A ride store that can be taken down.
#[derive(Debug)]
struct Switchable {
    inner: EmbeddedRideViews,
    down: std::sync::atomic::AtomicBool,
}

impl Switchable {
    fn check(&self) -> StoreResult<()> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(ridehail_ports::StoreError::Unavailable(anyhow::anyhow!("the store is down")));
        }
        Ok(())
    }
}

#[async_trait]
impl RideViews for Switchable {
    async fn upsert(&self, view: &RideView) -> StoreResult<bool> {
        self.check()?;
        self.inner.upsert(view).await
    }
    async fn get(&self, ride_id: RideId) -> StoreResult<Option<RideView>> {
        self.check()?;
        self.inner.get(ride_id).await
    }
    async fn list(&self, query: &RideQuery) -> StoreResult<Vec<RideView>> {
        self.check()?;
        self.inner.list(query).await
    }
    async fn count_waiting_in_cell(&self, cell: &str) -> StoreResult<u64> {
        self.check()?;
        self.inner.count_waiting_in_cell(cell).await
    }
    async fn waiting_since(&self, before: chrono::DateTime<chrono::Utc>, limit: usize) -> StoreResult<Vec<RideView>> {
        self.check()?;
        self.inner.waiting_since(before, limit).await
    }
    async fn ping(&self) -> StoreResult<()> {
        self.check()
    }
}

#[tokio::test]
async fn an_aged_entry_is_served_marked_while_the_store_is_down_and_refreshed_once_it_is_back() {
    let Some(url) = ridehail_contract::test_server("RIDEHAIL_TEST_REDIS_URL") else { return };
    let redis = ridehail_redis::connect(&RedisSettings { cache_ttl_seconds: 1, ..settings(url) }).await.unwrap();
    let dir = TempDir::new().unwrap();
    let store = Arc::new(Switchable { inner: embedded_rides(&dir), down: Default::default() });
    let views = CachedRideViews::new(store.clone(), redis);
    let (ride_id, view) = new_ride();
    views.upsert(&view(1)).await.unwrap();
    assert_eq!(views.get_or_stale(ride_id).await.unwrap(), Some((view(1), None)), "fresh: a plain hit");
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    store.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let (stale, age) = views.get_or_stale(ride_id).await.unwrap().expect("the aged copy");
    assert_eq!(stale, view(1));
    assert!(age.is_some_and(|a| a >= std::time::Duration::from_secs(1)), "{age:?}");
    assert_eq!(views.stale_served(), 1);
    assert!(views.get(ride_id).await.is_err(), "a reader that did not ask for stale copies gets the error");
    store.down.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(views.get_or_stale(ride_id).await.unwrap(), Some((view(1), None)), "back: fresh from the store");
}
