//! The RabbitMQ adapter of Ridehail's message-bus port ([`MessageBus`]), on `lapin` (AMQP 0-9-1 over
//! rustls with ring). The design, and why streams rather than classic or quorum queues, is in
//! docs/rabbitmq.md; in short:
//!
//! - **Topology.** A topic is a durable direct exchange named after it and N partition *streams*
//!   (`{topic}.{p}`, `x-queue-type=stream`) bound to it with routing key `p`. A stream is an
//!   append-only log with offsets, so records keep their place (offset) and any reader can start from
//!   the first record, the next one, an offset or a time: every start position of the port, and
//!   what dead-letter listing and replay tools need. `ridehail topics apply` declares it all
//!   ([`apply_topics`]), and running it again changes nothing.
//! - **Partitions.** A producer picks a record's partition from its key on the client
//!   ([`partition_for_key`], FNV-1a, the same in every producer), so every record of an aggregate lands
//!   in one stream, in publish order.
//! - **Publishing.** One confirm-mode channel per process; a publish sends every record (persistent,
//!   `mandatory`) and returns once the broker confirmed each one: a nack, a return (no stream bound)
//!   or a confirm timeout is an error for the caller to retry, never a silent loss.
//! - **Consumer groups.** Streams have no consumer groups over AMQP 0-9-1, so a group is built from
//!   one *lease queue* per (group, topic, partition): a quorum queue with `x-single-active-consumer`
//!   and `x-max-length=1` holding one token message, the group's committed offset of that partition.
//!   Every member consumes every lease queue with prefetch 1; the broker delivers the token only to
//!   the queue's single active consumer, which so owns the partition and reads its stream from the
//!   token's offset. Committing publishes a new token and acknowledges the old one; when the owner
//!   dies its unacknowledged token returns to the queue and goes to the next member in line, which
//!   resumes from there, in order. A group thus has one active member per partition and standbys
//!   (not Kafka's sharing of partitions between live members).
//! - **At least once.** Stream deliveries are acknowledged (credit only: a stream keeps its records)
//!   as they are handed to the caller, so at most `prefetch` records per partition wait in memory;
//!   a record is committed only when the caller says its effects are durable.
//!
//! Names: every exchange and queue is prefixed with [`RabbitMqSettings::namespace`] (empty in
//! production), so parallel test runs share one broker. Consumers see the logical topic names.

mod settings;
mod subscription;
mod topology;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use futures::StreamExt as _;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use ridehail_ports::{BusError, MessageBus, OutgoingMessage, StartFrom, Subscription, partition_for_key};
use tracing::debug;

pub use ridehail_ports::{TopicReport, TopicState};
pub use settings::{RabbitMqSettings, redact};
pub use topology::apply_topics;

/// The header carrying a record's key (AMQP has no key of its own; the routing key is the partition).
pub(crate) const KEY_HEADER: &str = "x-ridehail-key";
/// When the record was published, in milliseconds (AMQP's `timestamp` property has seconds only).
pub(crate) const PUBLISHED_HEADER: &str = "x-ridehail-published-ms";
/// Set by the broker on every stream delivery: the record's offset in its stream.
pub(crate) const OFFSET_HEADER: &str = "x-stream-offset";
/// How long a topic's partition count may take to arrive.
const META_WAIT: Duration = Duration::from_secs(3);

/// A partition's stream.
pub(crate) fn stream_name(settings: &RabbitMqSettings, topic: &str, partition: u32) -> String {
    format!("{}.{partition}", settings.physical(topic))
}

/// Opens a connection named `name` (the broker's management views show it), TLS as the URL says.
pub(crate) async fn connect(settings: &RabbitMqSettings, name: &str) -> Result<Connection, BusError> {
    let mut uri: lapin::uri::AMQPUri =
        settings.url.parse().map_err(|e: String| BusError::Unavailable(anyhow::anyhow!("rabbitmq.url: {e}")))?;
    uri.query.heartbeat = Some(settings.heartbeat_secs);
    uri.query.connection_timeout.get_or_insert(5_000);
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    let mut tls = lapin::tcp::OwnedTLSConfig::default();
    if let Some(file) = &settings.tls_ca_file {
        let pem = std::fs::read_to_string(file)
            .with_context(|| format!("reading rabbitmq.tls_ca_file {file}"))
            .map_err(BusError::Unavailable)?;
        tls.cert_chain = Some(pem);
    }
    let runtime = lapin::runtime::default_runtime().map_err(unavailable("the AMQP runtime"))?;
    Connection::connect_uri_with_config(uri, properties, tls, runtime)
        .await
        .map_err(unavailable("connecting to RabbitMQ"))
}

pub(crate) fn unavailable(context: &'static str) -> impl FnOnce(lapin::Error) -> BusError {
    move |e| BusError::Unavailable(anyhow::Error::new(e).context(context))
}

