//! `ridehail-bench`: Ridehail's benchmarks, apart from the product binary.
//!
//! - `ridehail-bench loadgen`: drives a running edge with ride requests and reports latency.
//! - `ridehail-bench bench-reads`: `GET /v1/rides/{id}` on an edge, or a bare Redis `GET` (the ceiling).
//! - `ridehail-bench bench-rebuild`: a live rebuild of the ride views against the raw read rate of
//!   the same store.
//! - `ridehail-bench bench-long-streams`: a command on a driver's stream as it grows (snapshots).
//! - `ridehail-bench bench-locations`: location pings into the driver geo index.
//! - `ridehail-bench bench-bus`: the raw ceiling of a bus, one producer and one consumer on a scratch
//!   topic.
//!
//! `scripts/bench-broker` and `scripts/bench-reads` run them; method and results are in
//! docs/benchmarks.md.

mod bench_bus;
mod bench_locations;
mod bench_long_streams;
mod bench_reads;
mod bench_rebuild;
mod bench_streams;
mod loadgen;

/// The same allocator as the product binary, so a benchmark measures what runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use ridehail_ports::MessageBus;

#[derive(Debug, Parser)]
#[command(name = "ridehail-bench", version, about = "Ridehail benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load generator against a running edge.
    Loadgen(loadgen::Args),
    /// Read-path load: `GET /v1/rides/{id}` on an edge, or a bare Redis `GET` (the ceiling).
    BenchReads(bench_reads::Args),
    /// Open live-update streams on one edge and report its memory per stream.
    BenchStreams(bench_streams::Args),
    /// A live rebuild of the ride views, against the raw read rate of the same store.
    BenchRebuild(bench_rebuild::Args),
    /// Location pings into the driver geo index, in process.
    BenchLocations(bench_locations::Args),
    /// What a command costs on a driver's stream as it grows (snapshots).
    BenchLongStreams(bench_long_streams::Args),
    /// Raw ceiling of a bus: one producer and one consumer on a scratch topic.
    BenchBus {
        #[command(flatten)]
        bus: BusArgs,
        #[command(flatten)]
        args: bench_bus::Args,
    },
}

/// Which bus `bench-bus` measures: the embedded one in `--data-dir`, or Kafka or RabbitMQ as configured
/// by the same `RIDEHAIL__KAFKA__*` / `RIDEHAIL__RABBITMQ__*` variables the services read.
#[derive(Debug, clap::Args)]
struct BusArgs {
    #[arg(long, env = "RIDEHAIL__BACKEND__BUS", default_value = "embedded", value_parser = ["embedded", "kafka", "rabbitmq"])]
    bus: String,
    /// Data directory of the embedded bus.
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
}

/// The brokers' sections of the services' settings, from the environment.
#[derive(Debug, Default, serde::Deserialize)]
struct BrokerSettings {
    #[serde(default)]
    kafka: ridehail_kafka::KafkaSettings,
    #[serde(default)]
    rabbitmq: ridehail_rabbitmq::RabbitMqSettings,
}

impl BusArgs {
    async fn open(&self) -> anyhow::Result<Arc<dyn MessageBus>> {
        if self.bus == "embedded" {
            let topics = [(bench_bus::TOPIC, 1)];
            std::fs::create_dir_all(&self.data_dir)?;
            return Ok(Arc::new(ridehail_sqlite::EmbeddedBus::open(&self.data_dir.join("bench-bus"), &topics)?));
        }
        let env = config::Environment::with_prefix("RIDEHAIL").prefix_separator("__").separator("__").try_parsing(true);
        let settings: BrokerSettings = config::Config::builder().add_source(env).build()?.try_deserialize()?;
        if self.bus == "rabbitmq" {
            ridehail_rabbitmq::apply_topics(&settings.rabbitmq, &[bench_bus::TOPIC]).await?;
            return Ok(Arc::new(ridehail_rabbitmq::RabbitMqBus::connect(&settings.rabbitmq, "bench")?));
        }
        settings.kafka.validate()?;
        ridehail_kafka::apply_topics(&settings.kafka, &[bench_bus::TOPIC]).await?;
        Ok(Arc::new(ridehail_kafka::KafkaBus::connect(&settings.kafka, "bench")?))
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The one TLS crypto provider of the tree (reqwest is built without one of its own).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Loadgen(args) => loadgen::run(args).await,
            Command::BenchStreams(args) => bench_streams::run(args).await,
            Command::BenchReads(args) => bench_reads::run(args).await,
            Command::BenchRebuild(args) => bench_rebuild::run(args).await,
            Command::BenchLongStreams(args) => bench_long_streams::run(args).await,
            Command::BenchLocations(args) => bench_locations::run(args).await,
            Command::BenchBus { bus, args } => {
                let report = bench_bus::run(bus.open().await?, &args).await?;
                println!("{}", serde_json::to_string(&report)?);
                Ok(())
            }
        }
    })
}
