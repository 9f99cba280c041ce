//! The Kafka adapter of Ridehail's message-bus port ([`MessageBus`]), on `rdkafka` (bundled librdkafka).
//!
//! Producer: one idempotent producer per process (`enable.idempotence=true`, `acks=all`), records
//! keyed by aggregate id with the Java-compatible `murmur2_random` partitioner, so every record of an
//! aggregate lands in one partition in publish order, and any Kafka client computes the same
//! partition. A publish returns only once every record is acknowledged; a failed delivery is an error
//! for the caller to retry, never dropped.
//!
//! Consumer: one librdkafka consumer per subscription, with `enable.auto.offset.store=false`:
//! [`Subscription::commit`] *stores* the offsets of finished records, and librdkafka commits stored
//! offsets every `auto_commit_interval_ms`, when partitions are revoked (cooperative-sticky
//! rebalancing: the revoke callback commits synchronously what is done before another member takes
//! over) and when the subscription is dropped. A record is thus never committed before its effects
//! are durable; a crash re-delivers at most what was finished but not yet committed (at-least-once;
//! the workers' handlers are idempotent). Rebalance callbacks run inside `poll`; the consume loop's
//! partition workers may still hold records of a revoked partition then, so the revoke commit covers
//! what they finished and the new owner may process the rest again (idempotent handlers keep the
//! effects single; see docs/architecture.md).
//!
//! Start positions: [`StartFrom::Committed`] joins the consumer group (the workers). The others
//! (earliest, latest, offsets, timestamp: replay and tools) assign every partition explicitly at the
//! requested positions, still committing under the group id.
//!
//! Names: every topic and group is prefixed with [`KafkaSettings::namespace`] (empty in production),
//! so parallel test runs share one broker. Consumers see the logical (unprefixed) topic names.

mod admin;
mod settings;
mod subscription;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use ridehail_ports::{BusError, MessageBus, OutgoingMessage, RetryPolicy, StartFrom, Subscription};
use tracing::debug;

pub use admin::apply_topics;
pub use ridehail_ports::{TopicReport, TopicState};
pub use settings::KafkaSettings;

/// How long metadata requests may take before the bus reports itself unavailable.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

/// See the crate documentation.
#[derive(Clone)]
pub struct KafkaBus {
    inner: Arc<Inner>,
}

struct Inner {
    settings: KafkaSettings,
    client_id: String,
    producer: FutureProducer,
    /// Partition counts of topics seen to exist (topics are never deleted under a running service).
    partitions: Mutex<HashMap<String, u32>>,
}

impl std::fmt::Debug for KafkaBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBus")
            .field("brokers", &self.inner.settings.brokers)
            .field("client_id", &self.inner.client_id)
            .field("namespace", &self.inner.settings.namespace)
            .finish()
    }
}

/// A client's librdkafka configuration: `defaults` first, then what the settings ask for (TLS/SASL,
/// then the pass-through `properties`, which so override a default), then `fixed`: what correctness
/// rests on and no setting may change.
pub(crate) fn client_config(
    settings: &KafkaSettings,
    client_id: &str,
    defaults: &[(&str, String)],
    fixed: &[(&str, &str)],
) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &settings.brokers).set("client.id", client_id);
    for (key, value) in defaults {
        config.set(*key, value);
    }
    for (key, value) in settings.security_properties() {
        config.set(key, value);
    }
    for (key, value) in &settings.properties {
        config.set(key, value);
    }
    for (key, value) in fixed {
        config.set(*key, *value);
    }
    config
}