/// Whether the broker refused an operation because what it names does not exist.
pub(crate) fn not_found(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(e) if *e.kind() == AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND))
}

pub(crate) fn long_string(value: impl Into<Vec<u8>>) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.into()))
}

/// The stream holding a topic's partition count (one record, written by `topics apply`): how
/// producers and consumers learn it without probing for streams that do not exist.
pub(crate) fn meta_name(settings: &RabbitMqSettings, topic: &str) -> String {
    format!("{}.partitions", settings.physical(topic))
}

/// How many partition streams `topic` has (0: the topic does not exist), read from its meta stream.
pub(crate) async fn count_partitions(
    connection: &Connection,
    settings: &RabbitMqSettings,
    topic: &str,
) -> Result<u32, BusError> {
    let channel = connection.create_channel().await.map_err(unavailable("opening a channel"))?;
    let meta = meta_name(settings, topic);
    let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
    match channel.queue_declare(meta.as_str().into(), passive, FieldTable::default()).await {
        Ok(_) => {}
        Err(e) if not_found(&e) => return Ok(0),
        Err(e) => return Err(unavailable("looking up a topic")(e)),
    }
    channel.basic_qos(1, BasicQosOptions::default()).await.map_err(unavailable("setting a prefetch"))?;
    let mut arguments = FieldTable::default();
    arguments.insert("x-stream-offset".into(), long_string("first"));
    let mut consumer = channel
        .basic_consume(meta.as_str().into(), "".into(), BasicConsumeOptions::default(), arguments)
        .await
        .map_err(unavailable("reading a topic's partition count"))?;
    let first = tokio::time::timeout(META_WAIT, consumer.next()).await;
    let _ = channel.close(200, "read".into()).await;
    match first {
        Ok(Some(Ok(delivery))) => std::str::from_utf8(&delivery.data)
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .ok_or_else(|| BusError::Unavailable(anyhow::anyhow!("{meta} holds no partition count"))),
        Ok(Some(Err(e))) => Err(unavailable("reading a topic's partition count")(e)),
        // Declared but never finished (`topics apply` stopped half-way): not a topic yet.
        Ok(None) | Err(_) => Ok(0),
    }
}

/// Puts one persistent message (`body`) in `queue` through the default exchange and waits for the
/// broker to confirm it stored it (the channel is in confirm mode); `what` names it in errors.
pub(crate) async fn put_in_queue(
    channel: &Channel,
    queue: &str,
    body: &[u8],
    what: &'static str,
) -> Result<(), BusError> {
    let confirmation = channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() },
            body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .map_err(unavailable(what))?
        .await
        .map_err(unavailable(what))?;
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        _ => Err(BusError::Unavailable(anyhow::anyhow!("the broker did not store {what} in {queue}"))),
    }
}

/// See the crate documentation.
#[derive(Clone)]
pub struct RabbitMqBus {
    inner: Arc<Inner>,
}

struct Inner {
    settings: RabbitMqSettings,
    name: String,
    /// The publishing connection and its confirm-mode channel, opened on first use and again after
    /// either closed (a broker restart, a channel error).
    publisher: tokio::sync::Mutex<Option<(Arc<Connection>, Channel)>>,
    /// Partition counts of topics seen to exist (topics are never deleted under a running service).
    partitions: Mutex<HashMap<String, u32>>,
}

impl std::fmt::Debug for RabbitMqBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitMqBus")
            .field("url", &redact(&self.inner.settings.url))
            .field("name", &self.inner.name)
            .field("namespace", &self.inner.settings.namespace)
            .finish()
    }
}

