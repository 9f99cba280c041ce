//! `ridehail-bench bench-reads`: load on one read target, and how fast it answers.
//!
//! Two targets: `GET /v1/rides/{id}` on a running edge (`--url`, `--token`, `--ride-id`; or any other
//! path with `--path`, e.g. `/health/live` for the edge's floor without auth or I/O), or a bare Redis
//! `GET` of one key over one multiplexed connection (`--redis-url`, `--key`), the ceiling a cache hit
//! can approach. Two phases, each after an unrecorded warm-up at the fixed rate:
//!
//! - **Fixed rate** (open loop): `--rate` requests per second for `--duration` seconds, spread over
//!   `--connections` callers, each with at most one request in flight. A request's latency counts from
//!   its scheduled time when every caller was still busy at that time (so a slow target is not let
//!   off by the generator waiting for it), else from when it was sent (so the timer's millisecond
//!   granularity does not count as the target's time).
//! - **Maximum throughput** (closed loop): `--connections` callers send back to back for
//!   `--max-duration` seconds; the completed requests per second are the target's ceiling on this
//!   machine, generator included.
//!
//! Latencies go to HDR histograms (microseconds). With `--server-pid`, the CPU time and memory of those
//! processes during each phase are reported too (Linux `/proc`). Loopback targets only.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use reqwest::header::HeaderValue;
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::{Value, json};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Base URL of the edge (loopback only); the target is `GET /v1/rides/{ride_id}` there.
    #[arg(long, required_unless_present = "redis_url", conflicts_with = "redis_url")]
    url: Option<String>,
    /// Bearer token sent with each request, a party to the ride (read from the environment so it
    /// stays out of `ps`).
    #[arg(long, env = "RIDEHAIL_BENCH_TOKEN", hide_env_values = true, value_parser = secret)]
    token: Option<SecretString>,
    /// The ride to read.
    #[arg(long, requires = "url", conflicts_with = "path")]
    ride_id: Option<String>,
    /// Another path to read instead of a ride, e.g. `/health/live`.
    #[arg(long, requires = "url")]
    path: Option<String>,
    /// Redis URL (loopback only); the target is a bare `GET` of `--key`.
    #[arg(long, requires = "key")]
    redis_url: Option<String>,
    /// The Redis key to `GET`; it must hold a string.
    #[arg(long)]
    key: Option<String>,
    /// Requests per second of the fixed-rate phase; 0 skips the phase.
    #[arg(long, default_value_t = 5_000)]
    rate: u32,
    /// Seconds of the fixed-rate phase.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Seconds of the closed-loop maximum-throughput phase; 0 skips the phase.
    #[arg(long, default_value_t = 10)]
    max_duration: u64,
    /// Concurrent callers: HTTP connections, or tasks sharing the one Redis connection.
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// Seconds of unrecorded load before each phase (connections open, caches and allocators warm).
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Name of the run in the report.
    #[arg(long, default_value = "")]
    label: String,
    /// Server processes whose CPU time and memory to report per phase (repeat the flag).
    #[arg(long = "server-pid")]
    server_pids: Vec<u32>,
    /// For `https://` URLs: the CA that signed the edge's certificate (PEM).
    #[arg(long)]
    ca_file: Option<std::path::PathBuf>,
    /// A new connection (and, over HTTPS, a full handshake) for every request: the handshake rate.
    #[arg(long)]
    fresh_connections: bool,
}

/// A TLS client configuration trusting `ca_file` (ring, like the rest of the tree; no session
/// resumption, so every new connection is a full handshake).
fn tls_config(ca_file: &std::path::Path) -> anyhow::Result<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file).context("reading --ca-file")? {
        roots.add(cert.context("--ca-file is not PEM")?)?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

fn secret(raw: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(raw.to_owned()))
}

/// What one call reads.
#[derive(Debug, Clone)]
enum Target {
    Http { client: reqwest::Client, url: String, authorization: Option<HeaderValue> },
    Redis { connection: redis::aio::MultiplexedConnection, key: String },
}

