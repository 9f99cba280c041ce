//! The set of ports one deployment is wired with.

use std::sync::Arc;

use crate::clock::Clock;
use crate::{
    CommandStatusStore, DriverLocator, EventStore, GenerationStore, IdempotencyStore, Limiter, MessageBus, RideViews,
    TimerStore, UserViews,
};

/// Every port a service may need, as shared trait objects. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Backend {
    pub bus: Arc<dyn MessageBus>,
    pub events: Arc<dyn EventStore>,
    pub rides: Arc<dyn RideViews>,
    pub users: Arc<dyn UserViews>,
    pub drivers: Arc<dyn DriverLocator>,
    pub commands: Arc<dyn CommandStatusStore>,
    pub idempotency: Arc<dyn IdempotencyStore>,
    pub limiter: Arc<dyn Limiter>,
    pub timers: Arc<dyn TimerStore>,
    /// The generations behind `rides` and `users` and their catalogue (rebuilds use it directly).
    pub projections: Arc<dyn GenerationStore>,
    pub clock: Arc<dyn Clock>,
}

/// The outcome of one dependency check, for readiness probes.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct DependencyHealth {
    pub name: &'static str,
    pub ok: bool,
    /// Why it failed: for logs only, never in a public answer (it may name hosts and users).
    #[serde(skip)]
    pub error: Option<String>,
}

impl Backend {
    /// Fails with a clear message naming every one of `topics` that does not exist on the bus.
    pub async fn require_topics(&self, topics: &[&str]) -> anyhow::Result<()> {
        let mut missing = Vec::new();
        for topic in topics {
            match self.bus.partitions(topic).await {
                Ok(_) => {}
                Err(crate::BusError::UnknownTopic(_)) => missing.push(*topic),
                Err(e) => return Err(anyhow::Error::new(e).context(format!("checking topic {topic}"))),
            }
        }
        anyhow::ensure!(
            missing.is_empty(),
            "missing topics: {} (create them with `ridehail topics apply`)",
            missing.join(", ")
        );
        Ok(())
    }

    /// Pings every dependency concurrently.
    pub async fn check(&self) -> Vec<DependencyHealth> {
        let (bus, events, rides, users, drivers, commands, idempotency, limiter, timers) = tokio::join!(
            self.bus.ping(),
            self.events.ping(),
            self.rides.ping(),
            self.users.ping(),
            self.drivers.ping(),
            self.commands.ping(),
            self.idempotency.ping(),
            self.limiter.ping(),
            self.timers.ping(),
        );
        let bus = bus.map_err(anyhow::Error::from);
        let store = |result: crate::StoreResult<()>| result.map_err(anyhow::Error::from);
        [
            ("bus", bus),
            ("event_store", store(events)),
            ("ride_views", store(rides)),
            ("user_views", store(users)),
            ("driver_locator", store(drivers)),
            ("command_status", store(commands)),
            ("idempotency", store(idempotency)),
            ("limiter", store(limiter)),
            ("timers", store(timers)),
        ]
        .into_iter()
        .map(|(name, result)| DependencyHealth {
            name,
            ok: result.is_ok(),
            error: result.err().map(|e| format!("{e:#}")),
        })
        .collect()
    }
}
