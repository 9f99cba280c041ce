//! `ridehail-bench loadgen`: registers drivers online around a city centre and riders, then fires ride
//! requests at a fixed rate (open loop) for a fixed time, and reports end-to-end latency.
//!
//! One measured ride: `POST /v1/rides` (with `Prefer: wait`) → the offered driver `POST …/accept`
//! (with `Prefer: wait`) → the read model shows `driver_assigned`. The latency is from sending the
//! request to receiving the assigned ride. The rider then cancels, which frees the driver for the next
//! ride (not measured). Bounded: it stops after `--duration` seconds and a drain of 15 s.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use rand::Rng as _;
use serde_json::{Value, json};
use tokio::sync::{Mutex, Semaphore};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Base URL of the edge (loopback only).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Drivers to register and put online.
    #[arg(long, default_value_t = 200)]
    drivers: usize,
    /// Riders to register (rides are spread over them).
    #[arg(long, default_value_t = 100)]
    riders: usize,
    /// Ride requests per second.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Seconds of load.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Rides in flight at most (protects the generator itself).
    #[arg(long, default_value_t = 4000)]
    max_in_flight: usize,
    /// PID of the server, to report its memory.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Follow each ride's live updates (`/v1/rides/{id}/updates`) from its offer on, and report the
    /// delay from each later event's `occurred_at` to its arrival on the stream.
    #[arg(long)]
    watch: bool,
}

const CENTRE: (f64, f64) = (38.7223, -9.1393);

pub(crate) struct Party {
    pub(crate) id: String,
    pub(crate) token: String,
}

#[derive(Default)]
struct Counters {
    assigned: AtomicU64,
    not_matched: AtomicU64,
    errors: AtomicU64,
    /// The first few errors, to say what went wrong.
    samples: std::sync::Mutex<Vec<String>>,
}

