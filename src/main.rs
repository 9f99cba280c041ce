//! `ridehail`: one binary for every way Ridehail runs.
//!
//! - `ridehail` / `ridehail dev`: the whole system in one process on the embedded backend.
//! - `ridehail edge | ride-worker | user-worker`: one service per process.
//! - `ridehail replay`: rebuild the read models from the event history (stopped system).
//! - `ridehail projections rebuild|status`: rebuild a read model live, and see how rebuilds stand.
//! - `ridehail dlq list|show|redrive|purge`: the dead letters.
//! - `ridehail admin token`: a token for the edge's admin endpoints.
//! - `ridehail topics apply`: create the Kafka topics or the RabbitMQ exchanges and streams (safe to
//!   run twice).
//! - `ridehail migrate up|down|status`: the MongoDB schema migrations.
//! - `ridehail seed`: demo riders and drivers (development).
//! - `ridehail config check`: load the settings and say whether they hold.
//! - `ridehail probe [URL]`: a health check for images without curl.
//!
//! Each subcommand is one function below. The benchmarks are a binary of their own
//! (`ridehail-bench`, crates/bench).

mod backend;
mod dlq;
mod keys;
mod progress;
mod projections;
mod replay;
mod seed;
mod settings;

/// mimalloc rather than the system allocator: the command and rebuild paths allocate per event
/// (JSON values, strings), and glibc's malloc cost a quarter of a rebuild's time (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

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
    Replay {
        /// Change nothing: compare the stored read models with a fold of the history, print the
        /// result as JSON, and exit with an error if any differs.
        #[arg(long)]
        verify: bool,
    },
    /// Live, versioned rebuilds of the read models (docs/projections.md).
    Projections {
        #[command(subcommand)]
        action: ProjectionsAction,
    },
    /// The dead letters on the bus: list, show, redrive to their source topic, purge.
    Dlq {
        #[command(subcommand)]
        action: dlq::Action,
    },
    /// Operator access to the edge's admin endpoints.
    Admin {
        #[command(subcommand)]
        action: AdminAction,
    },
    /// Kafka topics (or RabbitMQ exchanges and streams) as code.
    Topics {
        #[command(subcommand)]
        action: TopicsAction,
    },
    /// MongoDB schema migrations (indexes), recorded in the `migrations` collection.
    Migrate {
        #[command(subcommand)]
        action: MigrateAction,
    },
    /// Creates demo riders and drivers (online, spread over the city centre); safe to run twice.
    Seed(seed::Args),
    /// Loads the settings (file and `RIDEHAIL__…` variables) and says whether they hold: an unknown
    /// or misspelt name, a bad value or settings that cannot work together fail, as at start-up.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// GETs a health URL and exits 0 on a 2xx answer (the image's HEALTHCHECK: no curl needed).
    /// Without a URL, `RIDEHAIL_PROBE_URL`.
    Probe {
        #[arg(env = "RIDEHAIL_PROBE_URL", default_value = "http://127.0.0.1:8080/health/live")]
        url: String,
    },
    /// Token signing keys.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
}

#[derive(Debug, Subcommand)]
enum KeysAction {
    /// Writes a new Ed25519 signing key (PKCS#8 PEM, mode 0600) to `--out` and prints its public key
    /// as a JWKS.
    Generate {
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Clone, Subcommand)]
enum MigrateAction {
    /// Applies every pending migration.
    Up,
    /// Reverts the newest applied migrations.
    Down {
        #[arg(long, default_value_t = 1)]
        steps: usize,
    },
    /// Lists every migration and whether it is applied.
    Status,
}

#[derive(Debug, Subcommand)]
enum ConfigAction {
    /// Exits 0, printing `settings ok`, if the settings load; else prints why and exits 1.
    Check {
        /// Also load the edge's token and hash keys (`RIDEHAIL_JWT_*`, `RIDEHAIL_HASH_KEY`), as
        /// `ridehail edge` does before it listens.
        #[arg(long)]
        edge: bool,
    },
}

