//! Command status in Redis, with pub/sub wake-ups for `wait_final`.
//!
//! Each status is a hash (`final` flag, JSON `body`) at `<prefix>command:<id>` with a TTL. Recording a
//! final status publishes the command id on `<prefix>command-final`; one subscriber connection per
//! store (opened on the first wait) wakes the requests waiting for that id, in this process. Waiters
//! also re-read every [`POLL_INTERVAL`], so a notification lost while the subscriber reconnects only
//! delays an answer.

use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use futures::StreamExt as _;
use redis::Script;
use ridehail_events::CommandId;
use ridehail_ports::{CommandState, CommandStatus, CommandStatusStore, CompletionWaiters};
use ridehail_ports::{RetryPolicy, StoreError, StoreResult};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::client::RedisClient;

/// How often a waiter re-reads the status even without a notification.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Pause between attempts to (re)open the subscriber connection.
/// How a lost command-final subscription is re-established: at once, then backing off to 5 s while
/// Redis stays away.
const RESUBSCRIBE: RetryPolicy = RetryPolicy::unbounded(50, 5_000);

/// KEYS: status. ARGV: final (1/0), body, ttl (s), channel, command id. A pending status never replaces a
/// final one; a final status is announced on the channel.
static RECORD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if ARGV[1] == '0' and redis.call('HGET', KEYS[1], 'final') == '1' then return 0 end
         redis.call('HSET', KEYS[1], 'final', ARGV[1], 'body', ARGV[2])
         redis.call('EXPIRE', KEYS[1], ARGV[3])
         if ARGV[1] == '1' then redis.call('PUBLISH', ARGV[4], ARGV[5]) end
         return 1",
    )
});

/// [`CommandStatusStore`] on Redis. Cheap to clone; clones share the subscriber connection.
#[derive(Debug, Clone)]
pub struct RedisCommandStatus {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    redis: RedisClient,
    channel: String,
    poll_interval: Duration,
    waiters: Arc<CompletionWaiters>,
    /// The subscriber task, started by the first wait.
    listener: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(listener) = self.listener.get_mut().unwrap_or_else(|e| e.into_inner()).take() {
            listener.abort();
        }
    }
}

impl RedisCommandStatus {
    pub fn new(redis: RedisClient) -> Self {
        Self::with_poll_interval(redis, POLL_INTERVAL)
    }

    fn with_poll_interval(redis: RedisClient, poll_interval: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                channel: redis.key("command-final"),
                redis,
                poll_interval,
                waiters: Arc::default(),
                listener: Mutex::new(None),
            }),
        }
    }

    fn key(&self, command_id: CommandId) -> String {
        self.inner.redis.key(&format!("command:{command_id}"))
    }

    /// Starts the subscriber on first use and, that first time, waits (up to the connect timeout) until
    /// it listens, so the first waits already get notifications.
    async fn ensure_listener(&self) {
        let mut subscribed = {
            let mut listener = self.inner.listener.lock().unwrap_or_else(|e| e.into_inner());
            if listener.is_some() {
                return;
            }
            let (tx, rx) = watch::channel(false);
            *listener = Some(tokio::spawn(listen(
                self.inner.redis.clone(),
                self.inner.channel.clone(),
                self.inner.waiters.clone(),
                tx,
            )));
            rx
        };
        let _ = tokio::time::timeout(self.inner.redis.settings().connect_timeout(), subscribed.wait_for(|s| *s)).await;
    }
}

/// Keeps one subscription to `channel` open, waking the waiters of each announced command.
async fn listen(redis: RedisClient, channel: String, waiters: Arc<CompletionWaiters>, subscribed: watch::Sender<bool>) {
    let timeout = redis.settings().connect_timeout();
    let mut waits = RESUBSCRIBE.delays();
    loop {
        let connection = async {
            let mut pubsub = redis.client().get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        match tokio::time::timeout(timeout, connection).await {
            Ok(Ok(mut pubsub)) => {
                subscribed.send_replace(true);
                waits = RESUBSCRIBE.delays();
                let mut messages = pubsub.on_message();
                while let Some(message) = messages.next().await {
                    match message.get_payload::<String>().ok().and_then(|id| id.parse().ok()) {
                        Some(command_id) => waiters.wake(command_id),
                        None => tracing::warn!(channel, "unexpected message on the command-final channel"),
                    }
                }
                subscribed.send_replace(false);
                // Announcements may have been missed: let every waiter look again.
                waiters.wake_all();
                tracing::warn!(channel, "command-final subscription lost; reconnecting");
            }
            Ok(Err(error)) => tracing::warn!(channel, %error, "cannot subscribe to command-final announcements"),
            Err(_) => tracing::warn!(channel, "subscribing to command-final announcements timed out"),
        }
        tokio::time::sleep(waits.next().unwrap_or(Duration::from_millis(RESUBSCRIBE.max_delay_ms))).await;
    }
}

impl RedisCommandStatus {
    /// The script call that records `status` (and announces it when it is final).
    fn invocation(&self, status: &CommandStatus) -> StoreResult<redis::ScriptInvocation<'static>> {
        let is_final = status.state != CommandState::Pending;
        let mut invocation = RECORD.key(self.key(status.command_id));
        invocation
            .arg(u8::from(is_final))
            .arg(serde_json::to_string(status)?)
            .arg(self.inner.redis.settings().command_status_ttl_seconds)
            .arg(&self.inner.channel)
            .arg(status.command_id.to_string());
        Ok(invocation)
    }
}

