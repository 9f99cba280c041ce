//! The sweeper: a safety net under the timers. A ride that is still looking for a driver waits on a
//! timer (its offer's expiry, or its next, wider search); if that timer was lost — its command
//! dead-lettered in an outage, a store restored from an older backup — the ride would wait forever.
//! Every `sweep_interval`, rides requested and unchanged for longer than any timer of theirs should
//! take get their timer scheduled again; a timer that still exists is left as it is, and a timer that
//! fires twice is one command (its id comes from the timer's).

use std::time::Duration;

use ridehail_events::RideId;
use ridehail_ports::Backend;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::handler::RideAggregate;

/// Sweeps once: re-arms the timers of the rides that waited longer than `stale_after`. Returns how
/// many rides it looked at.
pub async fn sweep(
    backend: &Backend,
    aggregate: &RideAggregate,
    stale_after: chrono::Duration,
) -> anyhow::Result<usize> {
    let before = backend.clock.now() - stale_after;
    let waiting = backend.rides.waiting_since(before, 200).await?;
    for view in &waiting {
        match aggregate.rearm(RideId(view.ride_id.0)).await {
            Ok(true) => info!(ride_id = %view.ride_id, "re-armed the timer of a ride waiting for too long"),
            Ok(false) => {}
            Err(e) => warn!(ride_id = %view.ride_id, error = %e, "could not re-arm a waiting ride's timer"),
        }
    }
    Ok(waiting.len())
}

/// Sweeps every `every` until `shutdown`.
pub async fn run(
    backend: Backend,
    aggregate: RideAggregate,
    every: Duration,
    stale_after: chrono::Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
        if let Err(e) = sweep(&backend, &aggregate, stale_after).await {
            warn!(error = format!("{e:#}"), "sweeping waiting rides failed; will try again");
        }
    }
}

/// Measures the drivers online every `every` into `ridehail_drivers_online`, until `shutdown`. (A
/// gauge read from the geo index, not counted from events: it stays right across restarts and with
/// several workers.)
pub async fn report_supply(backend: Backend, every: Duration, shutdown: CancellationToken) -> anyhow::Result<()> {
    loop {
        match backend.drivers.online().await {
            Ok(count) => ridehail_runtime::metrics::rides::drivers_online(count),
            Err(e) => tracing::debug!(error = %e, "cannot count the drivers online; gauge not updated"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
}