impl KafkaBus {
    /// Creates the producer. `role` names this process in the client id (e.g. `ride-worker`).
    /// Connecting is lazy: use [`MessageBus::ping`] to check the brokers answer.
    pub fn connect(settings: &KafkaSettings, role: &str) -> anyhow::Result<Self> {
        settings.validate()?;
        let client_id = format!("{}-{role}", settings.client_id);
        let defaults = [
            // Idempotence keeps a retried batch from being written twice and the order within a
            // partition; `properties` may turn it off for a broker that cannot bump a producer's epoch.
            ("enable.idempotence", "true".to_owned()),
            ("acks", "all".to_owned()),
            ("partitioner", "murmur2_random".to_owned()),
            ("linger.ms", settings.linger_ms.to_string()),
            ("message.timeout.ms", settings.delivery_timeout_ms.to_string()),
            ("compression.type", "lz4".to_owned()),
        ];
        // Topics are created by `ridehail topics apply`, never by a typo in a publish.
        let config = client_config(settings, &client_id, &defaults, &[("allow.auto.create.topics", "false")]);
        let producer: FutureProducer = config.create().context("creating the Kafka producer")?;
        Ok(Self {
            inner: Arc::new(Inner {
                settings: settings.clone(),
                client_id,
                producer,
                partitions: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn settings(&self) -> &KafkaSettings {
        &self.inner.settings
    }

    /// Partition count of a logical topic, from the cache or the brokers' metadata.
    async fn topic_partitions(&self, topic: &str) -> Result<u32, BusError> {
        if let Some(n) = self.inner.partitions.lock().unwrap_or_else(|e| e.into_inner()).get(topic) {
            return Ok(*n);
        }
        let physical = self.inner.settings.physical(topic);
        let this = self.clone();
        let count = tokio::task::spawn_blocking(move || {
            let metadata = this.inner.producer.client().fetch_metadata(Some(&physical), METADATA_TIMEOUT)?;
            Ok::<_, KafkaError>(admin::partition_count(&metadata, &physical))
        })
        .await
        .map_err(|e| BusError::Unavailable(e.into()))?
        .map_err(|e| BusError::Unavailable(anyhow::Error::new(e).context("fetching topic metadata")))?;
        match count {
            Some(n) => {
                self.inner.partitions.lock().unwrap_or_else(|e| e.into_inner()).insert(topic.to_owned(), n);
                Ok(n)
            }
            None => Err(BusError::UnknownTopic(topic.to_owned())),
        }
    }
}

fn to_headers(headers: &[(String, String)]) -> OwnedHeaders {
    headers.iter().fold(OwnedHeaders::new_with_capacity(headers.len()), |acc, (key, value)| {
        acc.insert(Header { key, value: Some(value.as_bytes()) })
    })
}

/// How a full local producer queue is waited out: briefly at first (it drains in milliseconds while
/// the broker is up), longer while it stays full.
const QUEUE_FULL_RETRY: RetryPolicy = RetryPolicy::unbounded(1, 50);
#[async_trait]
impl MessageBus for KafkaBus {
    async fn publish(&self, topic: &str, messages: Vec<OutgoingMessage>) -> Result<(), BusError> {
        self.topic_partitions(topic).await?;
        let physical = self.inner.settings.physical(topic);
        let mut deliveries = Vec::with_capacity(messages.len());
        // Enqueue in order (a full local queue waits, then retries the same record), then await every
        // acknowledgement: the idempotent producer keeps each partition's records in this order.
        for message in &messages {
            let mut record = FutureRecord::to(&physical)
                .key(&message.key)
                .payload(&message.payload)
                .headers(to_headers(&message.headers));
            let mut waits = QUEUE_FULL_RETRY.delays();
            loop {
                match self.inner.producer.send_result(record) {
                    Ok(delivery) => {
                        deliveries.push(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        // Unbounded: the caller's deadline (the bus guard) is what ends the wait.
                        tokio::time::sleep(
                            waits.next().unwrap_or(Duration::from_millis(QUEUE_FULL_RETRY.max_delay_ms)),
                        )
                        .await;
                    }
                    Err((e, _)) => {
                        return Err(BusError::Unavailable(anyhow::Error::new(e).context("enqueueing a record")));
                    }
                }
            }
        }
        for delivery in deliveries {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => {
                    if matches!(e, KafkaError::MessageProduction(RDKafkaErrorCode::UnknownTopicOrPartition)) {
                        self.inner.partitions.lock().unwrap_or_else(|e| e.into_inner()).remove(topic);
                    }
                    return Err(BusError::Unavailable(anyhow::Error::new(e).context("record not acknowledged")));
                }
                Err(_) => return Err(BusError::Unavailable(anyhow::anyhow!("producer dropped a delivery report"))),
            }
        }
        debug!(topic, records = messages.len(), "published");
        Ok(())
    }

    async fn subscribe(
        &self,
        group: &str,
        topics: &[&str],
        start: StartFrom,
    ) -> Result<Box<dyn Subscription>, BusError> {
        let mut partitions = Vec::with_capacity(topics.len());
        for topic in topics {
            partitions.push(((*topic).to_owned(), self.topic_partitions(topic).await?));
        }
        let subscription = subscription::KafkaSubscription::open(
            &self.inner.settings,
            &self.inner.client_id,
            group,
            &partitions,
            start,
        )
        .await?;
        Ok(Box::new(subscription))
    }

    async fn partitions(&self, topic: &str) -> Result<u32, BusError> {
        self.topic_partitions(topic).await
    }

    async fn ping(&self) -> Result<(), BusError> {
        let this = self.clone();
        let checked = tokio::task::spawn_blocking(move || {
            let metadata = this.inner.producer.client().fetch_metadata(None, Duration::from_secs(2))?;
            anyhow::ensure!(!metadata.brokers().is_empty(), "no Kafka broker in the cluster metadata");
            Ok(())
        })
        .await
        .map_err(anyhow::Error::from)?;
        Ok(checked?)
    }

    fn system(&self) -> &'static str {
        "kafka"
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Deliver whatever is still queued before the process goes (graceful shutdown loses nothing).
        let _ = self.producer.flush(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_override_a_default_but_never_what_is_fixed() {
        let mut settings = KafkaSettings::default();
        settings.properties.insert("enable.idempotence".into(), "false".into());
        settings.properties.insert("enable.auto.offset.store".into(), "true".into());
        let config = client_config(
            &settings,
            "test",
            &[("enable.idempotence", "true".into()), ("linger.ms", "5".into())],
            &[("enable.auto.offset.store", "false")],
        );
        assert_eq!(config.get("enable.idempotence"), Some("false"), "a property overrides a default");
        assert_eq!(config.get("linger.ms"), Some("5"), "a default stays when nothing overrides it");
        assert_eq!(config.get("enable.auto.offset.store"), Some("false"), "a fixed setting wins");
        assert_eq!(config.get("client.id"), Some("test"));
    }
}
