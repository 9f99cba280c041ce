//! ride-worker: consumes ride commands, decides with the pure ride domain, appends and publishes the
//! events, projects the ride read model, holds and releases drivers in the geo index, and schedules
//! the ride's timers (offer expiry, wider search).
//!
//! - [`domain`]: the pure core (`decide`/`evolve`, fares, matching policy).
//! - [`handler`]: the ride aggregate's facts and effects, run by the runtime's command executor.
//! - [`projection`]: the ride read model; [`rebuild`]: the views and driver holds, from the streams.
//! - [`run`]: the consumer and the timer service, until shutdown.

pub mod domain;
pub mod handler;
pub mod projection;
pub mod rebuild;
pub mod sweeper;

use std::sync::Arc;
use std::time::Duration;

use ridehail_ports::Backend;
use ridehail_runtime::consumer::{self, ConsumerConfig};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

pub use domain::{MatchingPolicy, PricingPolicy};
pub use handler::{RideAggregate, RideCommandHandler, command_handler};

/// ride-worker's settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RideWorkerConfig {
    /// Consumer group on the ride command topic.
    pub group: String,
    pub pricing: PricingPolicy,
    pub matching: MatchingPolicy,
    /// How often the timer service looks for due timers, in milliseconds.
    pub timer_tick_ms: u64,
    /// How often the sweeper looks for waiting rides whose timer was lost, in seconds.
    pub sweep_interval_seconds: u64,
    /// A requested ride unchanged for this long has lost its timer (longer than any offer or retry).
    pub stale_after_seconds: u64,
    /// How often the supply gauge (`ridehail_drivers_online`) is measured, in seconds.
    pub supply_gauge_interval_seconds: u64,
}

impl Default for RideWorkerConfig {
    fn default() -> Self {
        Self {
            group: "ride-worker".into(),
            pricing: PricingPolicy::default(),
            matching: MatchingPolicy::default(),
            timer_tick_ms: 100,
            sweep_interval_seconds: 30,
            stale_after_seconds: 120,
            supply_gauge_interval_seconds: 5,
        }
    }
}

/// Runs the ride command consumer, the timer service and the sweeper until `shutdown`; each finishes
/// its work in hand first.
pub async fn run(backend: Backend, config: RideWorkerConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let aggregate = RideAggregate::new(backend.clone(), config.pricing.clone(), config.matching.clone());
    let handler = Arc::new(ridehail_runtime::executor::CommandHandler::new(aggregate.clone(), backend.clone()));
    let sweeper = sweeper::run(
        backend.clone(),
        aggregate,
        Duration::from_secs(config.sweep_interval_seconds.max(1)),
        chrono::Duration::seconds(i64::try_from(config.stale_after_seconds).unwrap_or(i64::MAX)),
        shutdown.clone(),
    );
    let topics = [ridehail_events::topics::RIDE_COMMANDS, ridehail_events::topics::RIDE_SYSTEM_COMMANDS];
    let consumer_config = ConsumerConfig::new(config.group.clone(), &topics);
    let timers = ridehail_runtime::timers::run(
        backend.timers.clone(),
        backend.bus.clone(),
        backend.clock.clone(),
        Duration::from_millis(config.timer_tick_ms),
        shutdown.clone(),
    );
    let supply = sweeper::report_supply(
        backend.clone(),
        Duration::from_secs(config.supply_gauge_interval_seconds.max(1)),
        shutdown.clone(),
    );
    let current =
        ridehail_runtime::rebuild::keep_current(backend.clone(), rebuild::RideFold::default(), shutdown.clone());
    let consumer = consumer::run(backend.bus.clone(), handler, consumer_config, shutdown);
    tokio::try_join!(consumer, timers, sweeper, supply, current)?;
    Ok(())
}
