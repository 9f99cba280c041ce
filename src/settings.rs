//! The one typed `Settings` of the `ridehail` binary, loaded once at start-up.
//!
//! Layers, later wins: built-in defaults → the TOML file given with `--config` (or `ridehail.toml` in
//! the working directory, if present) → environment variables `RIDEHAIL__SECTION__KEY` (e.g.
//! `RIDEHAIL__HTTP__BIND=0.0.0.0:8080`, `RIDEHAIL__EDGE__CORS_ALLOWED_ORIGINS=https://a,https://b`).
//! The settings that carry credentials ([`SECRET_SETTINGS`]: the MongoDB URI, the Redis URL, the Kafka
//! SASL password, the RabbitMQ URL) can come from a file instead: `RIDEHAIL__MONGODB__URI_FILE=/path` reads the value
//! from the file (trailing newline trimmed), the way Kubernetes Secrets and Vault Agent deliver them.
//! Keys and secrets are never settings with a default (see [`crate::keys`]).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use api_edge::EdgeConfig;
use ride_worker::RideWorkerConfig;
use ridehail_kafka::KafkaSettings;
use ridehail_mongo::MongoSettings;
use ridehail_rabbitmq::RabbitMqSettings;
use ridehail_redis::RedisSettings;
use ridehail_runtime::telemetry::LogFormat;
use secrecy::SecretString;
use serde::Deserialize;
use user_worker::UserWorkerConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    Development,
    Production,
}

/// Which adapter carries the message bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BusKind {
    #[default]
    Embedded,
    Kafka,
    /// RabbitMQ streams (docs/rabbitmq.md says when to pick it over Kafka).
    Rabbitmq,
}

/// Which adapter keeps the event store, the read models and the timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    #[default]
    Embedded,
    Mongodb,
}

/// Which adapter keeps the hot state: driver geo index, command status, idempotency keys, and the
/// read-through cache in front of the read models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum HotStoreKind {
    #[default]
    Embedded,
    Redis,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackendSettings {
    pub bus: BusKind,
    pub store: StoreKind,
    pub hot_store: HotStoreKind,
}

impl BackendSettings {
    pub fn is_embedded(&self) -> bool {
        *self == Self::default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// Address the edge listens on; port 0 picks a free port (printed at start-up).
    pub bind: String,
    /// Address of a worker's admin listener (`/metrics`, `/health/live`, `/health/ready`); port 0
    /// picks a free port (printed at start-up). The edge serves these on its own listener.
    pub admin_bind: String,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self { bind: "127.0.0.1:8080".into(), admin_bind: "127.0.0.1:0".into() }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub environment: Environment,
    /// Where the embedded backend keeps its SQLite files.
    pub data_dir: PathBuf,
    /// Partitions per topic of the embedded bus (fixed when the bus file is created).
    pub partitions: u32,
    pub log_format: Option<LogFormat>,
    /// How long shutdown waits for work in flight before giving up, in seconds.
    pub shutdown_grace_seconds: u64,
    /// Production only: allow plaintext connections to Kafka, RabbitMQ, MongoDB or Redis on other hosts
    /// (refused by default; see [`Settings::check_transport_security`]).
    pub allow_plaintext: bool,
    pub http: HttpSettings,
    /// Which adapters carry the ports (all embedded by default).
    pub backend: BackendSettings,
    pub kafka: KafkaSettings,
    pub rabbitmq: RabbitMqSettings,
    pub mongodb: MongoSettings,
    pub redis: RedisSettings,
    /// Deadlines and circuit breakers of the calls to Kafka, MongoDB and Redis.
    pub resilience: ridehail_runtime::guard::ResilienceSettings,
    /// Where spans are exported, and how many.
    pub tracing: ridehail_runtime::telemetry::TracingSettings,
    pub edge: EdgeConfig,
    pub ride_worker: RideWorkerConfig,
    pub user_worker: UserWorkerConfig,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            environment: Environment::Development,
            data_dir: PathBuf::from("data"),
            partitions: 4,
            log_format: None,
            shutdown_grace_seconds: 10,
            allow_plaintext: false,
            http: HttpSettings::default(),
            backend: BackendSettings::default(),
            kafka: KafkaSettings::default(),
            rabbitmq: RabbitMqSettings::default(),
            mongodb: MongoSettings::default(),
            redis: RedisSettings::default(),
            resilience: Default::default(),
            tracing: Default::default(),
            edge: EdgeConfig::default(),
            ride_worker: RideWorkerConfig::default(),
            user_worker: UserWorkerConfig::default(),
        }
    }
}

