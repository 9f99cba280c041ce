//! The timer service: publishes each due timer's record, then forgets the timer.
//!
//! At-least-once: a crash between publish and cancel fires the timer again after restart, so the
//! command a timer carries must be safe to receive twice (the ride domain rejects stale timers).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, warn};

use ridehail_ports::Clock;
use ridehail_ports::{MessageBus, OutgoingMessage, TimerStore};

/// Fires every timer due now; returns how many fired.
pub async fn fire_due(timers: &dyn TimerStore, bus: &dyn MessageBus, clock: &dyn Clock) -> anyhow::Result<usize> {
    let mut fired = 0;
    loop {
        let due = timers.due(clock.now(), 100).await?;
        if due.is_empty() {
            return Ok(fired);
        }
        for timer in due {
            let record = OutgoingMessage {
                key: timer.key.clone(),
                headers: crate::propagation::without_context(&timer.headers),
                payload: timer.payload.clone(),
            };
            // In the trace of the command that set the timer.
            let span =
                tracing::info_span!("timer fired", otel.name = "fire timer", ridehail.timer.topic = %timer.topic);
            crate::propagation::follow(&span, &timer.headers);
            async {
                bus.publish(&timer.topic, vec![record]).await?;
                timers.cancel(&timer.id).await?;
                anyhow::Ok(())
            }
            .instrument(span)
            .await?;
            fired += 1;
        }
    }
}

/// Checks for due timers every `tick` until `shutdown`.
pub async fn run(
    timers: Arc<dyn TimerStore>,
    bus: Arc<dyn MessageBus>,
    clock: Arc<dyn Clock>,
    tick: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        if let Err(e) = fire_due(&*timers, &*bus, &*clock).await {
            warn!(error = format!("{e:#}"), "firing timers failed; will retry");
        }
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
}
