//! The at-least-once consume loop shared by every worker.
//!
//! Guarantee: a record's offset is committed only after its handler returned (its effects are
//! durable) or after it was written to the dead-letter topic. A crash redelivers at most the records
//! handed to the workers and not yet committed, so handlers must be idempotent. Each partition has its
//! own worker task: partitions are processed concurrently and never wait for each other, records of
//! one partition strictly in order. A record that fails to decode (poison) or
//! keeps failing after the retries goes to the dead-letter topic with its original bytes, headers,
//! source position and the reason, and the partition moves on. A record whose effects are partly
//! durable ([`HandleError::Unfinished`]) is retried with capped backoff until it succeeds: the
//! partition waits for the dependency rather than leave work half done.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBuilder};
use ridehail_events::topics::headers;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info_span, warn};

use tokio::sync::mpsc;

use ridehail_ports::{IncomingMessage, MessageBus, OutgoingMessage, PartitionOffset, StartFrom, Subscription};

#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// The record can never be processed (bad bytes, unknown type): dead-letter it at once.
    #[error("poison message: {0}")]
    Poison(String),
    /// Might work on a retry (a dependency hiccup); dead-lettered after the configured attempts.
    #[error(transparent)]
    Transient(#[from] anyhow::Error),
    /// Part of the record's effects are already durable (its events were appended): it is retried
    /// until it succeeds or the consumer shuts down, never dead-lettered, so nothing is left half done.
    #[error("unfinished: {0:#}")]
    Unfinished(anyhow::Error),
}

#[async_trait]
pub trait MessageHandler: Send + Sync {
    async fn handle(&self, message: &IncomingMessage) -> Result<(), HandleError>;
}

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub group: String,
    pub topics: Vec<String>,
    pub start: StartFrom,
    pub batch_size: usize,
    pub poll_wait: Duration,
    /// Attempts per record before it is dead-lettered (at least 1).
    pub max_attempts: usize,
    pub retry_min_delay: Duration,
    pub retry_max_delay: Duration,
    pub dead_letter_topic: String,
}

impl ConsumerConfig {
    pub fn new(group: impl Into<String>, topics: &[&str]) -> Self {
        Self {
            group: group.into(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            start: StartFrom::Committed,
            batch_size: 256,
            poll_wait: Duration::from_millis(200),
            max_attempts: 5,
            retry_min_delay: Duration::from_millis(20),
            retry_max_delay: Duration::from_secs(2),
            dead_letter_topic: ridehail_events::topics::DEAD_LETTERS.to_owned(),
        }
    }
}

/// Finished positions per partition: the offset of the next record to process, once every record
/// before it is handled or dead-lettered. Written by the partition workers, committed by the poll loop.
type Progress = Arc<Mutex<HashMap<(String, u32), u64>>>;

/// One partition's in-order worker: its queue and task.
struct PartitionWorker {
    queue: mpsc::Sender<IncomingMessage>,
    task: tokio::task::JoinHandle<()>,
}

/// Consumes until `shutdown` is cancelled, then finishes the records already handed to the partition
/// workers (a record interrupted in a retry is left uncommitted), commits and returns.
///
/// One worker task per partition processes that partition's records strictly in order; partitions
/// never wait for each other (a slow record delays only its own partition). The poll loop hands
/// records to the workers and commits what they finished; a full worker queue (`batch_size` records)
/// holds the poll loop back, which bounds memory.
pub async fn run(
    bus: Arc<dyn MessageBus>,
    handler: Arc<dyn MessageHandler>,
    config: ConsumerConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
    let mut subscription = bus.subscribe(&config.group, &topics, config.start.clone()).await?;
    let config = Arc::new(config);
    let progress: Progress = Arc::default();
    let mut committed: HashMap<(String, u32), u64> = HashMap::new();
    let mut workers: HashMap<(String, u32), PartitionWorker> = HashMap::new();
    let mut poll_failures = 0u32;
    'consume: while !shutdown.is_cancelled() {
        let batch = tokio::select! {
            batch = subscription.poll(config.batch_size, config.poll_wait) => batch,
            _ = shutdown.cancelled() => break,
        };
        let batch = match batch {
            Ok(batch) => {
                poll_failures = 0;
                batch
            }
            Err(e) => {
                poll_failures += 1;
                warn!(error = %e, group = %config.group, "poll failed; retrying");
                let pause = Duration::from_millis(50 * u64::from(poll_failures.min(40)));
                tokio::select! { _ = tokio::time::sleep(pause) => continue, _ = shutdown.cancelled() => break }
            }
        };
        for message in batch {
            let key = (message.topic.clone(), message.partition);
            let worker = workers.entry(key).or_insert_with(|| {
                spawn_worker(&bus, &handler, &config, &shutdown, &progress, message.topic.clone(), message.partition)
            });
            tokio::select! {
                sent = worker.queue.send(message) => {
                    if sent.is_err() {
                        error!(group = %config.group, "a partition worker stopped; stopping the consumer");
                        break 'consume;
                    }
                }
                _ = shutdown.cancelled() => break 'consume,
            }
        }
        commit_progress(&mut *subscription, &progress, &mut committed, &config.group).await;
    }
    // Close the queues; the workers finish what they hold (retries give up on shutdown).
    let tasks: Vec<_> = workers.into_values().map(|w| w.task).collect();
    for task in tasks {
        let _ = task.await;
    }
    commit_progress(&mut *subscription, &progress, &mut committed, &config.group).await;
    Ok(())
}

