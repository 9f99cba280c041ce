//! The at-least-once consume loop shared by every worker.
//!
//! Guarantee: a record's offset is committed only after its handler returned (its effects are
//! durable) or after it was written to the dead-letter topic. A crash redelivers at most the records
//! handed to the workers and not yet committed, so handlers must be idempotent. Each partition has its
//! own worker task: partitions are processed concurrently and never wait for each other, records of
//! one partition strictly in order.
//!
//! Failures are classified, because a dependency being down is not a poisoned message:
//! - [`HandleError::Poison`] (cannot decode, refused on this topic): dead-lettered at once;
//! - [`HandleError::Failed`] (the handler fails the same way every time): retried by
//!   [`ConsumerConfig::failed_retry`], then dead-lettered;
//! - [`HandleError::Unavailable`] (timeouts, refused connections, open circuit breakers) and
//!   [`HandleError::Unfinished`] (effects partly durable): retried by
//!   [`ConsumerConfig::unavailable_retry`] for as long as it lasts. The partition waits (its offset
//!   is not committed), other partitions and services go on, and the wait is logged once per
//!   `wait_log_interval`.
//!
//! A dead letter keeps the record's bytes, headers and source position and gains the reason; the
//! handler is told ([`MessageHandler::dead_lettered`]) so the command gets its final `failed` outcome.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ridehail_events::topics::headers;
use ridehail_ports::RetryPolicy;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use tokio::sync::mpsc;

use ridehail_ports::{IncomingMessage, MessageBus, OutgoingMessage, PartitionOffset, StartFrom, Subscription};

use crate::deferred::Deferred;
use crate::metrics::RecordEnd;

#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// The record can never be processed (bad bytes, unknown type, refused on this topic):
    /// dead-letter it at once.
    #[error("poison message: {0}")]
    Poison(String),
    /// The handler failed, and would likely fail the same way again (a bug, corrupt data):
    /// dead-lettered after the configured attempts.
    #[error("{0:#}")]
    Failed(anyhow::Error),
    /// A dependency is unavailable (down, slow, its circuit open): waited out, never dead-lettered.
    #[error("dependency unavailable: {0:#}")]
    Unavailable(anyhow::Error),
    /// Part of the record's effects are already durable (its events were appended): it is retried
    /// until it succeeds or the consumer shuts down, never dead-lettered, so nothing is left half done.
    #[error("unfinished: {0:#}")]
    Unfinished(anyhow::Error),
}

#[async_trait]
pub trait MessageHandler: Send + Sync {
    /// Handles one record of a run. What must be durable before the record is let go but can wait
    /// for the end of the run may go to `deferred`: the consume loop flushes it
    /// ([`MessageHandler::flush`]) before it commits any record of the run. An attempt that fails
    /// leaves `deferred` as it found it (the loop puts it back).
    async fn handle_deferred(&self, message: &IncomingMessage, deferred: &mut Deferred) -> Result<(), HandleError>;

    /// Makes what the run's records deferred durable. A handler that defers nothing keeps the
    /// default, which refuses to drop anything.
    async fn flush(&self, deferred: &mut Deferred) -> Result<(), HandleError> {
        if deferred.is_empty() {
            return Ok(());
        }
        Err(HandleError::Unfinished(anyhow::anyhow!("this handler deferred effects it cannot flush")))
    }

    /// Handles one record on its own: its deferred effects are flushed before it returns.
    async fn handle(&self, message: &IncomingMessage) -> Result<(), HandleError> {
        let mut deferred = Deferred::default();
        self.handle_deferred(message, &mut deferred).await?;
        self.flush(&mut deferred).await
    }

