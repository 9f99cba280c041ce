//! The consume loop on the embedded bus: order per partition, poison messages to the dead-letter
//! topic without stalling, retries with backoff, commits only after the work.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ridehail_events::topics::headers;
use ridehail_runtime::consumer::{self, ConsumerConfig, HandleError, MessageHandler};
use ridehail_runtime::embedded::EmbeddedBus;
use ridehail_runtime::ports::{IncomingMessage, MessageBus, OutgoingMessage, StartFrom};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

const TOPIC: &str = "work";
const DLQ: &str = "dead";

/// Handles "ok:*" records, refuses "poison" as undecodable, fails "flaky:N" N times then succeeds,
/// and always fails "broken".
#[derive(Default)]
struct Recorder {
    handled: Mutex<Vec<String>>,
    failures: Mutex<HashMap<String, u32>>,
}

#[async_trait]
impl MessageHandler for Recorder {
    async fn handle(&self, message: &IncomingMessage) -> Result<(), HandleError> {
        let text = String::from_utf8(message.payload.clone()).map_err(|e| HandleError::Poison(e.to_string()))?;
        if text == "poison" {
            return Err(HandleError::Poison("not a command".into()));
        }
        if let Some(times) = text.strip_prefix("stuck:") {
            let mut failures = self.failures.lock().unwrap();
            let seen = failures.entry(text.clone()).or_default();
            if *seen < times.parse::<u32>().unwrap() {
                *seen += 1;
                return Err(HandleError::Unfinished(anyhow::anyhow!("events appended, view not written")));
            }
        }
        if text == "broken" {
            return Err(HandleError::Transient(anyhow::anyhow!("dependency down")));
        }
        if let Some(times) = text.strip_prefix("flaky:") {
            let mut failures = self.failures.lock().unwrap();
            let seen = failures.entry(text.clone()).or_default();
            if *seen < times.parse::<u32>().unwrap() {
                *seen += 1;
                return Err(HandleError::Transient(anyhow::anyhow!("try again")));
            }
        }
        self.handled.lock().unwrap().push(text);
        Ok(())
    }
}

fn record(key: &str, payload: &[u8]) -> OutgoingMessage {
    OutgoingMessage { key: key.into(), headers: vec![("origin".into(), "test".into())], payload: payload.to_vec() }
}

fn config() -> ConsumerConfig {
    let mut config = ConsumerConfig::new("workers", &[TOPIC]);
    config.dead_letter_topic = DLQ.into();
    config.max_attempts = 3;
    config.retry_min_delay = Duration::from_millis(5);
    config.retry_max_delay = Duration::from_millis(20);
    config.poll_wait = Duration::from_millis(20);
    config
}

async fn wait_for(mut done: impl FnMut() -> bool) {
    for _ in 0..500 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached in time");
}

async fn dead_letters(bus: &EmbeddedBus) -> Vec<IncomingMessage> {
    let mut sub = bus.subscribe(&uuid::Uuid::new_v4().to_string(), &[DLQ], StartFrom::Earliest).await.unwrap();
    sub.poll(100, Duration::from_millis(50)).await.unwrap()
}

#[tokio::test]
async fn a_poison_message_is_dead_lettered_intact_and_the_partition_moves_on_in_order() {
    let dir = TempDir::new().unwrap();
    let bus = Arc::new(EmbeddedBus::open(&dir.path().join("bus"), &[(TOPIC, 2), (DLQ, 1)]).unwrap());
    let handler = Arc::new(Recorder::default());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(consumer::run(bus.clone(), handler.clone(), config(), shutdown.clone()));
    let poison = [0xff, 0xfe, b'x'];
    bus.publish(
        TOPIC,
        vec![
            record("k", b"ok:1"),
            record("k", &poison),
            record("k", b"ok:2"),
            record("k", b"poison"),
            record("k", b"ok:3"),
        ],
    )
    .await
    .unwrap();
    wait_for(|| handler.handled.lock().unwrap().len() == 3).await;
    assert_eq!(*handler.handled.lock().unwrap(), ["ok:1", "ok:2", "ok:3"]);
    let dead = dead_letters(&bus).await;
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0].payload, poison, "original bytes kept");
    assert_eq!(dead[0].header("origin"), Some("test"), "original headers kept");
    assert_eq!(dead[0].header(headers::DLQ_SOURCE_TOPIC), Some(TOPIC));
    assert_eq!(dead[0].header(headers::DLQ_SOURCE_OFFSET), Some("1"));
    assert!(dead[0].header(headers::DLQ_REASON).unwrap().starts_with("poison"));
    assert_eq!(dead[1].payload, b"poison");
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn transient_failures_are_retried_and_persistent_ones_dead_lettered_after_the_attempts() {
    let dir = TempDir::new().unwrap();
    let bus = Arc::new(EmbeddedBus::open(&dir.path().join("bus"), &[(TOPIC, 1), (DLQ, 1)]).unwrap());
    let handler = Arc::new(Recorder::default());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(consumer::run(bus.clone(), handler.clone(), config(), shutdown.clone()));
    bus.publish(TOPIC, vec![record("k", b"flaky:2"), record("k", b"broken"), record("k", b"ok:after")]).await.unwrap();
    wait_for(|| handler.handled.lock().unwrap().len() == 2).await;
    assert_eq!(*handler.handled.lock().unwrap(), ["flaky:2", "ok:after"]);
    let dead = dead_letters(&bus).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].payload, b"broken");
    assert!(dead[0].header(headers::DLQ_REASON).unwrap().contains("after 3 attempts"), "{:?}", dead[0].headers);
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn an_unfinished_record_is_retried_past_the_attempt_limit_and_never_dead_lettered() {
    let dir = TempDir::new().unwrap();
    let bus = Arc::new(EmbeddedBus::open(&dir.path().join("bus"), &[(TOPIC, 1), (DLQ, 1)]).unwrap());
    let handler = Arc::new(Recorder::default());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(consumer::run(bus.clone(), handler.clone(), config(), shutdown.clone()));
    // Six failures, twice the configured attempts.
    bus.publish(TOPIC, vec![record("k", b"stuck:6"), record("k", b"ok:next")]).await.unwrap();
    wait_for(|| handler.handled.lock().unwrap().len() == 2).await;
    assert_eq!(*handler.handled.lock().unwrap(), ["stuck:6", "ok:next"]);
    assert!(dead_letters(&bus).await.is_empty());
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn offsets_are_committed_after_the_work_so_a_restart_resumes_after_it() {
    let dir = TempDir::new().unwrap();
    let bus = Arc::new(EmbeddedBus::open(&dir.path().join("bus"), &[(TOPIC, 2), (DLQ, 1)]).unwrap());
    let first = Arc::new(Recorder::default());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(consumer::run(bus.clone(), first.clone(), config(), shutdown.clone()));
    bus.publish(TOPIC, vec![record("a", b"ok:a1"), record("b", b"ok:b1")]).await.unwrap();
    wait_for(|| first.handled.lock().unwrap().len() == 2).await;
    shutdown.cancel();
    task.await.unwrap().unwrap();

    bus.publish(TOPIC, vec![record("a", b"ok:a2")]).await.unwrap();
    let second = Arc::new(Recorder::default());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(consumer::run(bus.clone(), second.clone(), config(), shutdown.clone()));
    wait_for(|| !second.handled.lock().unwrap().is_empty()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(*second.handled.lock().unwrap(), ["ok:a2"], "nothing already handled is handled again");
    shutdown.cancel();
    task.await.unwrap().unwrap();
}
