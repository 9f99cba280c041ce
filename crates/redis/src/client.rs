use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::settings::{RedisSettings, redacted_url};

/// Reconnect attempts per failed connection before the waiting commands fail. Few, so a command never
/// waits for a long backoff series; the next command starts a new series.
const RECONNECT_RETRIES: usize = 2;
const RECONNECT_MIN_DELAY: Duration = Duration::from_millis(50);
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(1);

/// Connects `settings.connections` multiplexed connections and checks each answers `PING`: fails when
/// Redis is unreachable, so a service that needs Redis does not start without it.
pub async fn connect(settings: &RedisSettings) -> anyhow::Result<RedisClient> {
    RedisClient::connect(settings).await
}

/// Builds the client without connecting: the first command connects. For the cache decorators, which
/// work (from the inner store) while Redis is down. Must be called inside a Tokio runtime.
pub fn connect_lazy(settings: &RedisSettings) -> anyhow::Result<RedisClient> {
    RedisClient::connect_lazy(settings)
}

/// A cheap-to-clone handle on a few multiplexed Redis connections that reconnect by themselves.
#[derive(Clone)]
pub struct RedisClient {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    connections: Vec<ConnectionManager>,
    next: AtomicUsize,
    settings: RedisSettings,
}

impl std::fmt::Debug for RedisClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisClient")
            .field("url", &redacted_url(&self.inner.settings.url))
            .field("key_prefix", &self.inner.settings.key_prefix)
            .field("connections", &self.inner.connections.len())
            .finish()
    }
}

impl RedisClient {
    pub async fn connect(settings: &RedisSettings) -> anyhow::Result<Self> {
        let client = Self::connect_lazy(settings)?;
        let checks = client.inner.connections.iter().map(|conn| {
            let mut conn = conn.clone();
            async move { redis::cmd("PING").query_async::<String>(&mut conn).await }
        });
        for result in futures::future::join_all(checks).await {
            result.with_context(|| format!("connecting to Redis at {}", redacted_url(&settings.url)))?;
        }
        Ok(client)
    }

    pub fn connect_lazy(settings: &RedisSettings) -> anyhow::Result<Self> {
        settings.validate()?;
        let client = match (&settings.tls_ca_file, &settings.tls_cert_file, &settings.tls_key_file) {
            (None, None, _) => redis::Client::open(settings.url.as_str()),
            (ca, cert, key) => {
                let read = |path: &std::path::Path| {
                    std::fs::read(path).with_context(|| format!("reading Redis TLS file {}", path.display()))
                };
                let client_tls = match (cert, key) {
                    (Some(cert), Some(key)) => {
                        Some(redis::ClientTlsConfig { client_cert: read(cert)?, client_key: read(key)? })
                    }
                    _ => None,
                };
                let root_cert = ca.as_deref().map(read).transpose()?;
                redis::Client::build_with_tls(settings.url.as_str(), redis::TlsCertificates { client_tls, root_cert })
            }
        }
        .with_context(|| format!("invalid Redis URL {}", redacted_url(&settings.url)))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.connect_timeout()))
            .set_response_timeout(Some(settings.response_timeout()))
            .set_number_of_retries(RECONNECT_RETRIES)
            .set_min_delay(RECONNECT_MIN_DELAY)
            .set_max_delay(RECONNECT_MAX_DELAY);
        let connections = (0..settings.connections)
            .map(|_| ConnectionManager::new_lazy_with_config(client.clone(), config.clone()))
            .collect::<Result<Vec<_>, _>>()
            .context("creating Redis connections")?;
        Ok(Self {
            inner: Arc::new(Inner { client, connections, next: AtomicUsize::new(0), settings: settings.clone() }),
        })
    }

    pub fn settings(&self) -> &RedisSettings {
        &self.inner.settings
    }

    /// The next connection, round-robin.
    pub(crate) fn conn(&self) -> ConnectionManager {
        let i = self.inner.next.fetch_add(1, Ordering::Relaxed) % self.inner.connections.len();
        self.inner.connections[i].clone()
    }

    /// The underlying client, for dedicated (pub/sub) connections.
    pub(crate) fn client(&self) -> &redis::Client {
        &self.inner.client
    }

    /// A key (or channel) name under the configured prefix.
    pub(crate) fn key(&self, name: &str) -> String {
        format!("{}{name}", self.inner.settings.key_prefix)
    }

    pub async fn ping(&self) -> ridehail_ports::StoreResult<()> {
        let pong: String = redis::cmd("PING").query_async(&mut self.conn()).await.context("Redis PING")?;
        if pong != "PONG" {
            return Err(anyhow::anyhow!("Redis answered PING with {pong:?}").into());
        }
        Ok(())
    }
}
