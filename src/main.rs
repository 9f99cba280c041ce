//! `ridehail`: one binary for every way Ridehail runs.
//!
//! - `ridehail` / `ridehail dev`: the whole system in one process on the embedded backend.
//! - `ridehail edge | ride-worker | user-worker`: one service per process.
//! - `ridehail replay`: rebuild the read models from the event history.
//! - `ridehail loadgen`: drive a running edge with ride requests and report latency.

mod loadgen;
mod replay;
mod settings;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use ridehail_runtime::{Backend, SystemClock};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::settings::Settings;

#[derive(Debug, Parser)]
#[command(name = "ridehail", version, about = "Ridehail: an event-driven ride-hailing backend")]
struct Cli {
    /// Settings file (TOML); defaults to ./ridehail.toml when present.
    #[arg(long, global = true, env = "RIDEHAIL_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory of the embedded backend (overrides the settings).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Everything in one process on the embedded backend (the default).
    Dev(ServeArgs),
    /// The HTTP edge only.
    Edge(ServeArgs),
    /// The ride worker only (ride commands, matching, timers).
    RideWorker,
    /// The user worker only (sign-ups, profiles, driver availability).
    UserWorker,
    /// Rebuilds every read model from the event store.
    Replay,
    /// Load generator against a running edge.
    Loadgen(loadgen::Args),
}

#[derive(Debug, clap::Args, Default)]
struct ServeArgs {
    /// Listen address (overrides the settings); port 0 picks a free one.
    #[arg(long)]
    bind: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut settings = Settings::load(cli.config.as_deref())?;
    if let Some(dir) = cli.data_dir {
        settings.data_dir = dir;
    }
    ridehail_runtime::telemetry::init(settings.log_format(), "info");
    let command = cli.command.unwrap_or(Command::Dev(ServeArgs::default()));
    if let Command::Loadgen(args) = command {
        return loadgen::run(args).await;
    }
    let backend = open_backend(&settings)?;
    if let Command::Replay = command {
        return replay::run(&backend).await;
    }
    let shutdown = CancellationToken::new();
    let mut services = JoinSet::new();
    let (edge, rides, users) = match &command {
        Command::Dev(args) => (Some(args), true, true),
        Command::Edge(args) => (Some(args), false, false),
        Command::RideWorker => (None, true, false),
        Command::UserWorker => (None, false, true),
        Command::Replay | Command::Loadgen(_) => unreachable!("handled above"),
    };
    // Refuse to start at all, rather than half, when the edge's secret is missing or weak.
    let keys = match edge {
        Some(_) => Some(api_edge::auth::JwtKeys::new(
            &settings.jwt_secret()?,
            &settings.edge.token_issuer,
            chrono::Duration::minutes(i64::from(settings.edge.token_ttl_minutes)),
        )?),
        None => None,
    };
    if rides {
        let (backend, config, token) = (backend.clone(), settings.ride_worker.clone(), shutdown.clone());
        services.spawn(async move { ride_worker::run(backend, config, token).await.context("ride-worker") });
    }
    if users {
        let (backend, config, token) = (backend.clone(), settings.user_worker.clone(), shutdown.clone());
        services.spawn(async move { user_worker::run(backend, config, token).await.context("user-worker") });
    }
    if let (Some(args), Some(keys)) = (edge, keys) {
        let bind = args.bind.clone().unwrap_or_else(|| settings.http.bind.clone());
        let listener = tokio::net::TcpListener::bind(&bind).await.with_context(|| format!("binding {bind}"))?;
        let address = listener.local_addr()?;
        let state = api_edge::AppState::new(backend.clone(), keys, settings.edge.clone());
        let token = shutdown.clone();
        services.spawn(async move { api_edge::serve(listener, state, token).await.context("edge") });
        info!(%address, data_dir = %settings.data_dir.display(), "ridehail is up");
        // The one line scripts and tests wait for.
        use std::io::Write as _;
        let mut stdout = std::io::stdout();
        writeln!(stdout, "ridehail listening on http://{address}")?;
        stdout.flush()?;
    }
    supervise(services, shutdown, Duration::from_secs(settings.shutdown_grace_seconds)).await
}

fn open_backend(settings: &Settings) -> anyhow::Result<Backend> {
    ridehail_runtime::embedded::open(&settings.data_dir, settings.partitions, Arc::new(SystemClock))
}

/// Waits for SIGTERM/Ctrl-C or a service failing, then stops everything with a bounded grace period.
async fn supervise(
    mut services: JoinSet<anyhow::Result<()>>,
    shutdown: CancellationToken,
    grace: Duration,
) -> anyhow::Result<()> {
    let mut failure = None;
    tokio::select! {
        _ = termination() => info!("shutting down: stop intake, finish work in flight"),
        Some(done) = services.join_next() => {
            failure = Some(match done {
                Ok(Ok(())) => anyhow::anyhow!("a service stopped unexpectedly"),
                Ok(Err(e)) => e,
                Err(e) => anyhow::anyhow!("a service panicked: {e}"),
            });
        }
    }
    shutdown.cancel();
    let drained = tokio::time::timeout(grace, async {
        while let Some(done) = services.join_next().await {
            match done {
                Ok(Ok(())) => {}
                Ok(Err(e)) => error!(error = format!("{e:#}"), "service failed during shutdown"),
                Err(e) => error!(error = %e, "service panicked during shutdown"),
            }
        }
    })
    .await;
    if drained.is_err() {
        warn!(
            grace_seconds = grace.as_secs(),
            "grace period over; abandoning work still in flight (it will be redelivered)"
        );
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

async fn termination() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