impl Settings {
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let mut builder = config::Config::builder();
        match file {
            Some(path) => builder = builder.add_source(config::File::from(path).required(true)),
            None => builder = builder.add_source(config::File::with_name("ridehail").required(false)),
        }
        builder = builder.add_source(
            config::Environment::with_prefix("RIDEHAIL")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("edge.cors_allowed_origins")
                .source(Some(environment()?)),
        );
        let settings: Settings =
            builder.build()?.try_deserialize().context("invalid settings (see README: Configuration)")?;
        anyhow::ensure!(settings.partitions >= 1, "partitions must be at least 1");
        settings.edge.validate()?;
        settings.tracing.validate()?;
        if settings.backend.bus == BusKind::Kafka {
            settings.kafka.validate()?;
        }
        if settings.backend.bus == BusKind::Rabbitmq {
            settings.rabbitmq.validate()?;
        }
        if settings.backend.store == StoreKind::Mongodb {
            settings.mongodb.validate()?;
        }
        if settings.backend.hot_store == HotStoreKind::Redis {
            settings.redis.validate()?;
        }
        settings.check_transport_security()?;
        anyhow::ensure!(
            settings.edge.limits.enabled || settings.environment == Environment::Development,
            "edge.limits.enabled = false is for benchmarks: production keeps the per-client limits"
        );
        Ok(settings)
    }

    /// Refuses, in production, a plaintext connection to a dependency that is not on this machine,
    /// unless `allow_plaintext` says it is meant (a private network, a sidecar proxy).
    pub fn check_transport_security(&self) -> anyhow::Result<()> {
        if self.environment != Environment::Production || self.allow_plaintext {
            return Ok(());
        }
        let mut plaintext = Vec::new();
        if self.backend.bus == BusKind::Kafka && !self.kafka.uses_tls() && !all_loopback(&self.kafka.hosts()) {
            plaintext.push("kafka (set kafka.tls or security.protocol=ssl|sasl_ssl)");
        }
        if self.backend.bus == BusKind::Rabbitmq && !self.rabbitmq.uses_tls() && !all_loopback(&self.rabbitmq.hosts()) {
            plaintext.push("rabbitmq (use an amqps:// URL)");
        }
        if self.backend.store == StoreKind::Mongodb && !self.mongodb.uses_tls() && !all_loopback(&self.mongodb.hosts())
        {
            plaintext.push("mongodb (set tls=true in the URI or mongodb.tls_ca_file)");
        }
        if self.backend.hot_store == HotStoreKind::Redis && !self.redis.uses_tls() && !all_loopback(&self.redis.hosts())
        {
            plaintext.push("redis (use a rediss:// URL)");
        }
        anyhow::ensure!(
            plaintext.is_empty(),
            "plaintext connections to other hosts are refused in production: {}; set allow_plaintext = true \
             only if the network itself is trusted",
            plaintext.join(", ")
        );
        Ok(())
    }

    pub fn log_format(&self) -> LogFormat {
        self.log_format.unwrap_or(match self.environment {
            Environment::Production => LogFormat::Json,
            Environment::Development => LogFormat::Text,
        })
    }

    /// What the edge signs and verifies tokens with. From the environment or files (see
    /// [`crate::keys`]); in development only, an Ed25519 key is generated once in the data directory.
    pub fn token_keys(&self) -> anyhow::Result<api_edge::auth::KeyMaterial> {
        crate::keys::token_keys(self.environment == Environment::Development, &self.data_dir)
    }

    /// The key of the edge's keyed hashes (audit lines, idempotency of sign-ups).
    pub fn hash_key(&self) -> anyhow::Result<SecretString> {
        crate::keys::hash_key(self.environment == Environment::Development, &self.data_dir)
    }
}

/// Creates `path` readable by its owner only (`0600`) with `contents`; fails if it exists.
#[cfg(unix)]
pub fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(contents.as_bytes())
}

#[cfg(not(unix))]
pub fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    std::fs::write(path, contents)
}

/// The settings that carry credentials: each can come from a file instead, named by the variable
/// with `_FILE` appended (`RIDEHAIL__MONGODB__URI_FILE=/run/secrets/mongodb-uri`), the way Kubernetes
/// Secrets and Vault Agent deliver them.
pub const SECRET_SETTINGS: [&str; 4] =
    ["RIDEHAIL__MONGODB__URI", "RIDEHAIL__REDIS__URL", "RIDEHAIL__KAFKA__SASL_PASSWORD", "RIDEHAIL__RABBITMQ__URL"];

/// The `RIDEHAIL__…` variables, with each secret setting's `…_FILE` variable replaced by the file's
/// contents (trailing newline trimmed).
fn environment() -> anyhow::Result<std::collections::HashMap<String, String>> {
    let mut env: std::collections::HashMap<String, String> =
        std::env::vars().filter(|(k, _)| k.starts_with("RIDEHAIL__")).collect();
    for name in SECRET_SETTINGS {
        let file_var = format!("{name}_FILE");
        let Some(path) = env.remove(&file_var) else { continue };
        anyhow::ensure!(!env.contains_key(name), "both {name} and {file_var} are set: give one");
        let value = std::fs::read_to_string(&path).with_context(|| format!("cannot read {file_var} ({path})"))?;
        env.insert(name.to_owned(), value.trim_end_matches(['\n', '\r']).to_owned());
    }
    Ok(env)
}

/// Whether every host is this machine (a loopback address or `localhost`).
fn all_loopback(hosts: &[String]) -> bool {
    hosts.iter().all(|host| {
        host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
    })
}