fn spawn_worker(
    bus: &Arc<dyn MessageBus>,
    handler: &Arc<dyn MessageHandler>,
    config: &Arc<ConsumerConfig>,
    shutdown: &CancellationToken,
    progress: &Progress,
    topic: String,
    partition: u32,
) -> PartitionWorker {
    let (queue, mut records) = mpsc::channel::<IncomingMessage>(config.batch_size.max(1));
    let (bus, handler, config, shutdown, progress) =
        (bus.clone(), handler.clone(), config.clone(), shutdown.clone(), progress.clone());
    let task = tokio::spawn(async move {
        while let Some(message) = records.recv().await {
            let span = info_span!(
                "consume",
                topic = %message.topic,
                partition = message.partition,
                offset = message.offset,
                message_type = message.header(headers::MESSAGE_TYPE).unwrap_or(""),
                correlation_id = message.header(headers::CORRELATION_ID).unwrap_or(""),
            );
            let finished = process_one(&*bus, &*handler, &config, &shutdown, &message).instrument(span).await;
            if !finished {
                return; // Interrupted by shutdown: this record and the rest stay uncommitted.
            }
            progress.lock().unwrap_or_else(|e| e.into_inner()).insert((topic.clone(), partition), message.offset + 1);
        }
    });
    PartitionWorker { queue, task }
}

/// Commits the partitions that moved since the last commit.
async fn commit_progress(
    subscription: &mut dyn Subscription,
    progress: &Progress,
    committed: &mut HashMap<(String, u32), u64>,
    group: &str,
) {
    let moved: Vec<PartitionOffset> = progress
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|(key, offset)| committed.get(*key) != Some(*offset))
        .map(|((topic, partition), offset)| PartitionOffset {
            topic: topic.clone(),
            partition: *partition,
            offset: *offset,
        })
        .collect();
    if moved.is_empty() {
        return;
    }
    // A failed commit only means these records may be redelivered: handlers are idempotent.
    match subscription.commit(&moved).await {
        Ok(()) => {
            for position in moved {
                committed.insert((position.topic, position.partition), position.offset);
            }
        }
        Err(e) => warn!(error = %e, group, "offset commit failed; records may be redelivered"),
    }
}

/// True once the record is handled or dead-lettered; false if shutdown interrupted it.
async fn process_one(
    bus: &dyn MessageBus,
    handler: &dyn MessageHandler,
    config: &ConsumerConfig,
    shutdown: &CancellationToken,
    message: &IncomingMessage,
) -> bool {
    let mut delays = ExponentialBuilder::default()
        .with_min_delay(config.retry_min_delay)
        .with_max_delay(config.retry_max_delay)
        .with_max_times(config.max_attempts.saturating_sub(1))
        .with_jitter()
        .build();
    let reason = loop {
        match handler.handle(message).await {
            Ok(()) => return true,
            Err(HandleError::Poison(reason)) => break format!("poison: {reason}"),
            Err(HandleError::Unfinished(e)) => {
                let delay = config.retry_max_delay;
                warn!(error = format!("{e:#}"), retry_in_ms = delay.as_millis() as u64, "unfinished record; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return false,
                }
            }
            Err(HandleError::Transient(e)) => match delays.next() {
                Some(delay) => {
                    warn!(error = format!("{e:#}"), retry_in_ms = delay.as_millis() as u64, "handler failed");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => return false,
                    }
                }
                None => break format!("failed after {} attempts: {e:#}", config.max_attempts),
            },
        }
    };
    dead_letter(bus, config, shutdown, message, &reason).await
}

async fn dead_letter(
    bus: &dyn MessageBus,
    config: &ConsumerConfig,
    shutdown: &CancellationToken,
    message: &IncomingMessage,
    reason: &str,
) -> bool {
    error!(reason, "dead-lettering message");
    let mut dlq_headers = message.headers.clone();
    dlq_headers.extend([
        (headers::DLQ_REASON.to_owned(), reason.to_owned()),
        (headers::DLQ_SOURCE_TOPIC.to_owned(), message.topic.clone()),
        (headers::DLQ_SOURCE_PARTITION.to_owned(), message.partition.to_string()),
        (headers::DLQ_SOURCE_OFFSET.to_owned(), message.offset.to_string()),
    ]);
    let record = OutgoingMessage { key: message.key.clone(), headers: dlq_headers, payload: message.payload.clone() };
    let mut pause = Duration::from_millis(50);
    loop {
        match bus.publish(&config.dead_letter_topic, vec![record.clone()]).await {
            Ok(()) => return true,
            Err(e) => {
                // Never drop the record: keep trying (the partition waits) until shutdown.
                warn!(error = %e, "dead-letter publish failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = shutdown.cancelled() => return false,
                }
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
}