impl Target {
    async fn open(args: &Args) -> anyhow::Result<Self> {
        match (&args.url, &args.redis_url) {
            (Some(base), None) => {
                anyhow::ensure!(is_loopback(base), "bench-reads only targets loopback addresses");
                let path = match (&args.ride_id, &args.path) {
                    (Some(ride_id), None) => format!("/v1/rides/{ride_id}"),
                    (None, Some(path)) if path.starts_with('/') => path.clone(),
                    _ => anyhow::bail!("--url needs --ride-id, or --path starting with '/'"),
                };
                let authorization = match &args.token {
                    Some(token) => {
                        let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose_secret()))
                            .context("the token is not a valid header value")?;
                        value.set_sensitive(true);
                        Some(value)
                    }
                    None if args.ride_id.is_some() => {
                        anyhow::bail!("--token (or RIDEHAIL_BENCH_TOKEN) is required to read a ride")
                    }
                    None => None,
                };
                let idle = if args.fresh_connections { 0 } else { args.connections };
                let mut builder = reqwest::Client::builder()
                    .pool_max_idle_per_host(idle)
                    .tcp_nodelay(true)
                    .timeout(Duration::from_secs(10));
                if let Some(ca_file) = &args.ca_file {
                    builder = builder.use_preconfigured_tls(tls_config(ca_file)?);
                }
                let client = builder.build()?;
                Ok(Self::Http { client, url: format!("{}{path}", base.trim_end_matches('/')), authorization })
            }
            (None, Some(url)) => {
                anyhow::ensure!(is_loopback(url), "bench-reads only targets loopback addresses");
                let key = args.key.clone().context("--key is required with --redis-url")?;
                let client = redis::Client::open(url.as_str()).context("invalid Redis URL")?;
                let connection = client.get_multiplexed_async_connection().await.context("connecting to Redis")?;
                Ok(Self::Redis { connection, key })
            }
            _ => anyhow::bail!("give either --url (with --token and --ride-id) or --redis-url (with --key)"),
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Http { url, .. } => format!("GET {url}"),
            Self::Redis { key, .. } => format!("Redis GET {key} (one multiplexed connection)"),
        }
    }

    /// One read, body included; an error says what was wrong.
    async fn call(&mut self) -> Result<(), String> {
        match self {
            Self::Http { client, url, authorization } => {
                let mut request = client.get(url.as_str());
                if let Some(authorization) = authorization {
                    request = request.header(reqwest::header::AUTHORIZATION, authorization.clone());
                }
                let response = request.send().await.map_err(|e| format!("request failed: {e}"))?;
                let status = response.status();
                let body = response.bytes().await.map_err(|e| format!("body failed: {e}"))?;
                if status != reqwest::StatusCode::OK || body.is_empty() {
                    return Err(format!("answered {status}"));
                }
                Ok(())
            }
            Self::Redis { connection, key } => {
                let value: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(key.as_str())
                    .query_async(connection)
                    .await
                    .map_err(|e| format!("GET failed: {e}"))?;
                match value {
                    Some(v) if !v.is_empty() => Ok(()),
                    _ => Err("the key is missing or empty".to_owned()),
                }
            }
        }
    }
}

/// Whether the URL's host is a loopback address (or `localhost`).
fn is_loopback(url: &str) -> bool {
    let Ok(parsed) = reqwest::Url::parse(url) else { return false };
    match parsed.host_str() {
        Some("localhost") => true,
        Some(host) => {
            host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
        }
        None => false,
    }
}

/// What one caller saw in one phase.
struct Tally {
    latency_us: Histogram<u64>,
    errors: u64,
    /// The first few errors, to say what went wrong.
    samples: Vec<String>,
}

impl Tally {
    fn new() -> anyhow::Result<Self> {
        Ok(Self { latency_us: Histogram::new_with_bounds(1, 60_000_000, 3)?, errors: 0, samples: Vec::new() })
    }

    fn record(&mut self, outcome: Result<(), String>, since: Instant) {
        match outcome {
            Ok(()) => {
                let micros = u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX);
                self.latency_us.saturating_record(micros.max(1));
            }
            Err(error) => {
                self.errors += 1;
                if self.samples.len() < 5 {
                    self.samples.push(error);
                }
            }
        }
    }

    fn merge(&mut self, other: Self) -> anyhow::Result<()> {
        self.latency_us.add(&other.latency_us)?;
        self.errors += other.errors;
        for sample in other.samples {
            if self.samples.len() < 5 {
                self.samples.push(sample);
            }
        }
        Ok(())
    }
}