#[async_trait]
impl CommandStatusStore for RedisCommandStatus {
    async fn record(&self, status: &CommandStatus) -> StoreResult<()> {
        self.invocation(status)?
            .invoke_async::<i64>(&mut self.inner.redis.conn())
            .await
            .context("recording a command status in Redis")?;
        Ok(())
    }

    /// One pipeline (one round trip) for the batch. A pipeline runs scripts by hash only, so when
    /// the server does not know the script yet (first use, a restart) it is loaded and the batch
    /// sent again: recording a status twice is harmless.
    async fn record_many(&self, statuses: &[CommandStatus]) -> StoreResult<()> {
        if statuses.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for status in statuses {
            pipe.invoke_script(&self.invocation(status)?).ignore();
        }
        let mut conn = self.inner.redis.conn();
        if pipe.query_async::<()>(&mut conn).await.is_err() {
            RECORD.prepare_invoke().load_async(&mut conn).await.context("loading the status script into Redis")?;
            pipe.query_async::<()>(&mut conn).await.context("recording command statuses in Redis")?;
        }
        Ok(())
    }

    async fn get(&self, command_id: CommandId) -> StoreResult<Option<CommandStatus>> {
        let body: Option<String> = redis::cmd("HGET")
            .arg(self.key(command_id))
            .arg("body")
            .query_async(&mut self.inner.redis.conn())
            .await
            .context("reading a command status from Redis")?;
        body.map(|b| {
            serde_json::from_str(&b)
                .map_err(|e| StoreError::Corrupt(format!("a command status stored in Redis does not decode: {e}")))
        })
        .transpose()
    }

    async fn wait_final(&self, command_id: CommandId, timeout: Duration) -> StoreResult<Option<CommandStatus>> {
        self.ensure_listener().await;
        self.inner.waiters.wait_final(self, command_id, timeout, self.inner.poll_interval).await
    }

    async fn ping(&self) -> StoreResult<()> {
        self.inner.redis.ping().await
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use ridehail_contract as contract;
    use ridehail_events::CorrelationId;
    use uuid::Uuid;

    use super::*;
    use crate::settings::RedisSettings;

    fn status(command_id: CommandId, state: CommandState) -> CommandStatus {
        CommandStatus {
            command_id,
            correlation_id: CorrelationId::new(),
            command_type: "RequestRide".into(),
            aggregate_id: Uuid::now_v7(),
            issued_by: None,
            state,
            rejection: None,
            failure: None,
            events: vec![],
            resource: None,
            submitted_at: Utc::now(),
            completed_at: None,
        }
    }

    #[tokio::test]
    async fn a_final_status_recorded_elsewhere_wakes_the_waiter_without_polling() {
        let Some(url) = contract::test_server("RIDEHAIL_TEST_REDIS_URL") else { return };
        let settings = RedisSettings { url, key_prefix: contract::unique_name("cmd") + ":", ..Default::default() };
        // The waiter would re-read only after a minute: only the announcement can end the wait early.
        let waiting =
            RedisCommandStatus::with_poll_interval(crate::connect(&settings).await.unwrap(), Duration::from_secs(60));
        // Another process's store: same server and prefix, its own connections.
        let other = RedisCommandStatus::new(crate::connect(&settings).await.unwrap());
        let id = CommandId::new();
        other.record(&status(id, CommandState::Pending)).await.unwrap();

        let finisher = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            other.record(&status(id, CommandState::Accepted)).await.unwrap();
        });
        let started = std::time::Instant::now();
        let done = waiting.wait_final(id, Duration::from_secs(30)).await.unwrap().unwrap();
        assert_eq!(done.state, CommandState::Accepted);
        assert!(started.elapsed() < Duration::from_secs(10), "woken by the announcement, took {:?}", started.elapsed());
        finisher.await.unwrap();
        assert_eq!(waiting.inner.waiters.waiting(), 0, "the waiter unregistered");
    }
}