fn is_loopback(url: &str) -> bool {
    ["http://127.", "http://localhost", "http://[::1]"].iter().any(|p| url.starts_with(p))
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(is_loopback(&args.url), "loadgen only targets loopback addresses");
    let client = reqwest::Client::builder().pool_max_idle_per_host(512).timeout(Duration::from_secs(30)).build()?;
    let base = args.url.trim_end_matches('/').to_owned();
    let run_id = uuid::Uuid::new_v4().simple().to_string();

    let setup = Instant::now();
    let drivers = register_many(&client, &base, &run_id, "driver", args.drivers).await?;
    let riders = register_many(&client, &base, &run_id, "rider", args.riders).await?;
    for driver in &drivers {
        let (lat, lon) = {
            let mut rng = rand::rng();
            (CENTRE.0 + rng.random_range(-0.02..0.02), CENTRE.1 + rng.random_range(-0.02..0.02))
        };
        let body = json!({ "online": true, "location": { "lat": lat, "lon": lon } });
        let r = client
            .put(format!("{base}/v1/drivers/me/availability"))
            .bearer_auth(&driver.token)
            .header("prefer", "wait=10")
            .json(&body)
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "driver online failed: {}", r.status());
    }
    eprintln!(
        "setup: {} drivers online, {} riders, in {:.1} s",
        drivers.len(),
        riders.len(),
        setup.elapsed().as_secs_f64()
    );

    let driver_tokens: Arc<std::collections::HashMap<String, String>> =
        Arc::new(drivers.iter().map(|d| (d.id.clone(), d.token.clone())).collect());
    // One ride under way per rider: each ride takes a free rider and gives them back after the cancel.
    let riders = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::from(riders)));
    let histogram = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?));
    let live = args.watch.then(|| Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap())));
    let counters = Arc::new(Counters::default());
    let in_flight = Arc::new(Semaphore::new(args.max_in_flight));
    let mut tasks = tokio::task::JoinSet::new();
    let interval = Duration::from_secs_f64(1.0 / f64::from(args.rate.max(1)));
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut sent = 0u64;
    let mut dropped = 0u64;
    while started.elapsed() < Duration::from_secs(args.duration) {
        ticker.tick().await;
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            dropped += 1;
            continue;
        };
        let Some(rider) = riders.lock().unwrap_or_else(|p| p.into_inner()).pop_front() else {
            dropped += 1;
            continue;
        };
        sent += 1;
        let (client, base, riders, drivers) = (client.clone(), base.clone(), riders.clone(), driver_tokens.clone());
        let (histogram, counters, live) = (histogram.clone(), counters.clone(), live.clone());
        tasks.spawn(async move {
            let outcome = one_ride(&client, &base, &rider, &drivers, live).await;
            riders.lock().unwrap_or_else(|p| p.into_inner()).push_back(rider);
            match outcome {
                Ok(Some(latency)) => {
                    counters.assigned.fetch_add(1, Ordering::Relaxed);
                    let _ = histogram.lock().await.record(latency.as_micros() as u64);
                }
                Ok(None) => {
                    counters.not_matched.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    let mut samples = counters.samples.lock().unwrap_or_else(|p| p.into_inner());
                    if samples.len() < 5 {
                        samples.push(format!("{e:#}"));
                    }
                }
            }
            drop(permit);
        });
    }
    let offered_for = started.elapsed();
    let _ = tokio::time::timeout(Duration::from_secs(15), async { while tasks.join_next().await.is_some() {} }).await;
    let elapsed = started.elapsed();

    let h = histogram.lock().await;
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let assigned = counters.assigned.load(Ordering::Relaxed);
    let report = json!({
        "target_rate_per_s": args.rate,
        "requests_sent": sent,
        "requests_dropped_by_generator": dropped,
        "offered_for_s": offered_for.as_secs_f64(),
        "rides_assigned": assigned,
        "rides_not_matched": counters.not_matched.load(Ordering::Relaxed),
        "errors": counters.errors.load(Ordering::Relaxed),
        "error_samples": *counters.samples.lock().unwrap_or_else(|p| p.into_inner()),
        "assigned_per_s": assigned as f64 / elapsed.as_secs_f64(),
        "latency_ms": { "p50": ms(0.50), "p95": ms(0.95), "p99": ms(0.99), "max": h.max() as f64 / 1000.0 },
        "server_memory": args.server_pid.and_then(memory_of),
    });
    let mut report = report;
    if let Some(live) = &live {
        let h = live.lock().await;
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        report["live_update_delay_ms"] = json!({
            "events": h.len(), "p50": ms(0.50), "p95": ms(0.95), "p99": ms(0.99), "max": h.max() as f64 / 1000.0
        });
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// A random trip around the centre, at least ~500 m long (shorter trips are refused by design).
fn trip() -> (Value, Value) {
    let mut rng = rand::rng();
    loop {
        let pickup = (CENTRE.0 + rng.random_range(-0.015..0.015), CENTRE.1 + rng.random_range(-0.015..0.015));
        let dropoff = (CENTRE.0 + rng.random_range(-0.03..0.03), CENTRE.1 + rng.random_range(-0.03..0.03));
        if (pickup.0 - dropoff.0).abs() + (pickup.1 - dropoff.1).abs() > 0.005 {
            return (json!({ "lat": pickup.0, "lon": pickup.1 }), json!({ "lat": dropoff.0, "lon": dropoff.1 }));
        }
    }
}

/// One ride, request to assignment; `None` if no driver was offered in time.
async fn one_ride(
    client: &reqwest::Client,
    base: &str,
    rider: &Party,
    drivers: &std::collections::HashMap<String, String>,
    live: Option<Arc<Mutex<Histogram<u64>>>>,
) -> anyhow::Result<Option<Duration>> {
    let (pickup, dropoff) = trip();
    let start = Instant::now();
    let ride: Value = client
        .post(format!("{base}/v1/rides"))
        .bearer_auth(&rider.token)
        .header("prefer", "wait=10")
        .json(&json!({ "pickup": pickup, "dropoff": dropoff }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let ride_id = ride["ride_id"].as_str().context("no ride id")?.to_owned();
    let Some(driver_id) = ride["offered_driver_id"].as_str() else {
        cancel(client, base, &rider.token, &ride_id).await;
        return Ok(None);
    };
    let token = drivers.get(driver_id).context("offer to an unknown driver")?;
    if let Some(live) = live {
        // Connected before the accept: what follows (assigned, cancelled) arrives live.
        let offered = ride["version"].as_u64().unwrap_or(2).to_string();
        let stream = client
            .get(format!("{base}/v1/rides/{ride_id}/updates"))
            .bearer_auth(&rider.token)
            .header("last-event-id", offered)
            .send()
            .await?
            .error_for_status()?;
        tokio::spawn(watch(stream, live));
    }
    let assigned: Value = client
        .post(format!("{base}/v1/rides/{ride_id}/accept"))
        .bearer_auth(token)
        .header("prefer", "wait=10")
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let latency = start.elapsed();
    anyhow::ensure!(assigned["status"] == "driver_assigned", "ride not assigned: {assigned}");
    cancel(client, base, &rider.token, &ride_id).await;
    Ok(Some(latency))
}

/// Records, for each event of a ride's stream, the delay from its `occurred_at` to now, until the
/// ride is cancelled (the load's last step) or 20 s have passed.
async fn watch(stream: reqwest::Response, live: Arc<Mutex<Histogram<u64>>>) {
    use futures::StreamExt as _;
    let mut body = stream.bytes_stream();
    let mut buffer = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while let Ok(Some(Ok(chunk))) = tokio::time::timeout_at(deadline, body.next()).await {
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let Some(data) = block.lines().find_map(|l| l.strip_prefix("data:")) else { continue };
            let Ok(event) = serde_json::from_str::<Value>(data.trim()) else { continue };
            let occurred = event["occurred_at"].as_str().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
            if let Some(occurred) = occurred {
                let delay = chrono::Utc::now().signed_duration_since(occurred).num_microseconds().unwrap_or(0);
                let _ = live.lock().await.record(delay.max(1) as u64);
            }
            if event["event_type"] == "RideCancelled" {
                return;
            }
        }
    }
}

async fn cancel(client: &reqwest::Client, base: &str, token: &str, ride_id: &str) {
    let _ = client
        .post(format!("{base}/v1/rides/{ride_id}/cancel"))
        .bearer_auth(token)
        .header("prefer", "wait=10")
        .json(&json!({ "reason": "load test" }))
        .send()
        .await;
}

async fn register_many(
    client: &reqwest::Client,
    base: &str,
    run_id: &str,
    role: &str,
    count: usize,
) -> anyhow::Result<Vec<Party>> {
    let semaphore = Arc::new(Semaphore::new(4));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..count {
        let (client, base, semaphore) = (client.clone(), base.to_owned(), semaphore.clone());
        let email = format!("{role}-{i}-{run_id}@loadgen.example");
        let role = role.to_owned();
        tasks.spawn(async move {
            let _permit = semaphore.acquire().await?;
            register_and_login(&client, &base, &email, &role).await
        });
    }
    let mut parties = Vec::with_capacity(count);
    while let Some(result) = tasks.join_next().await {
        parties.push(result??);
    }
    Ok(parties)
}

pub(crate) async fn register_and_login(
    client: &reqwest::Client,
    base: &str,
    email: &str,
    role: &str,
) -> anyhow::Result<Party> {
    let password = "load-test-password-123";
    let mut body = json!({ "email": email, "password": password, "name": "Load Test", "role": role });
    if role == "driver" {
        body["vehicle"] = json!({ "make": "Toyota", "model": "Prius", "colour": "white", "plate": "LT-00-00" });
    }
    let r = client.post(format!("{base}/v1/users")).header("prefer", "wait=10").json(&body).send().await?;
    anyhow::ensure!(r.status().as_u16() == 201, "registration answered {}", r.status());
    let session: Value = client
        .post(format!("{base}/v1/sessions"))
        .json(&json!({ "email": email, "password": password }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(Party {
        id: session["user_id"].as_str().context("no user id")?.to_owned(),
        token: session["access_token"].as_str().context("no token")?.to_owned(),
    })
}

/// Current and peak resident memory of a process, from /proc (Linux).
pub(crate) fn memory_of(pid: u32) -> Option<Value> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some(json!({ "rss_mib": field("VmRSS:")? as f64 / 1024.0, "peak_rss_mib": field("VmHWM:")? as f64 / 1024.0 }))
}
