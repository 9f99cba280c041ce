//! `bench-rebuild`: how fast a live rebuild of the ride views goes, against the raw sequential read
//! rate of the same event store in the same run (its ceiling: a rebuild reads every event once).
//!
//! Fills a fresh store with `--events` events (completed rides, 8 events each), then reads it all
//! with `read_all` (the raw rate), then rebuilds `rides` into a new generation (events/s from the
//! start to the switch).

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use ridehail_events::{RideId, UserId};
use ridehail_ports::{Backend, SystemClock};
use ridehail_runtime::rebuild::{Outcome, RebuildOptions, Silent, rebuild};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// `embedded` (a fresh data directory) or `mongodb` (`RIDEHAIL__MONGODB__URI`, a fresh database).
    #[arg(long, default_value = "embedded", value_parser = ["embedded", "mongodb"])]
    store: String,
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Events per `read_all` page, for the raw read and the rebuild alike.
    #[arg(long, default_value_t = 2000)]
    page: usize,
    #[arg(long, default_value = "bench-rebuild-data")]
    data_dir: std::path::PathBuf,
}

#[derive(Debug, Serialize)]
struct Report {
    store: String,
    events: u64,
    rides: usize,
    fill_seconds: f64,
    raw_read_events_per_second: u64,
    rebuild_events_per_second: u64,
    rebuild_seconds: f64,
    documents_written: u64,
    /// The rebuild's rate over the raw read rate.
    ratio: f64,
}

/// A fresh embedded backend under `data_dir`; with `store` `mongodb`, its event store, ride views and
/// catalogue on a fresh database of `RIDEHAIL__MONGODB__URI`.
pub(crate) async fn fresh_backend(store: &str, data_dir: &std::path::Path) -> anyhow::Result<Backend> {
    std::fs::create_dir_all(data_dir)?;
    let dir = tempfile_dir(data_dir)?;
    let mut backend = ridehail_sqlite::open(&dir, 1, Arc::new(SystemClock))?;
    if store == "mongodb" {
        let uri = std::env::var("RIDEHAIL__MONGODB__URI")?;
        let database = format!("bench-{}", uuid::Uuid::new_v4().simple());
        let settings = ridehail_mongo::MongoSettings { uri, database, ..ridehail_mongo::MongoSettings::default() };
        let db = ridehail_mongo::connect(&settings).await?;
        ridehail_mongo::migrations::up(&db).await?;
        let stores = ridehail_mongo::Stores::new(&db, false);
        backend.events = stores.events;
        backend.rides = stores.rides;
        backend.users = stores.users;
        backend.projections = stores.projections;
    }
    Ok(backend)
}

/// A new, empty directory under `base`.
fn tempfile_dir(base: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    let dir = base.join(uuid::Uuid::new_v4().simple().to_string());
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let backend = fresh_backend(&args.store, &args.data_dir).await?;
    let rides = args.events.div_ceil(8);
    let started = Instant::now();
    let at = Utc::now();
    // Appends in parallel streams (each ride is its own stream).
    let fill = futures::stream::iter(0..rides).map(|_| {
        let events = backend.events.clone();
        async move {
            let history = ridehail_contract::completed_ride_history(RideId::new(), UserId::new(), UserId::new(), at);
            events.append(0, &history).await
        }
    });
    use futures::StreamExt as _;
    let results: Vec<_> = fill.buffer_unordered(16).collect().await;
    for result in results {
        result?;
    }
    let fill_seconds = started.elapsed().as_secs_f64();
    eprintln!("filled {rides} rides in {fill_seconds:.1} s");

    let read_started = Instant::now();
    let (mut after, mut read) = (None::<String>, 0u64);
    loop {
        let page = backend.events.read_all(after.as_deref(), args.page).await?;
        let Some(next) = page.next else { break };
        read += page.events.len() as u64;
        after = Some(next);
    }
    let raw = read as f64 / read_started.elapsed().as_secs_f64();
    eprintln!("raw read: {read} events at {raw:.0}/s");

    let options = RebuildOptions { page: args.page, ..RebuildOptions::new("bench") };
    let mut fold = ride_worker::rebuild::RideFold::default();
    let Outcome::Finished(summary) = rebuild(&backend, &mut fold, &options, &Silent, &CancellationToken::new()).await?
    else {
        anyhow::bail!("the rebuild did not finish");
    };
    let seconds = (summary.finished_at - summary.started_at).as_seconds_f64();
    let rate = summary.events_read as f64 / seconds;
    let report = Report {
        store: args.store.clone(),
        events: read,
        rides,
        fill_seconds,
        raw_read_events_per_second: raw as u64,
        rebuild_events_per_second: rate as u64,
        rebuild_seconds: seconds,
        documents_written: summary.documents_written,
        ratio: (rate / raw * 100.0).round() / 100.0,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