impl RabbitMqBus {
    /// A bus for this process; `role` names its connections (e.g. `ride-worker`). Connecting is lazy:
    /// use [`MessageBus::ping`] to check the broker answers.
    pub fn connect(settings: &RabbitMqSettings, role: &str) -> anyhow::Result<Self> {
        settings.validate()?;
        Ok(Self {
            inner: Arc::new(Inner {
                settings: settings.clone(),
                name: format!("ridehail-{role}"),
                publisher: tokio::sync::Mutex::new(None),
                partitions: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn settings(&self) -> &RabbitMqSettings {
        &self.inner.settings
    }

    /// The publishing connection and channel, (re)opened if needed.
    async fn publisher(&self) -> Result<(Arc<Connection>, Channel), BusError> {
        let mut publisher = self.inner.publisher.lock().await;
        if let Some((connection, channel)) = &*publisher
            && connection.status().connected()
            && channel.status().connected()
        {
            return Ok((connection.clone(), channel.clone()));
        }
        let connection = match publisher.take() {
            Some((connection, _)) if connection.status().connected() => connection,
            _ => Arc::new(connect(&self.inner.settings, &self.inner.name).await?),
        };
        let channel = connection.create_channel().await.map_err(unavailable("opening the publishing channel"))?;
        channel.confirm_select(ConfirmSelectOptions::default()).await.map_err(unavailable("enabling confirms"))?;
        *publisher = Some((connection.clone(), channel.clone()));
        Ok((connection, channel))
    }

    /// Partition count of a logical topic, from the cache or the broker.
    async fn topic_partitions(&self, topic: &str) -> Result<u32, BusError> {
        if let Some(n) = self.inner.partitions.lock().unwrap_or_else(|e| e.into_inner()).get(topic) {
            return Ok(*n);
        }
        let (connection, _) = self.publisher().await?;
        match count_partitions(&connection, &self.inner.settings, topic).await? {
            0 => Err(BusError::UnknownTopic(topic.to_owned())),
            n => {
                self.inner.partitions.lock().unwrap_or_else(|e| e.into_inner()).insert(topic.to_owned(), n);
                Ok(n)
            }
        }
    }

    fn forget(&self, topic: &str) {
        self.inner.partitions.lock().unwrap_or_else(|e| e.into_inner()).remove(topic);
    }
}

fn properties(message: &OutgoingMessage, now: chrono::DateTime<chrono::Utc>) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (name, value) in &message.headers {
        headers.insert(name.as_str().into(), long_string(value.as_bytes()));
    }
    headers.insert(KEY_HEADER.into(), long_string(message.key.as_bytes()));
    headers.insert(PUBLISHED_HEADER.into(), AMQPValue::LongLongInt(now.timestamp_millis()));
    BasicProperties::default().with_headers(headers).with_delivery_mode(2).with_timestamp(now.timestamp().max(0) as u64)
}

#[async_trait]
impl MessageBus for RabbitMqBus {
    async fn publish(&self, topic: &str, messages: Vec<OutgoingMessage>) -> Result<(), BusError> {
        let partitions = self.topic_partitions(topic).await?;
        let (_, channel) = self.publisher().await?;
        let exchange = self.inner.settings.physical(topic);
        let now = chrono::Utc::now();
        // Send in order on one channel (the broker keeps a channel's order per stream), then await
        // every confirm.
        let mut confirms = Vec::with_capacity(messages.len());
        for message in &messages {
            let partition = partition_for_key(&message.key, partitions);
            let confirm = channel
                .basic_publish(
                    exchange.as_str().into(),
                    partition.to_string().into(),
                    BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() },
                    &message.payload,
                    properties(message, now),
                )
                .await
                .map_err(unavailable("publishing a record"))?;
            confirms.push(confirm);
        }
        let timeout = Duration::from_millis(self.inner.settings.confirm_timeout_ms);
        for confirm in confirms {
            let confirmation = tokio::time::timeout(timeout, confirm)
                .await
                .map_err(|_| BusError::Unavailable(anyhow::anyhow!("record not confirmed within {timeout:?}")))?
                .map_err(unavailable("record not confirmed"))?;
            match confirmation {
                Confirmation::Ack(None) => {}
                Confirmation::Ack(Some(returned)) => {
                    // No stream bound for the partition: the topology changed under us.
                    self.forget(topic);
                    return Err(BusError::Unavailable(anyhow::anyhow!(
                        "record returned by the broker ({} {}): no partition stream bound",
                        returned.reply_code,
                        returned.reply_text
                    )));
                }
                Confirmation::Nack(_) => {
                    return Err(BusError::Unavailable(anyhow::anyhow!("the broker refused a record (nack)")));
                }
                Confirmation::NotRequested => {
                    return Err(BusError::Unavailable(anyhow::anyhow!("publisher confirms are off on the channel")));
                }
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
        let subscription = subscription::RabbitSubscription::open(
            self.inner.settings.clone(),
            format!("{}-consumer", self.inner.name),
            group,
            partitions,
            start,
        )
        .await?;
        Ok(Box::new(subscription))
    }

    async fn partitions(&self, topic: &str) -> Result<u32, BusError> {
        self.topic_partitions(topic).await
    }

    async fn ping(&self) -> Result<(), BusError> {
        let (connection, _) = self.publisher().await?;
        // A round trip: the broker answers a passive declare of an exchange every vhost has.
        let channel = connection.create_channel().await.map_err(unavailable("opening a channel"))?;
        channel
            .exchange_declare(
                "amq.direct".into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions { passive: true, ..ExchangeDeclareOptions::default() },
                FieldTable::default(),
            )
            .await
            .map_err(unavailable("pinging RabbitMQ"))?;
        let _ = channel.close(200, "ping".into()).await;
        Ok(())
    }

    fn system(&self) -> &'static str {
        "rabbitmq"
    }
}
