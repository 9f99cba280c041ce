//! The at-least-once consume loop shared by every worker.
//!
//! Guarantee: a record's offset is committed only after its handler returned (its effects are
//! durable) or after it was written to the dead-letter topic. A crash redelivers at most the records
//! of the batch in flight, so handlers must be idempotent. Partitions of a batch are processed
//! concurrently; records of one partition strictly in order. A record that fails to decode (poison) or
//! keeps failing after the retries goes to the dead-letter topic with its original bytes, headers,
//! source position and the reason, and the partition moves on. A record whose effects are partly
//! durable ([`HandleError::Unfinished`]) is retried with capped backoff until it succeeds: the
//! partition waits for the dependency rather than leave work half done.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBuilder};
use ridehail_events::topics::headers;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info_span, warn};

use crate::ports::{IncomingMessage, MessageBus, OutgoingMessage, PartitionOffset, StartFrom};

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

/// Consumes until `shutdown` is cancelled, then finishes the batch in hand, commits and returns.
pub async fn run(
    bus: Arc<dyn MessageBus>,
    handler: Arc<dyn MessageHandler>,
    config: ConsumerConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
    let mut subscription = bus.subscribe(&config.group, &topics, config.start.clone()).await?;
    let mut poll_failures = 0u32;
    while !shutdown.is_cancelled() {
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
        if batch.is_empty() {
            continue;
        }
        let mut partitions: BTreeMap<(String, u32), Vec<IncomingMessage>> = BTreeMap::new();
        for message in batch {
            partitions.entry((message.topic.clone(), message.partition)).or_default().push(message);
        }
        let work = partitions.into_values().map(|messages| {
            let (bus, handler, config, shutdown) = (bus.clone(), handler.clone(), &config, &shutdown);
            async move { process_partition(&*bus, &*handler, config, shutdown, messages).await }
        });
        let done: Vec<PartitionOffset> = futures::future::join_all(work).await.into_iter().flatten().collect();
        if !done.is_empty() {
            // A failed commit only means these records may be redelivered: handlers are idempotent.
            if let Err(e) = subscription.commit(&done).await {
                warn!(error = %e, group = %config.group, "offset commit failed; records may be redelivered");
            }
        }
    }
    Ok(())
}

/// Processes one partition's records in order; returns the offset to commit, if any progress was made.
async fn process_partition(
    bus: &dyn MessageBus,
    handler: &dyn MessageHandler,
    config: &ConsumerConfig,
    shutdown: &CancellationToken,
    messages: Vec<IncomingMessage>,
) -> Option<PartitionOffset> {
    let mut committed = None;
    for message in messages {
        let span = info_span!(
            "consume",
            topic = %message.topic,
            partition = message.partition,
            offset = message.offset,
            message_type = message.header(headers::MESSAGE_TYPE).unwrap_or(""),
            correlation_id = message.header(headers::CORRELATION_ID).unwrap_or(""),
        );
        let finished = process_one(bus, handler, config, shutdown, &message).instrument(span).await;
        if !finished {
            break;
        }
        committed = Some(PartitionOffset {
            topic: message.topic.clone(),
            partition: message.partition,
            offset: message.offset + 1,
        });
    }
    committed
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
