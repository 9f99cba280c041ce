//! Wires the ports to adapters as the settings say: everything embedded (the default), or the
//! production engines — Kafka for the bus, MongoDB for the event store, read models and timers, Redis
//! for the hot state (driver geo index, command status, idempotency keys) and the read-through cache.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use ridehail_runtime::embedded::{
    Db, EmbeddedBus, EmbeddedCommandStatus, EmbeddedDriverLocator, EmbeddedEventStore, EmbeddedIdempotency,
    EmbeddedRideViews, EmbeddedTimers, EmbeddedUserViews,
};
use ridehail_runtime::ports::{
    CommandStatusStore, DriverLocator, EventStore, IdempotencyStore, MessageBus, RideViews, TimerStore, UserViews,
};
use ridehail_runtime::{Backend, SystemClock};
use serde::Deserialize;

use crate::settings::Settings;

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

fn embedded_bus(settings: &Settings) -> anyhow::Result<EmbeddedBus> {
    let topics: Vec<(&str, u32)> = ridehail_events::topics::ALL.iter().map(|t| (*t, settings.partitions)).collect();
    EmbeddedBus::open(&settings.data_dir.join("bus"), &topics)
}

fn data_dir(settings: &Settings) -> anyhow::Result<&Path> {
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("cannot create data directory {}", settings.data_dir.display()))?;
    Ok(&settings.data_dir)
}

/// The bus alone (for `topics apply` and start-up checks).
pub fn open_bus(settings: &Settings, role: &str) -> anyhow::Result<Arc<dyn MessageBus>> {
    Ok(match settings.backend.bus {
        BusKind::Embedded => {
            data_dir(settings)?;
            Arc::new(embedded_bus(settings)?)
        }
        BusKind::Kafka => Arc::new(ridehail_kafka::KafkaBus::connect(&settings.kafka, role)?),
    })
}

/// The event store, ride views, user views and timers.
type Stores = (Arc<dyn EventStore>, Arc<dyn RideViews>, Arc<dyn UserViews>, Arc<dyn TimerStore>);
/// The driver locator, command status and idempotency keys.
type HotStores = (Arc<dyn DriverLocator>, Arc<dyn CommandStatusStore>, Arc<dyn IdempotencyStore>);

/// Every port, on the adapters the settings choose. `role` names the process to the brokers.
pub async fn open(settings: &Settings, role: &str) -> anyhow::Result<Backend> {
    if settings.backend.is_embedded() {
        return ridehail_runtime::embedded::open(&settings.data_dir, settings.partitions, Arc::new(SystemClock));
    }
    let bus = open_bus(settings, role)?;
    let dir = || data_dir(settings);
    let (events, mut rides, mut users, timers): Stores = match settings.backend.store {
        StoreKind::Embedded => (
            Arc::new(EmbeddedEventStore::open(&dir()?.join("events.sqlite"))?),
            Arc::new(EmbeddedRideViews::open(&dir()?.join("rides.sqlite"))?),
            Arc::new(EmbeddedUserViews::new(Db::open(&dir()?.join("users.sqlite"))?)?),
            Arc::new(EmbeddedTimers::new(Db::open(&dir()?.join("timers.sqlite"))?)?),
        ),
        StoreKind::Mongodb => {
            let stores = ridehail_mongo::open(&mongo_settings(settings)).await?;
            (stores.events, stores.rides, stores.users, stores.timers)
        }
    };
    let (drivers, commands, idempotency): HotStores = match settings.backend.hot_store {
        HotStoreKind::Embedded => {
            let bookkeeping = Db::open(&dir()?.join("commands.sqlite"))?;
            (
                Arc::new(EmbeddedDriverLocator::open(&dir()?.join("drivers.sqlite"))?),
                Arc::new(EmbeddedCommandStatus::new(bookkeeping.clone())?),
                Arc::new(EmbeddedIdempotency::new(bookkeeping)?),
            )
        }
        HotStoreKind::Redis => {
            // Lazy: a service starts while Redis is down (readiness says so), and reads fall back to
            // the store behind the cache meanwhile.
            let redis = ridehail_redis::connect_lazy(&settings.redis)?;
            rides = Arc::new(ridehail_redis::CachedRideViews::new(rides, redis.clone()));
            users = Arc::new(ridehail_redis::CachedUserViews::new(users, redis.clone()));
            (
                Arc::new(ridehail_redis::RedisDriverLocator::new(redis.clone())),
                Arc::new(ridehail_redis::RedisCommandStatus::new(redis.clone())),
                Arc::new(ridehail_redis::RedisIdempotency::new(redis)),
            )
        }
    };
    Ok(Backend { bus, events, rides, users, drivers, commands, idempotency, timers, clock: Arc::new(SystemClock) })
}

/// The MongoDB settings with `migrate_on_start` resolved: on by default in development, off in
/// production (run `ridehail migrate up` as a deployment step there).
pub fn mongo_settings(settings: &Settings) -> ridehail_mongo::MongoSettings {
    let mut mongo = settings.mongodb.clone();
    mongo.migrate_on_start =
        Some(mongo.migrate_on_start.unwrap_or(settings.environment == crate::settings::Environment::Development));
    mongo
}
