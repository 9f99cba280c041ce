//! `bench-locations`: location pings into the driver geo index, in process (the write an edge makes
//! per `PUT /v1/drivers/me/location`, without the HTTP around it).
//!
//! `--drivers` drivers are registered in the index (online), then `--pings` pings are sent from
//! `--concurrency` tasks, round-robin over the drivers, each a little further along. Reported: the
//! rate, and the latency of the first `--window` pings against the last `--window` (whether a ping
//! costs more once the index has taken a million).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use ridehail_events::{GeoPoint, UserId};
use ridehail_ports::{DriverLocator, Fix};
use serde::Serialize;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// `embedded` (a fresh data directory) or `redis` (`RIDEHAIL__REDIS__URL`).
    #[arg(long, default_value = "embedded", value_parser = ["embedded", "redis"])]
    store: String,
    #[arg(long, default_value_t = 1_000)]
    drivers: usize,
    #[arg(long, default_value_t = 1_000_000)]
    pings: usize,
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    #[arg(long, default_value_t = 1_000)]
    window: usize,
    #[arg(long, default_value = "bench-locations-data")]
    data_dir: std::path::PathBuf,
}

#[derive(Debug, Serialize)]
struct Report {
    store: String,
    drivers: usize,
    pings: usize,
    pings_per_second: u64,
    p50_ms: f64,
    p99_ms: f64,
    first_window_p99_ms: f64,
    last_window_p99_ms: f64,
}

async fn locator(args: &Args) -> anyhow::Result<Arc<dyn DriverLocator>> {
    if args.store == "redis" {
        let url = std::env::var("RIDEHAIL__REDIS__URL")?;
        let settings = ridehail_redis::RedisSettings { url, ..ridehail_redis::RedisSettings::default() };
        let client = ridehail_redis::RedisClient::connect(&settings).await?;
        return Ok(Arc::new(ridehail_redis::RedisDriverLocator::new(client)));
    }
    let backend = crate::bench_rebuild::fresh_backend("embedded", &args.data_dir).await?;
    Ok(backend.drivers)
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let locator = locator(&args).await?;
    let origin = GeoPoint { lat: 38.72, lon: -9.14 };
    let drivers: Arc<Vec<UserId>> = Arc::new((0..args.drivers).map(|_| UserId::new()).collect());
    for (i, driver) in drivers.iter().enumerate() {
        let location = GeoPoint { lat: origin.lat + i as f64 * 1e-4, lon: origin.lon };
        locator.update_driver(*driver, Some(Fix { location, at: Utc::now() }), true, 1).await?;
    }
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let (locator, drivers, next) = (locator.clone(), drivers.clone(), next.clone());
            let pings = args.pings;
            tokio::spawn(async move {
                let mut took = Vec::new();
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= pings {
                        return anyhow::Ok(took);
                    }
                    let driver = drivers[n % drivers.len()];
                    let step = (n / drivers.len()) as f64 * 1e-6;
                    let location =
                        GeoPoint { lat: origin.lat + (n % drivers.len()) as f64 * 1e-4 + step, lon: origin.lon };
                    let at = Instant::now();
                    anyhow::ensure!(locator.report_location(driver, Fix { location, at: Utc::now() }).await?);
                    took.push((n, at.elapsed()));
                }
            })
        })
        .collect();
    let mut all: Vec<(usize, Duration)> = Vec::with_capacity(args.pings);
    for task in tasks {
        all.extend(task.await??);
    }
    let seconds = started.elapsed().as_secs_f64();
    all.sort_by_key(|(n, _)| *n);
    let quantile = |slice: &[(usize, Duration)], q: f64| {
        let mut d: Vec<Duration> = slice.iter().map(|(_, d)| *d).collect();
        d.sort();
        d.get(((d.len() as f64 * q) as usize).min(d.len().saturating_sub(1))).map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    let window = args.window.min(all.len());
    let report = Report {
        store: args.store.clone(),
        drivers: args.drivers,
        pings: all.len(),
        pings_per_second: (all.len() as f64 / seconds) as u64,
        p50_ms: quantile(&all, 0.5),
        p99_ms: quantile(&all, 0.99),
        first_window_p99_ms: quantile(&all[..window], 0.99),
        last_window_p99_ms: quantile(&all[all.len() - window..], 0.99),
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
