//! `ridehail-bench bench-bus`: the raw ceiling of the configured message bus — one producer and one consumer
//! moving `--messages` records of `--size` bytes through a scratch topic, with nothing else. The
//! benchmark of the full pipeline (`ridehail-bench loadgen`) is compared against this number on the same
//! broker in the same run (see docs/benchmarks.md and scripts/bench-broker).

use std::sync::Arc;
use std::time::{Duration, Instant};

use ridehail_ports::{MessageBus, OutgoingMessage, StartFrom};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Records to move.
    #[arg(long, default_value_t = 200_000)]
    messages: usize,
    /// Bytes per record value (Ridehail's event records are ~300–600 bytes).
    #[arg(long, default_value_t = 400)]
    size: usize,
    /// Records per publish call, and publish calls in flight.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    #[arg(long, default_value_t = 8)]
    in_flight: usize,
}

pub const TOPIC: &str = "ridehail.bench.raw";

#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub messages: usize,
    pub bytes_per_message: usize,
    pub produce_seconds: f64,
    pub end_to_end_seconds: f64,
    pub produced_per_second: f64,
    pub consumed_per_second: f64,
}

pub async fn run(bus: Arc<dyn MessageBus>, args: &Args) -> anyhow::Result<Report> {
    let group = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let mut subscription = bus.subscribe(&group, &[TOPIC], StartFrom::Latest).await?;
    let payload = vec![b'x'; args.size];
    let started = Instant::now();
    let producer = {
        let (bus, payload, args) = (bus.clone(), payload.clone(), args.clone());
        tokio::spawn(async move {
            let batches = args.messages.div_ceil(args.batch);
            let semaphore = Arc::new(tokio::sync::Semaphore::new(args.in_flight));
            let mut tasks = tokio::task::JoinSet::new();
            for b in 0..batches {
                let permit = semaphore.clone().acquire_owned().await?;
                let count = args.batch.min(args.messages - b * args.batch);
                let records = (0..count)
                    .map(|i| OutgoingMessage {
                        key: format!("k{}", (b * args.batch + i) % 1024),
                        headers: vec![("ridehail-type".into(), "Bench".into())],
                        payload: payload.clone(),
                    })
                    .collect();
                let bus = bus.clone();
                tasks.spawn(async move {
                    let _permit = permit;
                    bus.publish(TOPIC, records).await
                });
            }
            while let Some(done) = tasks.join_next().await {
                done??;
            }
            anyhow::Ok(started.elapsed())
        })
    };
    let mut consumed = 0usize;
    let deadline = Instant::now() + Duration::from_secs(300);
    while consumed < args.messages {
        anyhow::ensure!(Instant::now() < deadline, "only {consumed} of {} records arrived", args.messages);
        consumed += subscription.poll(10_000, Duration::from_millis(200)).await?.len();
    }
    let end_to_end = started.elapsed();
    let produced = producer.await??;
    Ok(Report {
        messages: args.messages,
        bytes_per_message: args.size,
        produce_seconds: produced.as_secs_f64(),
        end_to_end_seconds: end_to_end.as_secs_f64(),
        produced_per_second: args.messages as f64 / produced.as_secs_f64(),
        consumed_per_second: args.messages as f64 / end_to_end.as_secs_f64(),
    })
}
