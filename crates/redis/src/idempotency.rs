//! Idempotency keys in Redis: one hash per (scope, key) with the request's fingerprint, the claim time
//! and, once complete, the response; it expires `ttl` after the claim.

use std::sync::LazyLock;

use anyhow::Context as _;
use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use redis::Script;
use ridehail_ports::StoreResult;
use ridehail_ports::{IdempotencyClaim, IdempotencyStore, StoredResponse};

use crate::client::RedisClient;

/// KEYS: entry. ARGV: fingerprint, now (ms), ttl (ms). An entry claimed before `now - ttl` counts as
/// absent even if Redis has not expired it yet (the caller's clock decides, as in every adapter).
/// Returns `{"claimed"}`, `{"in_progress"}`, `{"mismatch"}` or `{"replay", response}`.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "local now, ttl = tonumber(ARGV[2]), tonumber(ARGV[3])
         local e = redis.call('HMGET', KEYS[1], 'fingerprint', 'claimed_at', 'response')
         if e[1] and tonumber(e[2]) >= now - ttl then
             if e[1] ~= ARGV[1] then return {'mismatch'} end
             if e[3] then return {'replay', e[3]} end
             return {'in_progress'}
         end
         redis.call('DEL', KEYS[1])
         redis.call('HSET', KEYS[1], 'fingerprint', ARGV[1], 'claimed_at', ARGV[2])
         redis.call('PEXPIRE', KEYS[1], math.max(ttl, 1))
         return {'claimed'}",
    )
});

/// KEYS: entry. ARGV: response. Only an existing entry is completed (keeping its TTL).
static COMPLETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'response', ARGV[1]) end
         return 0",
    )
});

/// KEYS: entry. Forgets the entry unless it is complete.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('HEXISTS', KEYS[1], 'response') == 0 then redis.call('DEL', KEYS[1]) end
         return 0",
    )
});

/// [`IdempotencyStore`] on Redis.
#[derive(Debug, Clone)]
pub struct RedisIdempotency {
    redis: RedisClient,
}

impl RedisIdempotency {
    pub fn new(redis: RedisClient) -> Self {
        Self { redis }
    }

    /// The scope's length keeps (scope, key) pairs apart even when either contains the separator.
    fn entry(&self, scope: &str, key: &str) -> String {
        self.redis.key(&format!("idempotency:{}:{scope}:{key}", scope.len()))
    }
}

#[async_trait]
impl IdempotencyStore for RedisIdempotency {
    async fn claim(
        &self,
        scope: &str,
        key: &str,
        fingerprint: &str,
        now: DateTime<Utc>,
        ttl: Duration,
    ) -> StoreResult<IdempotencyClaim> {
        let reply: Vec<String> = CLAIM
            .key(self.entry(scope, key))
            .arg(fingerprint)
            .arg(now.timestamp_millis())
            .arg(ttl.num_milliseconds())
            .invoke_async(&mut self.redis.conn())
            .await
            .context("claiming an idempotency key in Redis")?;
        match reply.as_slice() {
            [outcome] if outcome == "claimed" => Ok(IdempotencyClaim::Claimed),
            [outcome] if outcome == "in_progress" => Ok(IdempotencyClaim::InProgress),
            [outcome] if outcome == "mismatch" => Ok(IdempotencyClaim::Mismatch),
            [outcome, response] if outcome == "replay" => Ok(IdempotencyClaim::Replay(
                serde_json::from_str(response).context("a stored idempotent response does not decode")?,
            )),
            other => {
                return Err(
                    anyhow::anyhow!("unexpected idempotency claim reply from Redis: {:?}", other.first()).into()
                );
            }
        }
    }

    async fn complete(&self, scope: &str, key: &str, response: &StoredResponse) -> StoreResult<()> {
        COMPLETE
            .key(self.entry(scope, key))
            .arg(serde_json::to_string(response)?)
            .invoke_async::<i64>(&mut self.redis.conn())
            .await
            .context("completing an idempotency key in Redis")?;
        Ok(())
    }

    async fn release(&self, scope: &str, key: &str) -> StoreResult<()> {
        RELEASE
            .key(self.entry(scope, key))
            .invoke_async::<i64>(&mut self.redis.conn())
            .await
            .context("releasing an idempotency key in Redis")?;
        Ok(())
    }

    async fn ping(&self) -> StoreResult<()> {
        self.redis.ping().await
    }
}

#[cfg(test)]
mod tests {
    use ridehail_contract as contract;

    use super::*;
    use crate::RedisSettings;

    #[tokio::test]
    async fn a_claim_expires_in_redis_after_its_ttl() {
        let Some(url) = contract::test_server("RIDEHAIL_TEST_REDIS_URL") else { return };
        let settings = RedisSettings { url, key_prefix: contract::unique_name("idem") + ":", ..Default::default() };
        let store = RedisIdempotency::new(crate::connect(&settings).await.unwrap());
        let ttl = Duration::minutes(10);
        assert_eq!(store.claim("user-1", "k", "fp", Utc::now(), ttl).await.unwrap(), IdempotencyClaim::Claimed);
        let remaining: i64 =
            redis::cmd("PTTL").arg(store.entry("user-1", "k")).query_async(&mut store.redis.conn()).await.unwrap();
        assert!((1..=ttl.num_milliseconds()).contains(&remaining), "PTTL {remaining}");
        // Completing keeps the expiry.
        let response = StoredResponse { status: 201, headers: vec![], body: b"{}".to_vec() };
        store.complete("user-1", "k", &response).await.unwrap();
        let remaining: i64 =
            redis::cmd("PTTL").arg(store.entry("user-1", "k")).query_async(&mut store.redis.conn()).await.unwrap();
        assert!(remaining > 0, "PTTL {remaining}");
    }

    #[tokio::test]
    async fn scopes_and_keys_containing_the_separator_do_not_collide() {
        let Some(url) = contract::test_server("RIDEHAIL_TEST_REDIS_URL") else { return };
        let settings = RedisSettings { url, key_prefix: contract::unique_name("idem") + ":", ..Default::default() };
        let store = RedisIdempotency::new(crate::connect(&settings).await.unwrap());
        let (now, ttl) = (Utc::now(), Duration::hours(1));
        assert_eq!(store.claim("a:b", "c", "fp-1", now, ttl).await.unwrap(), IdempotencyClaim::Claimed);
        assert_eq!(store.claim("a", "b:c", "fp-2", now, ttl).await.unwrap(), IdempotencyClaim::Claimed);
    }
}
