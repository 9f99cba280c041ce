//! The one typed `Settings` of the `ridehail` binary, loaded once at start-up.
//!
//! Layers, later wins: built-in defaults → the TOML file given with `--config` (or `ridehail.toml` in
//! the working directory, if present) → environment variables `RIDEHAIL__SECTION__KEY` (e.g.
//! `RIDEHAIL__HTTP__BIND=0.0.0.0:8080`, `RIDEHAIL__EDGE__CORS_ALLOWED_ORIGINS=https://a,https://b`).
//! The JWT secret is never a setting with a default: it comes from `RIDEHAIL_JWT_SECRET` or the file
//! named by `RIDEHAIL_JWT_SECRET_FILE`. In development only, a random secret is generated once and kept
//! in the data directory (mode 0600) so tokens survive restarts.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use api_edge::EdgeConfig;
use ride_worker::RideWorkerConfig;
use ridehail_kafka::KafkaSettings;
use ridehail_mongo::MongoSettings;
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
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self { bind: "127.0.0.1:8080".into() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
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
    pub http: HttpSettings,
    /// Which adapters carry the ports (all embedded by default).
    pub backend: BackendSettings,
    pub kafka: KafkaSettings,
    pub mongodb: MongoSettings,
    pub redis: RedisSettings,
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
            http: HttpSettings::default(),
            backend: BackendSettings::default(),
            kafka: KafkaSettings::default(),
            mongodb: MongoSettings::default(),
            redis: RedisSettings::default(),
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
                .with_list_parse_key("edge.cors_allowed_origins"),
        );
        let settings: Settings =
            builder.build()?.try_deserialize().context("invalid settings (see README: Configuration)")?;
        anyhow::ensure!(settings.partitions >= 1, "partitions must be at least 1");
        settings.edge.validate()?;
        if settings.backend.bus == BusKind::Kafka {
            settings.kafka.validate()?;
        }
        if settings.backend.store == StoreKind::Mongodb {
            settings.mongodb.validate()?;
        }
        if settings.backend.hot_store == HotStoreKind::Redis {
            settings.redis.validate()?;
        }
        Ok(settings)
    }

    pub fn log_format(&self) -> LogFormat {
        self.log_format.unwrap_or(match self.environment {
            Environment::Production => LogFormat::Json,
            Environment::Development => LogFormat::Text,
        })
    }

    /// The JWT signing secret (see the module documentation).
    pub fn jwt_secret(&self) -> anyhow::Result<SecretString> {
        if let Some(secret) = ridehail_runtime::secrets::from_env_or_file("RIDEHAIL_JWT_SECRET")? {
            return Ok(secret);
        }
        anyhow::ensure!(
            self.environment == Environment::Development,
            "RIDEHAIL_JWT_SECRET or RIDEHAIL_JWT_SECRET_FILE must be set in production"
        );
        dev_secret(&self.data_dir)
    }
}

fn dev_secret(data_dir: &Path) -> anyhow::Result<SecretString> {
    use rand::Rng as _;
    std::fs::create_dir_all(data_dir)?;
    let path = data_dir.join("dev-jwt-secret");
    if let Ok(existing) = std::fs::read_to_string(&path) {
        return Ok(SecretString::from(existing.trim().to_owned()));
    }
    let secret: String = rand::rng().sample_iter(rand::distr::Alphanumeric).take(48).map(char::from).collect();
    write_private(&path, &secret).with_context(|| format!("writing {}", path.display()))?;
    Ok(SecretString::from(secret))
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(contents.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    std::fs::write(path, contents)
}