#[derive(Debug, Subcommand)]
enum AdminAction {
    /// Prints a token for `/admin/…` signed with the edge's key (the same settings as `ridehail
    /// edge`), named for the audit log. No login ever yields one.
    Token {
        #[arg(long)]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum ProjectionsAction {
    /// Builds a new generation of `rides` or `users` beside the served one while Ridehail runs, then
    /// switches readers to it; `drivers` is corrected in place. Resumes an interrupted rebuild.
    Rebuild {
        projection: ridehail_ports::Projection,
        /// Seconds the lease lasts without renewal (another process may resume after a crash then).
        #[arg(long, default_value_t = 15)]
        lease_seconds: u64,
        /// Only if the served generation was built by an older code version.
        #[arg(long)]
        if_outdated: bool,
        /// At most this many events per second (spares a store serving traffic).
        #[arg(long)]
        max_rate: Option<u32>,
        /// Events read per page (and folded between two writes).
        #[arg(long, default_value_t = 2000)]
        page: usize,
    },
    /// Every projection's generations, rebuild in progress (position, lag, progress) and last
    /// rebuild, as JSON.
    Status,
}

#[derive(Debug, Subcommand)]
enum TopicsAction {
    /// Creates every missing topic with the configured partitions; reports the others. Safe to re-run.
    Apply,
}

#[derive(Debug, clap::Args, Default)]
struct ServeArgs {
    /// Listen address (overrides the settings); port 0 picks a free one.
    #[arg(long)]
    bind: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Everything this process creates (data files, keys, logs it writes) is its owner's only.
    #[cfg(unix)]
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    // One TLS crypto provider for every client and server in the process (ring; see
    // docs/decisions.md). Installing it first means no library picks another.
    let _ = rustls::crypto::ring::default_provider().install_default();
    if let Some(Command::Probe { url }) = &cli.command {
        // Before the settings and the telemetry: a probe is run every few seconds and must stay light.
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        return runtime.block_on(probe(url));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(cli))
}

/// `ridehail probe`: one `GET` of `url` (`http://host:port/path`) over HTTP/1.1, within 3 s.
async fn probe(url: &str) -> anyhow::Result<()> {
    let uri: hyper::Uri = url.parse().with_context(|| format!("{url} is not a URL"))?;
    let authority = uri.authority().context("the probe URL must be http://host:port/path")?.to_string();
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(&authority).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let request = hyper::Request::get(uri.path()).header(hyper::header::HOST, &authority).body(String::new())?;
        anyhow::Ok(sender.send_request(request).await?.status())
    };
    let status = tokio::time::timeout(Duration::from_secs(3), exchange).await.context("no answer within 3 s")??;
    anyhow::ensure!(status.is_success(), "{url} answered {}", status.as_u16());
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut settings = Settings::load(cli.config.as_deref())?;
    if let Some(dir) = cli.data_dir {
        settings.data_dir = dir;
    }
    let command = cli.command.unwrap_or(Command::Dev(ServeArgs::default()));
    let telemetry =
        ridehail_runtime::telemetry::init(settings.log_format(), "info", command.service(), &settings.tracing)?;
    let result = execute(&settings, command).await;
    // The spans still buffered (the last requests' and records') go out before the process does.
    telemetry.shutdown().await;
    result
}

impl Command {
    /// The service this process is, as logs, spans and metrics name it.
    fn service(&self) -> &'static str {
        match self {
            Self::Dev(_) => "ridehail",
            Self::Edge(_) => "api-edge",
            Self::RideWorker => "ride-worker",
            Self::UserWorker => "user-worker",
            _ => "ridehail-cli",
        }
    }
}

