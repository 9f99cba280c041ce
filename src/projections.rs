//! `ridehail projections rebuild|status`: live rebuilds of the read models (docs/projections.md).

use chrono::{DateTime, Utc};
use ridehail_ports::Backend;
use ridehail_ports::projections::{Generation, Projection, RebuildState, RebuildSummary};
use ridehail_runtime::rebuild::{self, Fold, Outcome, RebuildOptions};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::progress::Meter;

/// The fold of a projection, as this build's code folds it.
pub fn fold(projection: Projection) -> Box<dyn Fold> {
    match projection {
        Projection::Rides => Box::new(ride_worker::rebuild::RideFold::default()),
        Projection::Users => Box::new(user_worker::rebuild::UserFold::default()),
        Projection::Drivers => Box::new(user_worker::rebuild::DriverFold::default()),
    }
}

/// What `projections rebuild` prints when done.
#[derive(Debug, Serialize)]
struct Finished<'a> {
    projection: Projection,
    #[serde(flatten)]
    summary: &'a RebuildSummary,
    duration_seconds: f64,
    events_per_second: u64,
}

/// Rebuilds `projection` live; Ctrl-C or SIGTERM stops it at a checkpoint (run again to resume).
pub async fn rebuild(backend: &Backend, projection: Projection, options: RebuildOptions) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        crate::termination().await;
        stop.cancel();
    });
    let meter = Meter::new(format!("rebuilding {projection}"));
    let mut fold = fold(projection);
    match rebuild::rebuild(backend, &mut *fold, &options, &meter, &shutdown).await? {
        Outcome::Finished(summary) => {
            let seconds = meter.elapsed().as_secs_f64();
            let rate = if seconds > 0.0 { (summary.events_read as f64 / seconds) as u64 } else { 0 };
            let finished =
                Finished { projection, summary: &summary, duration_seconds: seconds, events_per_second: rate };
            println!("{}", serde_json::to_string(&finished)?);
            Ok(())
        }
        Outcome::Busy { owner, lease_until } => {
            anyhow::bail!("a rebuild of {projection} is running ({owner}, lease until {lease_until}); try later")
        }
        Outcome::UpToDate => {
            println!("{projection} is up to date");
            Ok(())
        }
        Outcome::Stopped(state) => {
            meter.finish();
            anyhow::bail!(
                "stopped at position {} of the rebuild of {projection}; run it again to resume",
                state.position
            )
        }
    }
}

/// One projection in `projections status`.
#[derive(Debug, Serialize)]
struct Status {
    projection: Projection,
    /// The generation readers use and the code version that built it.
    active_generation: u64,
    active_code_version: u32,
    /// The code version of this build's fold: a higher one than the active's means a rebuild is due.
    code_version: u32,
    generations: Vec<Generation>,
    rebuild: Option<RebuildStatus>,
    last_rebuild: Option<RebuildSummary>,
}

#[derive(Debug, Serialize)]
struct RebuildStatus {
    #[serde(flatten)]
    state: RebuildState,
    /// Whether the lease is live (someone is working on it); else it waits to be resumed.
    running: bool,
    /// Events of the store not yet folded into the generation.
    lag: u64,
    /// How much of the history (to the head as of now) is in the generation, 0 to 1.
    progress: f64,
}

/// The catalogue of every projection, with lag and progress against the store's head, as JSON.
pub async fn status(backend: &Backend, now: DateTime<Utc>) -> anyhow::Result<serde_json::Value> {
    let head = backend.events.head().await?;
    let catalogue = backend.projections.catalogue();
    let mut statuses = Vec::new();
    for projection in Projection::ALL {
        let (record, _) = catalogue.load(projection).await?;
        let active = record.active()?.clone();
        let rebuild = record.rebuild.map(|state| RebuildStatus {
            running: state.lease_until > now,
            lag: head.saturating_sub(state.position),
            progress: if head == 0 { 1.0 } else { (state.position as f64 / head as f64).min(1.0) },
            state,
        });
        statuses.push(Status {
            projection,
            active_generation: active.number,
            active_code_version: active.code_version,
            code_version: fold(projection).code_version(),
            generations: record.generations,
            rebuild,
            last_rebuild: record.last_rebuild,
        });
    }
    Ok(serde_json::json!({"head": head, "projections": statuses}))
}
