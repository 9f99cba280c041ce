//! Wires the ports to adapters as the settings say: everything embedded (the default), or the
//! production engines — Kafka or RabbitMQ for the bus, MongoDB for the event store, read models and timers, Redis
//! for the hot state (driver geo index, command status, idempotency keys) and the read-through cache.

use std::sync::Arc;

use ridehail_ports::{Backend, MessageBus, SystemClock};
use ridehail_runtime::guard::{self, Engines, Wrap};
use ridehail_sqlite::{self as embedded, HotStores, Stores};

use crate::settings::{BusKind, HotStoreKind, Settings, StoreKind};

/// The bus alone (for `topics apply` and start-up checks).
pub fn open_bus(settings: &Settings, role: &str) -> anyhow::Result<Arc<dyn MessageBus>> {
    Ok(match settings.backend.bus {
        BusKind::Embedded => Arc::new(embedded::open_bus(&settings.data_dir, settings.partitions)?),
        BusKind::Kafka => Arc::new(ridehail_kafka::KafkaBus::connect(&settings.kafka, role)?),
        BusKind::Rabbitmq => Arc::new(ridehail_rabbitmq::RabbitMqBus::connect(&settings.rabbitmq, role)?),
    })
}

/// Every port, on the adapters the settings choose. `role` names the process to the brokers.
pub async fn open(settings: &Settings, role: &str) -> anyhow::Result<Backend> {
    if settings.backend.is_embedded() {
        let backend = embedded::open(&settings.data_dir, settings.partitions, Arc::new(SystemClock))?;
        // Spans and metrics around every call; local files need no deadline nor breaker.
        return guard::guarded(backend, &settings.resilience, Wrap::default(), Engines::EMBEDDED);
    }
    let bus = open_bus(settings, role)?;
    let (events, mut rides, mut users, timers, projections): Stores = match settings.backend.store {
        StoreKind::Embedded => embedded::open_stores(&settings.data_dir)?,
        StoreKind::Mongodb => {
            let stores = ridehail_mongo::open(&mongo_settings(settings)).await?;
            (stores.events, stores.rides, stores.users, stores.timers, stores.projections)
        }
    };
    let (drivers, commands, idempotency, limiter): HotStores = match settings.backend.hot_store {
        HotStoreKind::Embedded => embedded::open_hot_stores(&settings.data_dir)?,
        HotStoreKind::Redis => {
            // Lazy: a service starts while Redis is down (readiness says so), and reads fall back to
            // the store behind the cache meanwhile.
            let redis = ridehail_redis::connect_lazy(&settings.redis)?;
            rides = Arc::new(ridehail_redis::CachedRideViews::new(rides, redis.clone()));
            users = Arc::new(ridehail_redis::CachedUserViews::new(users, redis.clone()));
            (
                Arc::new(ridehail_redis::RedisDriverLocator::new(redis.clone())),
                Arc::new(ridehail_redis::RedisCommandStatus::new(redis.clone())),
                Arc::new(ridehail_redis::RedisIdempotency::new(redis.clone())),
                Arc::new(ridehail_redis::RedisLimiter::new(redis)),
            )
        }
    };
    let backend = Backend {
        bus,
        events,
        rides,
        users,
        drivers,
        commands,
        idempotency,
        limiter,
        timers,
        projections,
        clock: Arc::new(SystemClock),
    };
    // Deadlines and circuit breakers around the production engines (the embedded files need none).
    let wrap = Wrap {
        bus: settings.backend.bus != BusKind::Embedded,
        store: settings.backend.store == StoreKind::Mongodb,
        hot: settings.backend.hot_store == HotStoreKind::Redis,
    };
    let engines = Engines {
        bus: match settings.backend.bus {
            BusKind::Embedded => "sqlite",
            BusKind::Kafka => "kafka",
            BusKind::Rabbitmq => "rabbitmq",
        },
        store: if wrap.store { "mongodb" } else { "sqlite" },
        hot: if wrap.hot { "redis" } else { "sqlite" },
    };
    guard::guarded(backend, &settings.resilience, wrap, engines)
}

/// The MongoDB settings with `migrate_on_start` resolved: on by default in development, off in
/// production (run `ridehail migrate up` as a deployment step there).
pub fn mongo_settings(settings: &Settings) -> ridehail_mongo::MongoSettings {
    let mut mongo = settings.mongodb.clone();
    mongo.migrate_on_start =
        Some(mongo.migrate_on_start.unwrap_or(settings.environment == crate::settings::Environment::Development));
    mongo
}
