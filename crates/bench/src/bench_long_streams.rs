//! `bench-long-streams`: what a command costs on a driver's stream as the stream grows, with the
//! user aggregate's snapshots (docs/snapshots.md).
//!
//! For each `--lengths` N: a driver whose stream already holds N events (registered, online, then
//! moving), then `--commands` availability changes through the command executor. The first command
//! folds the whole stream (there is no snapshot yet: the cost without snapshots) and takes one; the
//! others load that snapshot and the events after it. Reported per N: the first command's time, and
//! the others' p50 / p99 / mean.

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use ridehail_events::user::UserCommand;
use ridehail_events::{CommandEnvelope, GeoPoint, UserId};
use ridehail_runtime::executor::Executor;
use serde::Serialize;
use user_worker::handler::UserAggregate;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// `embedded` (a fresh data directory) or `mongodb` (`RIDEHAIL__MONGODB__URI`, a fresh database).
    #[arg(long, default_value = "embedded", value_parser = ["embedded", "mongodb"])]
    store: String,
    /// Stream lengths to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [10usize, 1_000, 10_000, 100_000])]
    lengths: Vec<usize>,
    /// Commands per length (after the first).
    #[arg(long, default_value_t = 500)]
    commands: usize,
    #[arg(long, default_value = "bench-long-streams-data")]
    data_dir: std::path::PathBuf,
}

#[derive(Debug, Serialize)]
struct Row {
    store: String,
    stream_events: usize,
    /// The first command: the whole stream folded (no snapshot yet), and a snapshot taken.
    first_command_ms: f64,
    commands: usize,
    p50_ms: f64,
    p99_ms: f64,
    mean_ms: f64,
}

const AT: GeoPoint = GeoPoint { lat: 38.72, lon: -9.14 };

fn availability(driver: UserId, online: bool) -> CommandEnvelope<UserCommand> {
    ridehail_contract::availability_command(driver, online, AT)
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let backend = crate::bench_rebuild::fresh_backend(&args.store, &args.data_dir).await?;
    let executor = Arc::new(Executor::new(UserAggregate::new(backend.clone()), backend.clone()));
    for &length in &args.lengths {
        anyhow::ensure!(length >= 3, "a driver's stream holds at least 3 events");
        let driver = UserId::new();
        let history = ridehail_contract::driver_history(driver, AT, length - 3, Utc::now() - chrono::Duration::days(1));
        for chunk in history.chunks(10_000) {
            backend.events.append(chunk[0].sequence - 1, chunk).await?;
        }
        let started = Instant::now();
        executor.execute(&availability(driver, false)).await?;
        let first_command_ms = started.elapsed().as_secs_f64() * 1e3;
        let mut histogram = hdrhistogram::Histogram::<u64>::new(3)?;
        let mut total = 0.0;
        for i in 0..args.commands {
            let started = Instant::now();
            executor.execute(&availability(driver, i % 2 == 0)).await?;
            let took = started.elapsed();
            total += took.as_secs_f64();
            histogram.record(took.as_micros() as u64)?;
        }
        let row = Row {
            store: args.store.clone(),
            stream_events: length,
            first_command_ms: round(first_command_ms),
            commands: args.commands,
            p50_ms: round(histogram.value_at_quantile(0.5) as f64 / 1e3),
            p99_ms: round(histogram.value_at_quantile(0.99) as f64 / 1e3),
            mean_ms: round(total * 1e3 / args.commands.max(1) as f64),
        };
        println!("{}", serde_json::to_string(&row)?);
    }
    Ok(())
}

fn round(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}
