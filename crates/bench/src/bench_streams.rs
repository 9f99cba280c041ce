//! `ridehail-bench bench-streams`: opens `--streams` live-update streams (`/v1/rides/{id}/updates`)
//! on one edge, all of one ride, and reports the edge's resident memory before and after, per stream.
//! The edge must allow that many streams per user (`edge.max_streams_per_user`).

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use serde_json::{Value, json};

use crate::loadgen::{memory_of, register_and_login};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Base URL of the edge (loopback only).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Streams to open.
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    /// PID of the edge, to read its memory.
    #[arg(long)]
    server_pid: u32,
}

fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let memory = memory_of(pid).ok_or_else(|| anyhow::anyhow!("cannot read the memory of process {pid}"))?;
    memory["rss_mib"].as_f64().ok_or_else(|| anyhow::anyhow!("no rss"))
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.url.starts_with("http://127."), "bench-streams only targets loopback addresses");
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build()?;
    let base = args.url.trim_end_matches('/').to_owned();
    let run = uuid::Uuid::new_v4().simple().to_string();
    let driver = register_and_login(&client, &base, &format!("streams-driver-{run}@example.com"), "driver").await?;
    let rider = register_and_login(&client, &base, &format!("streams-rider-{run}@example.com"), "rider").await?;
    let online = json!({ "online": true, "location": { "lat": 38.7230, "lon": -9.1400 } });
    client
        .put(format!("{base}/v1/drivers/me/availability"))
        .bearer_auth(&driver.token)
        .header("prefer", "wait=10")
        .json(&online)
        .send()
        .await?
        .error_for_status()?;
    let trip = json!({ "pickup": { "lat": 38.7223, "lon": -9.1393 }, "dropoff": { "lat": 38.7369, "lon": -9.1427 } });
    let ride: Value = client
        .post(format!("{base}/v1/rides"))
        .bearer_auth(&rider.token)
        .header("prefer", "wait=10")
        .json(&trip)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let ride_id = ride["ride_id"].as_str().ok_or_else(|| anyhow::anyhow!("no ride id: {ride}"))?.to_owned();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_mib(args.server_pid)?;
    let started = Instant::now();
    let mut open = Vec::with_capacity(args.streams);
    for _ in 0..args.streams {
        let response = client
            .get(format!("{base}/v1/rides/{ride_id}/updates"))
            .bearer_auth(&rider.token)
            .send()
            .await?
            .error_for_status()?;
        // Read the first event, so the stream is established on the edge.
        let mut body = response.bytes_stream();
        let _ = tokio::time::timeout(Duration::from_secs(5), body.next()).await;
        open.push(body);
    }
    let opened_in = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_mib(args.server_pid)?;
    let report = json!({
        "streams": open.len(),
        "opened_in_s": opened_in.as_secs_f64(),
        "edge_rss_before_mib": before,
        "edge_rss_after_mib": after,
        "kib_per_stream": (after - before) * 1024.0 / open.len().max(1) as f64,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
