use std::sync::Arc;

use async_trait::async_trait;
use ridehail_events::RideId;
use ridehail_runtime::ports::{RideQuery, RideView, RideViews};

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
}

#[async_trait]
impl RideViews for CachedRideViews {
    async fn upsert(&self, view: &RideView) -> anyhow::Result<bool> {
        let wrote = self.inner.upsert(view).await?;
        if wrote {
            self.cache.written(self.cache.key(&view.ride_id), view).await;
        }
        Ok(wrote)
    }

    async fn get(&self, ride_id: RideId) -> anyhow::Result<Option<RideView>> {
        self.cache.read(self.cache.key(&ride_id), self.inner.get(ride_id)).await
    }

    async fn list(&self, query: &RideQuery) -> anyhow::Result<Vec<RideView>> {
        self.inner.list(query).await
    }

    async fn count_waiting_in_cell(&self, cell: &str) -> anyhow::Result<u64> {
        self.inner.count_waiting_in_cell(cell).await
    }

    /// The inner store's health: without Redis the views are still served, only slower.
    async fn ping(&self) -> anyhow::Result<()> {
        self.inner.ping().await
    }
}