/// How a phase drives the target.
#[derive(Debug, Clone, Copy)]
enum Load {
    /// Open loop: this many requests per second.
    FixedRate(u32),
    /// Closed loop: every caller sends its next request when the previous one is answered.
    Max,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.connections >= 1, "--connections must be at least 1");
    let target = Target::open(&args).await?;
    // Fails early, with the reason, instead of reporting a phase of errors.
    target.clone().call().await.map_err(|e| anyhow::anyhow!("the target does not answer: {e}"))?;

    let warmup = Duration::from_secs(args.warmup);
    let mut report = json!({
        "label": args.label,
        "target": target.describe(),
        "connections": args.connections,
    });
    if args.rate > 0 {
        let load = Load::FixedRate(args.rate);
        phase(&target, load, warmup, args.connections).await?;
        let measured = measured_phase(&target, load, Duration::from_secs(args.duration), &args).await?;
        report["fixed_rate"] = measured;
    }
    if args.max_duration > 0 {
        phase(&target, Load::FixedRate(args.rate.max(1_000)), warmup, args.connections).await?;
        let measured = measured_phase(&target, Load::Max, Duration::from_secs(args.max_duration), &args).await?;
        report["max_throughput"] = measured;
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// A phase with its report: rate, latency, errors, and the CPU and memory of the processes involved.
async fn measured_phase(target: &Target, load: Load, duration: Duration, args: &Args) -> anyhow::Result<Value> {
    let servers_before: Vec<Option<f64>> = args.server_pids.iter().map(|pid| cpu_seconds(&pid.to_string())).collect();
    let generator_before = cpu_seconds("self");
    let (tally, elapsed) = phase(target, load, duration, args.connections).await?;
    let generator_cpu = cpu_seconds("self").zip(generator_before).map(|(after, before)| after - before);
    let answered = tally.latency_us.len();
    let h = &tally.latency_us;
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let per_request_us = |cpu: f64| if answered == 0 { None } else { Some(cpu * 1e6 / answered as f64) };
    let servers: Vec<Value> = args
        .server_pids
        .iter()
        .zip(servers_before)
        .map(|(pid, before)| {
            let cpu = cpu_seconds(&pid.to_string()).zip(before).map(|(after, before)| after - before);
            json!({
                "pid": pid,
                "cpu_s": cpu,
                "cpu_us_per_request": cpu.and_then(per_request_us),
                "memory": crate::loadgen::memory_of(*pid),
            })
        })
        .collect();
    Ok(json!({
        "target_per_s": match load { Load::FixedRate(rate) => Some(rate), Load::Max => None },
        "seconds": elapsed.as_secs_f64(),
        "answered": answered,
        "errors": tally.errors,
        "error_samples": tally.samples,
        "achieved_per_s": answered as f64 / elapsed.as_secs_f64(),
        "latency_ms": {
            "p50": ms(0.50), "p95": ms(0.95), "p99": ms(0.99), "p999": ms(0.999),
            "max": h.max() as f64 / 1000.0, "mean": h.mean() / 1000.0,
        },
        "generator_cpu_s": generator_cpu,
        "generator_cpu_us_per_request": generator_cpu.and_then(per_request_us),
        "servers": servers,
    }))
}

/// Runs `connections` callers for `duration`; returns what they saw and how long the phase took (from
/// its start to the last answer).
async fn phase(
    target: &Target,
    load: Load,
    duration: Duration,
    connections: usize,
) -> anyhow::Result<(Tally, Duration)> {
    let start = Instant::now() + Duration::from_millis(5);
    let end = start + duration;
    let next = Arc::new(AtomicU64::new(0));
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let (mut target, next) = (target.clone(), next.clone());
        callers.spawn(async move {
            let mut tally = Tally::new()?;
            tokio::time::sleep_until(start.into()).await;
            match load {
                Load::FixedRate(rate) => {
                    let period = 1.0 / f64::from(rate);
                    loop {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        let scheduled = start + Duration::from_secs_f64(n as f64 * period);
                        if scheduled >= end {
                            break;
                        }
                        let since = if Instant::now() >= scheduled {
                            scheduled
                        } else {
                            tokio::time::sleep_until(scheduled.into()).await;
                            Instant::now()
                        };
                        let outcome = target.call().await;
                        tally.record(outcome, since);
                    }
                }
                Load::Max => {
                    while Instant::now() < end {
                        let since = Instant::now();
                        let outcome = target.call().await;
                        tally.record(outcome, since);
                    }
                }
            }
            anyhow::Ok(tally)
        });
    }
    let mut total = Tally::new()?;
    while let Some(done) = callers.join_next().await {
        total.merge(done.context("a caller panicked")??)?;
    }
    Ok((total, start.elapsed()))
}

/// User plus system CPU seconds of a process (`self` or a PID), from `/proc/<pid>/stat` (Linux, with
/// the usual 100 clock ticks per second).
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces: state is the
    // first, utime the 12th, stime the 13th.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_hosts_are_targets() {
        for url in ["http://127.0.0.1:8080", "http://localhost:1", "http://[::1]:80", "redis://127.0.0.2:6379"] {
            assert!(is_loopback(url), "{url}");
        }
        for url in ["http://10.0.0.1:8080", "http://example.com", "redis://192.168.1.2:6379", "not a url"] {
            assert!(!is_loopback(url), "{url}");
        }
    }

    #[test]
    fn this_process_has_a_cpu_time() {
        assert!(cpu_seconds("self").is_some_and(|s| s >= 0.0));
    }
}