async fn execute(settings: &Settings, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Dev(args) => serve(settings, "dev", Some(args), true, true).await,
        Command::Edge(args) => serve(settings, "edge", Some(args), false, false).await,
        Command::RideWorker => serve(settings, "ride-worker", None, true, false).await,
        Command::UserWorker => serve(settings, "user-worker", None, false, true).await,
        Command::Replay { verify } => replay(settings, verify).await,
        Command::Projections { action } => {
            let backend = backend::open(settings, "projections").await?;
            match action {
                ProjectionsAction::Rebuild { projection, lease_seconds, if_outdated, max_rate, page } => {
                    let options = ridehail_runtime::rebuild::RebuildOptions {
                        lease: Duration::from_secs(lease_seconds.max(1)),
                        force: !if_outdated,
                        max_rate,
                        page: page.max(1),
                        ..ridehail_runtime::rebuild::RebuildOptions::new(ridehail_runtime::rebuild::owner_name())
                    };
                    projections::rebuild(&backend, projection, options).await
                }
                ProjectionsAction::Status => {
                    let status = projections::status(&backend, backend.clock.now()).await?;
                    println!("{}", serde_json::to_string_pretty(&status)?);
                    Ok(())
                }
            }
        }
        Command::Dlq { action } => {
            let bus = backend::open_bus(settings, "dlq")?;
            dlq::run(&*bus, action).await
        }
        Command::Admin { action: AdminAction::Token { name } } => {
            let keys = api_edge::auth::JwtKeys::new(&settings.token_keys()?, settings.edge.token_policy())?;
            let (token, ttl) = keys.issue_admin(&name, chrono::Utc::now())?;
            println!("{}", serde_json::json!({"token": token, "expires_in": ttl}));
            Ok(())
        }
        Command::Topics { action: TopicsAction::Apply } => apply_topics(settings).await,
        Command::Migrate { action } => migrate(settings, action).await,
        Command::Seed(args) => seed(settings, &args).await,
        Command::Config { action: ConfigAction::Check { edge } } => {
            // Loading the settings (in `run`) was the check; the keys are loaded as the edge does.
            if edge {
                api_edge::auth::JwtKeys::new(&settings.token_keys()?, settings.edge.token_policy())?;
                settings.hash_key()?;
            }
            println!("settings ok");
            Ok(())
        }
        Command::Probe { url } => probe(&url).await,
        Command::Keys { action: KeysAction::Generate { out } } => {
            println!("{}", keys::generate(&out)?);
            Ok(())
        }
    }
}

/// Runs the edge (with `edge`), the ride worker and the user worker in this process until SIGTERM or
/// Ctrl-C, or until one of them fails.
async fn serve(
    settings: &Settings,
    role: &str,
    edge: Option<ServeArgs>,
    rides: bool,
    users: bool,
) -> anyhow::Result<()> {
    // Refuse to start at all, rather than half, when the edge's keys are missing or weak.
    let keys = match edge {
        Some(_) => Some((
            api_edge::auth::JwtKeys::new(&settings.token_keys()?, settings.edge.token_policy())?,
            settings.hash_key()?,
        )),
        None => None,
    };
    let backend = backend::open(settings, role).await?;
    if settings.backend.is_embedded() && settings.environment == settings::Environment::Production {
        warn!("production on the embedded backend: one node, no replication (see docs/operations.md)");
    }
    backend.require_topics(&ridehail_events::topics::ALL).await?;
    let shutdown = CancellationToken::new();
    let mut services = JoinSet::new();
    if rides {
        let (backend, config, token) = (backend.clone(), settings.ride_worker.clone(), shutdown.clone());
        services.spawn(async move { ride_worker::run(backend, config, token).await.context("ride-worker") });
    }
    if users {
        let (backend, config, token) = (backend.clone(), settings.user_worker.clone(), shutdown.clone());
        services.spawn(async move { user_worker::run(backend, config, token).await.context("user-worker") });
    }
    if let (Some(args), Some((keys, hash_key))) = (edge, keys) {
        let bind = args.bind.unwrap_or_else(|| settings.http.bind.clone());
        let listener = tokio::net::TcpListener::bind(&bind).await.with_context(|| format!("binding {bind}"))?;
        let address = listener.local_addr()?;
        let state = api_edge::AppState::new(backend.clone(), keys, settings.edge.clone(), hash_key);
        let token = shutdown.clone();
        services.spawn(async move { api_edge::serve(listener, state, token).await.context("edge") });
        info!(%address, data_dir = %settings.data_dir.display(), "ridehail is up");
        // The one line scripts and tests wait for.
        let scheme = if settings.edge.tls.is_some() { "https" } else { "http" };
        announce(&format!("ridehail listening on {scheme}://{address}"))?;
    } else {
        // A worker: metrics and health on a small listener of its own.
        let bind = &settings.http.admin_bind;
        let listener = tokio::net::TcpListener::bind(bind).await.with_context(|| format!("binding {bind}"))?;
        let address = listener.local_addr()?;
        let (backend, token) = (backend.clone(), shutdown.clone());
        services.spawn(async move { api_edge::admin::serve(listener, backend, token).await.context("admin") });
        info!(%address, "admin listener up (metrics, health)");
        announce(&format!("ridehail admin listening on http://{address}"))?;
    }
    supervise(services, shutdown, Duration::from_secs(settings.shutdown_grace_seconds)).await
}

