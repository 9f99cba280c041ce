//! The Redis limiter: rate limits (GCRA) and failure lock-outs shared by every edge, each one Lua
//! script on one key (atomic, cluster-safe), timed by the Redis server's clock so edges with skewed
//! clocks agree. While Redis is down it falls back to counting in this process (the in-memory
//! limiter): limits then hold per edge instead of across edges, and that is logged once per interval.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use ridehail_ports::{Admission, Limiter, LockoutPolicy, MemoryLimiter, Rate, StoreResult};

use crate::cache::LogLimiter;
use crate::client::RedisClient;

/// GCRA: the key holds the theoretical arrival time (µs, server clock). Returns the wait in µs before
/// the request would be admitted (0 = admitted now, and counted).
const ADMIT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - burst * interval
if now < allow_at then
  return allow_at - now
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return 0
";

/// GCRA over several keys at once (`ARGV`: interval and burst per key, in `KEYS` order): counts all of
/// them only when every one admits; returns the longest wait in µs (0 = admitted).
const ADMIT_ALL: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local wait = 0
local tats = {}
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  local new_tat = tat + interval
  local allow_at = new_tat - burst * interval
  if now < allow_at then
    if allow_at - now > wait then wait = allow_at - now end
  end
  tats[i] = new_tat
end
if wait > 0 then return wait end
for i, key in ipairs(KEYS) do
  redis.call('SET', key, string.format('%.0f', tats[i]), 'PX', math.ceil((tats[i] - now) / 1000) + 1)
end
return 0
";

/// Counts a failure; returns the lock-out it starts, in ms (0 = none).
const FAIL: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local free, first, max, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local count = redis.call('HINCRBY', KEYS[1], 'count', 1)
local over = count - free - 1
local lock = 0
if over >= 0 then
  lock = math.min(first * math.pow(2, math.min(over, 30)), max) * 1000
  redis.call('HSET', KEYS[1], 'locked_until', string.format('%.0f', now + lock))
end
redis.call('PEXPIRE', KEYS[1], math.max(window * 1000, lock))
return lock
";

/// The lock-out left, in ms (0 = none).
const LOCKED: &str = r"
local locked_until = tonumber(redis.call('HGET', KEYS[1], 'locked_until') or 0)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if locked_until > now then return locked_until - now end
return 0
";

#[derive(Debug)]
pub struct RedisLimiter {
    redis: RedisClient,
    admit: redis::Script,
    admit_all: redis::Script,
    fail: redis::Script,
    locked: redis::Script,
    local: MemoryLimiter,
    fallback_log: LogLimiter,
    /// After a failure Redis is skipped until then (a down Redis must not cost every request a
    /// connection attempt).
    skip_until: std::sync::Mutex<Option<Instant>>,
}

impl RedisLimiter {
    pub fn new(redis: RedisClient) -> Self {
        let interval = Duration::from_secs(redis.settings().fallback_log_interval_seconds.max(1));
        Self {
            redis,
            admit: redis::Script::new(ADMIT),
            admit_all: redis::Script::new(ADMIT_ALL),
            fail: redis::Script::new(FAIL),
            locked: redis::Script::new(LOCKED),
            local: MemoryLimiter::new(),
            fallback_log: LogLimiter::new(interval),
            skip_until: std::sync::Mutex::new(None),
        }
    }

    /// Every limiter key carries one hash tag, so that several keys can be checked by one script on a
    /// cluster too.
    fn key(&self, key: &str) -> String {
        self.redis.key(&format!("{{limits}}:{key}"))
    }

    /// Whether to ask Redis now (not within the pause after a failure).
    fn usable(&self) -> bool {
        let skip = self.skip_until.lock().unwrap_or_else(|e| e.into_inner());
        skip.is_none_or(|until| Instant::now() >= until)
    }

    fn fell_back(&self, error: &redis::RedisError) {
        let pause = Duration::from_millis(self.redis.settings().cache_retry_interval_ms);
        *self.skip_until.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + pause);
        if let Some(held_back) = self.fallback_log.occurred(Instant::now()) {
            tracing::warn!(
                %error,
                held_back,
                "Redis unavailable: rate limits and lock-outs are counted in this process until it is back"
            );
        }
    }
}

#[async_trait]
impl Limiter for RedisLimiter {
    async fn admit(&self, key: &str, rate: Rate) -> StoreResult<Admission> {
        if !self.usable() {
            return self.local.admit(key, rate).await;
        }
        let interval_us = u64::try_from(rate.interval().as_micros()).unwrap_or(u64::MAX).max(1);
        let mut script = self.admit.key(self.key(key));
        script.arg(interval_us).arg(rate.burst.max(1));
        match script.invoke_async::<u64>(&mut self.redis.conn()).await {
            Ok(0) => Ok(Admission::Admitted),
            Ok(wait_us) => Ok(Admission::Limited { retry_after: Duration::from_micros(wait_us) }),
            Err(error) => {
                self.fell_back(&error);
                self.local.admit(key, rate).await
            }
        }
    }

    async fn admit_all(&self, checks: &[(String, Rate)]) -> StoreResult<Admission> {
        if !self.usable() {
            return self.local.admit_all(checks).await;
        }
        let mut invocation = self.admit_all.prepare_invoke();
        for (key, rate) in checks {
            let interval_us = u64::try_from(rate.interval().as_micros()).unwrap_or(u64::MAX).max(1);
            invocation.key(self.key(key)).arg(interval_us).arg(rate.burst.max(1));
        }
        match invocation.invoke_async::<u64>(&mut self.redis.conn()).await {
            Ok(0) => Ok(Admission::Admitted),
            Ok(wait_us) => Ok(Admission::Limited { retry_after: Duration::from_micros(wait_us) }),
            Err(error) => {
                self.fell_back(&error);
                self.local.admit_all(checks).await
            }
        }
    }

    async fn locked_for(&self, key: &str) -> StoreResult<Option<Duration>> {
        if !self.usable() {
            return self.local.locked_for(key).await;
        }
        match self.locked.key(self.key(key)).invoke_async::<u64>(&mut self.redis.conn()).await {
            Ok(0) => Ok(None),
            Ok(ms) => Ok(Some(Duration::from_millis(ms))),
            Err(error) => {
                self.fell_back(&error);
                self.local.locked_for(key).await
            }
        }
    }

    async fn record_failure(&self, key: &str, policy: &LockoutPolicy) -> StoreResult<Option<Duration>> {
        if !self.usable() {
            return self.local.record_failure(key, policy).await;
        }
        let mut script = self.fail.key(self.key(key));
        script
            .arg(policy.free_failures)
            .arg(policy.first_lockout_seconds)
            .arg(policy.max_lockout_seconds)
            .arg(policy.window_seconds);
        match script.invoke_async::<u64>(&mut self.redis.conn()).await {
            Ok(0) => Ok(None),
            Ok(ms) => Ok(Some(Duration::from_millis(ms))),
            Err(error) => {
                self.fell_back(&error);
                self.local.record_failure(key, policy).await
            }
        }
    }

    async fn clear_failures(&self, key: &str) -> StoreResult<()> {
        if !self.usable() {
            return self.local.clear_failures(key).await;
        }
        let deleted = redis::cmd("DEL").arg(self.key(key)).query_async::<i64>(&mut self.redis.conn()).await;
        if let Err(error) = deleted {
            self.fell_back(&error);
        }
        self.local.clear_failures(key).await
    }

    async fn ping(&self) -> StoreResult<()> {
        self.redis.ping().await
    }
}
