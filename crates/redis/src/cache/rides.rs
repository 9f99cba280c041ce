use std::sync::Arc;

use async_trait::async_trait;
use ridehail_events::RideId;
#[cfg(test)]
use ridehail_events::UserId;
use ridehail_ports::StoreResult;
use ridehail_ports::{RideQuery, RideView, RideViews};

use super::{CacheStats, ReadThrough, Versioned};
use crate::client::RedisClient;

impl Versioned for RideView {
    fn version(&self) -> u64 {
        self.version
    }
}

/// [`RideViews`] with a Redis read-through cache of single rides (`get`). Lists and counts go to the
/// inner store, which has the indexes for them.
#[derive(Debug)]
pub struct CachedRideViews {
    inner: Arc<dyn RideViews>,
    cache: ReadThrough,
}

impl CachedRideViews {
    pub fn new(inner: Arc<dyn RideViews>, redis: RedisClient) -> Self {
        Self { inner, cache: ReadThrough::new(redis, "ride") }
    }

    pub fn stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// Reads answered from an aged entry because the inner store was down.
    pub fn stale_served(&self) -> u64 {
        self.cache.stale_served()
    }
}

#[async_trait]
impl RideViews for CachedRideViews {
    async fn upsert(&self, view: &RideView) -> StoreResult<bool> {
        let wrote = self.inner.upsert(view).await?;
        if wrote {
            self.cache.written(self.cache.key(&view.ride_id), view).await;
        }
        Ok(wrote)
    }

    /// The cache is brought up to each view the batch held (an entry never moves back a version).
    async fn upsert_many(&self, views: &[RideView]) -> StoreResult<u64> {
        let wrote = self.inner.upsert_many(views).await?;
        for view in views {
            self.cache.written(self.cache.key(&view.ride_id), view).await;
        }
        Ok(wrote)
    }

    async fn get(&self, ride_id: RideId) -> StoreResult<Option<RideView>> {
        self.cache.read(self.cache.key(&ride_id), self.inner.get(ride_id)).await
    }

    async fn get_or_stale(&self, ride_id: RideId) -> StoreResult<Option<(RideView, Option<std::time::Duration>)>> {
        self.cache.read_allowing_stale(self.cache.key(&ride_id), self.inner.get(ride_id), true).await
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

    async fn forget_cached(&self) -> StoreResult<()> {
        self.inner.forget_cached().await?;
        let deleted = self.cache.forget_all().await?;
        tracing::info!(deleted, "cache emptied after a projection switch");
        Ok(())
    }

    /// The inner store's health: without Redis the views are still served, only slower.
    async fn ping(&self) -> StoreResult<()> {
        self.inner.ping().await
    }
}

#[cfg(test)]
mod tests {
    use ridehail_contract as contract;
    use ridehail_sqlite::EmbeddedRideViews;

    use super::*;
    use crate::{CacheStats, RedisSettings};

    #[tokio::test]
    async fn an_undecodable_entry_is_a_miss_and_is_replaced_by_the_inner_view() {
        let Some(url) = contract::test_server("RIDEHAIL_TEST_REDIS_URL") else { return };
        let settings = RedisSettings { url, key_prefix: contract::unique_name("cache") + ":", ..Default::default() };
        let redis = crate::connect(&settings).await.unwrap();
        let dir = tempfile::TempDir::new().unwrap();
        let inner = Arc::new(EmbeddedRideViews::open(&dir.path().join("rides.sqlite")).unwrap());
        let views = CachedRideViews::new(inner.clone(), redis.clone());
        let view = contract::ride_view(RideId::new(), UserId::new(), 3);
        inner.upsert(&view).await.unwrap();
        // An entry no version of the code wrote, at a higher version than the real view.
        let key = views.cache.key(&view.ride_id);
        redis::cmd("HSET")
            .arg(&key)
            .arg("version")
            .arg(99)
            .arg("body")
            .arg("{not json")
            .query_async::<i64>(&mut redis.conn())
            .await
            .unwrap();

        assert_eq!(views.get(view.ride_id).await.unwrap(), Some(view.clone()));
        assert_eq!(views.get(view.ride_id).await.unwrap(), Some(view));
        assert_eq!(views.stats(), CacheStats { hits: 1, misses: 1, fallbacks: 0 });
    }
}