/// A line on stdout that scripts and tests wait for.
fn announce(line: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{line}")?;
    stdout.flush()?;
    Ok(())
}

/// Rebuilds the read models, or (`verify`) compares them with a fold of the history.
async fn replay(settings: &Settings, verify: bool) -> anyhow::Result<()> {
    let backend = backend::open(settings, "replay").await?;
    if !verify {
        return replay::run(&backend).await;
    }
    let report = replay::verify(&backend).await?;
    println!("{}", serde_json::to_string(&report)?);
    anyhow::ensure!(report.mismatches.is_empty(), "{} read models differ from the history", report.mismatches.len());
    Ok(())
}

async fn seed(settings: &Settings, args: &seed::Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        settings.environment == settings::Environment::Development,
        "seed creates users with a published password: development only"
    );
    let backend = backend::open(settings, "seed").await?;
    let report = seed::run(&backend, args).await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

async fn migrate(settings: &Settings, action: MigrateAction) -> anyhow::Result<()> {
    anyhow::ensure!(
        settings.backend.store == settings::StoreKind::Mongodb,
        "migrate is for backend.store = \"mongodb\" (the embedded store creates its tables itself)"
    );
    let db = ridehail_mongo::connect(&settings.mongodb).await?;
    use ridehail_mongo::migrations;
    use std::io::Write as _;
    let mut stdout = std::io::stdout();
    match action {
        MigrateAction::Up => {
            let applied = migrations::up(&db).await?;
            for m in &applied {
                writeln!(stdout, "applied\t{}\t{}", m.version, m.name)?;
            }
            if applied.is_empty() {
                writeln!(stdout, "up to date")?;
            }
        }
        MigrateAction::Down { steps } => {
            for m in migrations::down(&db, steps).await? {
                writeln!(stdout, "reverted\t{}\t{}", m.version, m.name)?;
            }
        }
        MigrateAction::Status => {
            for m in migrations::status(&db).await? {
                let state = match (m.applied_at, m.unknown) {
                    (_, true) => "applied by a newer build".to_owned(),
                    (Some(at), false) => format!("applied {}", at.to_rfc3339()),
                    (None, false) => "pending".to_owned(),
                };
                writeln!(stdout, "{}\t{}\t{state}", m.version, m.name)?;
            }
        }
    }
    Ok(())
}

async fn apply_topics(settings: &Settings) -> anyhow::Result<()> {
    let topics = &ridehail_events::topics::ALL;
    let reports = match settings.backend.bus {
        settings::BusKind::Kafka => ridehail_kafka::apply_topics(&settings.kafka, topics).await?,
        settings::BusKind::Rabbitmq => ridehail_rabbitmq::apply_topics(&settings.rabbitmq, topics).await?,
        settings::BusKind::Embedded => {
            anyhow::bail!(
                "topics apply is for backend.bus = \"kafka\" or \"rabbitmq\" (the embedded bus creates its topics itself)"
            )
        }
    };
    let mut stdout = std::io::stdout();
    use std::io::Write as _;
    for report in reports {
        let state = match report.state {
            ridehail_ports::TopicState::Created => "created".to_owned(),
            ridehail_ports::TopicState::Unchanged => "exists".to_owned(),
            ridehail_ports::TopicState::PartitionMismatch { actual } => {
                format!("exists with {actual} partitions (left unchanged: adding partitions remaps keys)")
            }
        };
        writeln!(stdout, "{}\t{} partitions\t{state}", report.topic, report.partitions)?;
    }
    Ok(())
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

/// SIGTERM or Ctrl-C; if the SIGTERM handler cannot be installed, Ctrl-C still works.
pub(crate) async fn termination() {
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            },
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGTERM; stop with Ctrl-C");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
