use std::sync::Arc;

use async_trait::async_trait;
use ridehail_events::UserId;
use ridehail_ports::StoreResult;
use ridehail_ports::{Credentials, UserProfile, UserViews};

use super::{CacheStats, ReadThrough, Versioned};
use crate::client::RedisClient;

impl Versioned for UserProfile {
    fn version(&self) -> u64 {
        self.version
    }
}

/// [`UserViews`] with a Redis read-through cache of profiles. Credentials always come from the inner
/// store: login is rare, and password hashes stay out of the cache.
#[derive(Debug)]
pub struct CachedUserViews {
    inner: Arc<dyn UserViews>,
    cache: ReadThrough,
}

impl CachedUserViews {
    pub fn new(inner: Arc<dyn UserViews>, redis: RedisClient) -> Self {
        Self { inner, cache: ReadThrough::new(redis, "profile") }
    }

    pub fn stats(&self) -> CacheStats {
        self.cache.stats()
    }
}

#[async_trait]
impl UserViews for CachedUserViews {
    async fn upsert_profile(&self, profile: &UserProfile) -> StoreResult<bool> {
        let wrote = self.inner.upsert_profile(profile).await?;
        if wrote {
            self.cache.written(self.cache.key(&profile.user_id), profile).await;
        }
        Ok(wrote)
    }

    async fn profile(&self, user_id: UserId) -> StoreResult<Option<UserProfile>> {
        self.cache.read(self.cache.key(&user_id), self.inner.profile(user_id)).await
    }

    async fn upsert_credentials(&self, credentials: &Credentials) -> StoreResult<bool> {
        self.inner.upsert_credentials(credentials).await
    }

    async fn credentials_by_email(&self, email_normalised: &str) -> StoreResult<Option<Credentials>> {
        self.inner.credentials_by_email(email_normalised).await
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