    /// The record was dead-lettered with `reason` (`poison`: it could never be processed): the
    /// handler records what clients should learn of it. A failure here is logged; the dead letter
    /// stands.
    async fn dead_lettered(&self, _message: &IncomingMessage, _reason: &str, _poison: bool) -> anyhow::Result<()> {
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub group: String,
    pub topics: Vec<String>,
    pub start: StartFrom,
    pub batch_size: usize,
    /// At most this many records of a partition are handled before what they deferred is flushed
    /// (the run; docs/throughput.md). A partition's run is what is queued for it, so under light
    /// load it is one record and nothing waits.
    pub max_run: usize,
    pub poll_wait: Duration,
    /// How a failing record is retried before it is dead-lettered (bounded).
    pub failed_retry: RetryPolicy,
    /// How a record waits for an unavailable dependency or finishes its effects (unbounded).
    pub unavailable_retry: RetryPolicy,
    /// A partition that keeps waiting logs it once per this interval.
    pub wait_log_interval: Duration,
    /// How often the lag of each assigned partition is measured (`ridehail_consumer_lag`).
    pub lag_interval: Duration,
    pub dead_letter_topic: String,
}

impl ConsumerConfig {
    pub fn new(group: impl Into<String>, topics: &[&str]) -> Self {
        Self {
            group: group.into(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            start: StartFrom::Committed,
            batch_size: 256,
            max_run: 32,
            poll_wait: Duration::from_millis(200),
            failed_retry: RetryPolicy::bounded(20, 2_000, 5),
            unavailable_retry: RetryPolicy::unbounded(50, 5_000),
            wait_log_interval: Duration::from_secs(10),
            lag_interval: Duration::from_secs(5),
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
    // A failing poll (the broker away) is waited out with the unavailable-dependency policy.
    let mut poll_waits = config.unavailable_retry.delays();
    let mut last_lag = Instant::now();
    'consume: while !shutdown.is_cancelled() {
        let batch = tokio::select! {
            batch = subscription.poll(config.batch_size, config.poll_wait) => batch,
            _ = shutdown.cancelled() => break,
        };
        let batch = match batch {
            Ok(batch) => {
                poll_waits = config.unavailable_retry.delays();
                batch
            }
            Err(e) => {
                let pause = poll_waits.next().unwrap_or(Duration::from_millis(config.unavailable_retry.max_delay_ms));
                warn!(error = %e, group = %config.group, retry_in_ms = pause.as_millis() as u64, "poll failed; retrying");
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
        if last_lag.elapsed() >= config.lag_interval {
            last_lag = Instant::now();
            report_lag(&mut *subscription, &progress, &committed, &config.group).await;
        }
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
        let system = bus.system();
        let mut run = Vec::with_capacity(config.max_run.max(1));
        // The records of the run handled so far: their offset, how each ended, when it started.
        let mut finished: Vec<(u64, RecordEnd, Instant, tracing::Span)> = Vec::with_capacity(run.capacity());
        while records.recv_many(&mut run, config.max_run.max(1)).await > 0 {
            let mut deferred = Deferred::default();
            let mut interrupted = false;
            for message in run.drain(..) {
                let span = process_span(system, &config.group, &message);
                let started = Instant::now();
                let ended = process_one(&*bus, &*handler, &config, &shutdown, &message, &mut deferred)
                    .instrument(span.clone())
                    .await;
                match ended {
                    Some(end) => finished.push((message.offset, end, started, span)),
                    None => {
                        // Interrupted by shutdown: this record and the rest stay uncommitted.
                        interrupted = true;
                        break;
                    }
                }
            }
            let Some(last) = finished.last().map(|f| f.0) else { return };
            // In the trace of the run's first record, linked to the others'.
            let flush_span = info_span!(parent: &finished[0].3, "flush", records = finished.len() as i64);
            for (.., span) in &finished[1..] {
                flush_span.follows_from(span);
            }
            if !flush(&*handler, &config, &shutdown, &mut deferred).instrument(flush_span).await {
                return; // Shutdown before the run's effects were durable: the whole run is redelivered.
            }
            for (_, end, started, _) in finished.drain(..) {
                crate::metrics::record_finished(&topic, &config.group, end, started.elapsed());
            }
            progress.lock().unwrap_or_else(|e| e.into_inner()).insert((topic.clone(), partition), last + 1);
            if interrupted {
                return;
            }
        }
    });
    PartitionWorker { queue, task }
}

/// A process span per record (OpenTelemetry messaging conventions): a child of the context the
/// record carries, linked to it.
fn process_span(system: &'static str, group: &str, message: &IncomingMessage) -> tracing::Span {
    let span = info_span!(
        "process",
        otel.name = %format!("process {}", message.topic),
        otel.kind = "consumer",
        messaging.system = system,
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = %message.topic,
        messaging.destination.partition.id = %message.partition,
        messaging.kafka.offset = message.offset as i64,
        messaging.consumer.group.name = %group,
        message_type = message.header(headers::MESSAGE_TYPE).unwrap_or(""),
        correlation_id = message.header(headers::CORRELATION_ID).unwrap_or(""),
    );
    crate::propagation::follow(&span, &message.headers);
    span
}

/// Flushes what a run deferred, waiting out failures (the run's records are handled: their effects
/// must become durable, never be dropped). False if shutdown came first.
async fn flush(
    handler: &dyn MessageHandler,
    config: &ConsumerConfig,
    shutdown: &CancellationToken,
    deferred: &mut Deferred,
) -> bool {
    let mut waits = config.unavailable_retry.delays();
    let mut logged: Option<Instant> = None;
    loop {
        let error = match handler.flush(deferred).await {
            Ok(()) => return true,
            Err(error) => error,
        };
        if shutdown.is_cancelled() {
            return false;
        }
        let wait = waits.next().unwrap_or(Duration::from_millis(config.unavailable_retry.max_delay_ms));
        if logged.is_none_or(|at| at.elapsed() >= config.wait_log_interval) {
            logged = Some(Instant::now());
            warn!(error = %error, retry_in_ms = wait.as_millis() as u64, "a run's effects are not durable yet; retrying");
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return false,
        }
    }
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

/// Sets the lag gauge of each assigned partition: its end less what the group finished (or, before
/// it finished anything here, what it had committed).
async fn report_lag(
    subscription: &mut dyn Subscription,
    progress: &Progress,
    committed: &HashMap<(String, u32), u64>,
    group: &str,
) {
    let ends = match subscription.end_offsets().await {
        Ok(ends) => ends,
        Err(e) => {
            debug!(error = %e, group, "cannot read the partitions' ends; lag not updated");
            return;
        }
    };
    let finished = progress.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let known = |key: &(String, u32)| finished.get(key).or(committed.get(key)).copied();
    // The group's stored offsets (a round trip to the broker) only for partitions this member has
    // not finished anything on yet.
    let mut stored = HashMap::new();
    if ends.iter().any(|e| known(&(e.topic.clone(), e.partition)).is_none())
        && let Ok(list) = subscription.committed().await
    {
        stored = list.into_iter().map(|p| ((p.topic, p.partition), p.offset)).collect();
    }
    for end in ends {
        let key = (end.topic.clone(), end.partition);
        let done = known(&key).or(stored.get(&key).copied()).unwrap_or(0);
        crate::metrics::lag(&end.topic, end.partition, group, end.offset.saturating_sub(done));
    }
}

/// How the record ended (handled or dead-lettered); `None` if shutdown interrupted it.
async fn process_one(
    bus: &dyn MessageBus,
    handler: &dyn MessageHandler,
    config: &ConsumerConfig,
    shutdown: &CancellationToken,
    message: &IncomingMessage,
    deferred: &mut Deferred,
) -> Option<RecordEnd> {
    let mut failed_waits = config.failed_retry.delays();
    let mut unavailable_waits = config.unavailable_retry.delays();
    // When the record first failed, and when that was last logged.
    let mut waiting: Option<(Instant, Option<Instant>)> = None;
    let mut mark = deferred.mark();
    let (reason, poison) = loop {
        let error = match handler.handle_deferred(message, deferred).await {
            Ok(()) => {
                if let Some((since, Some(_))) = waiting {
                    info!(waited_ms = since.elapsed().as_millis() as u64, "record processed after waiting");
                }
                return Some(RecordEnd::Processed);
            }
            Err(error) => {
                deferred.truncate(mark);
                match error {
                    HandleError::Poison(reason) => break (format!("poison: {reason}"), true),
                    error => error,
                }
            }
        };
        // The run's earlier records do not wait for this one: what they deferred is written now.
        if !deferred.is_empty() && handler.flush(deferred).await.is_ok() {
            debug!("flushed the run's effects before retrying a record");
            mark = deferred.mark();
        }
        let retried = if matches!(error, HandleError::Failed(_)) { "failed" } else { "unavailable" };
        crate::metrics::record_retried(&message.topic, &config.group, retried);
        let wait = match &error {
            HandleError::Failed(_) => match failed_waits.next() {
                Some(wait) => wait,
                None => {
                    let attempts = config.failed_retry.max_attempts.unwrap_or(1);
                    break (format!("failed after {attempts} attempts: {error}"), false);
                }
            },
            _ => unavailable_waits.next().unwrap_or(Duration::from_millis(config.unavailable_retry.max_delay_ms)),
        };
        let now = Instant::now();
        let (since, logged) = waiting.get_or_insert((now, None));
        if logged.is_none_or(|at| now.duration_since(at) >= config.wait_log_interval) {
            *logged = Some(now);
            warn!(
                error = %error,
                waited_ms = now.duration_since(*since).as_millis() as u64,
                retry_in_ms = wait.as_millis() as u64,
                "record not processed yet; retrying (the partition waits)"
            );
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return None,
        }
    };
    if !dead_letter(bus, config, shutdown, message, &reason).await {
        return None;
    }
    if let Err(e) = handler.dead_lettered(message, &reason, poison).await {
        warn!(error = format!("{e:#}"), "the outcome of a dead-lettered record could not be recorded");
    }
    Some(RecordEnd::DeadLettered { poison })
}

async fn dead_letter(
    bus: &dyn MessageBus,
    config: &ConsumerConfig,
    shutdown: &CancellationToken,
    message: &IncomingMessage,
    reason: &str,
) -> bool {
    error!(reason, "dead-lettering message");
    let mut dlq_headers = crate::propagation::without_context(&message.headers);
    dlq_headers.extend([
        (headers::DLQ_REASON.to_owned(), reason.to_owned()),
        (headers::DLQ_SOURCE_TOPIC.to_owned(), message.topic.clone()),
        (headers::DLQ_SOURCE_PARTITION.to_owned(), message.partition.to_string()),
        (headers::DLQ_SOURCE_OFFSET.to_owned(), message.offset.to_string()),
    ]);
    let record = OutgoingMessage { key: message.key.clone(), headers: dlq_headers, payload: message.payload.clone() };
    let mut waits = config.unavailable_retry.delays();
    loop {
        match bus.publish(&config.dead_letter_topic, vec![record.clone()]).await {
            Ok(()) => return true,
            Err(e) => {
                // Never drop the record: keep trying (the partition waits) until shutdown.
                warn!(error = %e, "dead-letter publish failed; retrying");
                let wait = waits.next().unwrap_or(Duration::from_secs(5));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.cancelled() => return false,
                }
            }
        }
    }
}
