//! One consumer-group member (leases, see the crate documentation) or one explicitly positioned reader.
//!
//! Everything the broker sends (lease tokens, stream records, a channel's end) arrives on one queue of
//! [`Event`]s from a task per AMQP consumer; `poll` handles them in order. A lost connection or channel
//! is rebuilt on the next `poll`: partitions are then read again from the committed tokens (records
//! handed out but not committed may come again: at-least-once).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Acker, Channel, Connection};
use ridehail_ports::{BusError, IncomingMessage, PartitionOffset, StartFrom, Subscription};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::{KEY_HEADER, OFFSET_HEADER, PUBLISHED_HEADER, RabbitMqSettings, long_string, stream_name, unavailable};

/// A logical topic and one of its partitions.
type Partition = (String, u32);

/// How long [`Subscription::end_offsets`] waits for the records of a partition's last chunk: until
/// none came for `END_QUIET` (`END_EMPTY` for the first), and never longer than `END_LIMIT` in all —
/// the consume loop awaits it, and under steady traffic the chunk never goes quiet (the end is then
/// the furthest offset seen, a lag estimate).
const END_QUIET: Duration = Duration::from_millis(40);
const END_EMPTY: Duration = Duration::from_millis(250);
const END_LIMIT: Duration = Duration::from_millis(300);

enum Event {
    /// A lease queue delivered its token: this member owns the partition from `offset` on.
    Token {
        partition: Partition,
        offset: u64,
        acker: Acker,
    },
    Record {
        partition: Partition,
        generation: u64,
        message: IncomingMessage,
        acker: Acker,
    },
    /// A consumer's channel or connection ended.
    Closed {
        what: String,
    },
}

/// Where a partition stream is read from.
#[derive(Debug, Clone, Copy)]
enum Start {
    First,
    Next,
    Offset(u64),
    Time(DateTime<Utc>),
}

impl Start {
    fn argument(self) -> AMQPValue {
        match self {
            Self::First => long_string("first"),
            Self::Next => long_string("next"),
            Self::Offset(offset) => AMQPValue::LongLongInt(offset as i64),
            // Seconds: the broker starts at the chunk of that second; earlier records are skipped here.
            Self::Time(at) => AMQPValue::Timestamp(at.timestamp().max(0) as u64),
        }
    }
}

/// A partition this member reads now.
struct Reading {
    /// Kept for as long as the partition is read (its consumer lives on it).
    _channel: Channel,
    generation: u64,
    /// Records before this offset are skipped (the broker starts at a chunk's first record).
    from_offset: u64,
    from_time: Option<DateTime<Utc>>,
    /// The last record handed out (or skipped), acknowledged after the poll that handed it out.
    last: Option<Acker>,
}

/// A lease queue this member consumes (group members only).
struct Lease {
    channel: Channel,
    queue: String,
    /// The token held (unacknowledged) and the offset it carries.
    token: Option<(Acker, u64)>,
}

struct Live {
    connection: Connection,
    sender: mpsc::UnboundedSender<Event>,
    events: mpsc::UnboundedReceiver<Event>,
    reading: HashMap<Partition, Reading>,
    leases: HashMap<Partition, Lease>,
}

pub(crate) struct RabbitSubscription {
    settings: RabbitMqSettings,
    name: String,
    group: String,
    partitions: Vec<(String, u32)>,
    start: StartFrom,
    live: Option<Live>,
    /// Per partition: the offset of the next record to hand out, and the committed one.
    next: HashMap<Partition, u64>,
    committed: HashMap<Partition, u64>,
    generation: u64,
}

impl std::fmt::Debug for RabbitSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitSubscription").field("group", &self.group).finish_non_exhaustive()
    }
}

fn lease_queue(settings: &RabbitMqSettings, group: &str, (topic, partition): &Partition) -> String {
    settings.physical(&format!("ridehail.lease.{group}.{topic}.{partition}"))
}

fn lease_arguments() -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), long_string("quorum"));
    arguments.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    // One ready token: a newer commit pushes out an older token nobody holds.
    arguments.insert("x-max-length".into(), AMQPValue::LongLongInt(1));
    arguments.insert("x-overflow".into(), long_string("drop-head"));
    arguments
}

fn integer(value: &AMQPValue) -> Option<i64> {
    match value {
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::Timestamp(v) => i64::try_from(*v).ok(),
        _ => None,
    }
}

fn text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        other => integer(other).map(|n| n.to_string()),
    }
}

/// The port's view of a stream delivery.
fn incoming(topic: &str, partition: u32, delivery: &lapin::message::Delivery) -> Option<IncomingMessage> {
    let table = delivery.properties.headers().as_ref()?.inner();
    let offset = table.get(OFFSET_HEADER).and_then(integer)? as u64;
    let key = table.get(KEY_HEADER).and_then(text).unwrap_or_default();
    let timestamp = table
        .get(PUBLISHED_HEADER)
        .and_then(integer)
        .and_then(DateTime::<Utc>::from_timestamp_millis)
        .or_else(|| {
            delivery.properties.timestamp().and_then(|s| DateTime::<Utc>::from_timestamp(i64::try_from(s).ok()?, 0))
        })
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
    let headers = table
        .iter()
        .filter(|(name, _)| ![OFFSET_HEADER, KEY_HEADER, PUBLISHED_HEADER].contains(&name.as_str()))
        .filter_map(|(name, value)| Some((name.as_str().to_owned(), text(value)?)))
        .collect();
    Some(IncomingMessage {
        topic: topic.to_owned(),
        partition,
        offset,
        key,
        headers,
        payload: delivery.data.clone(),
        timestamp,
    })
}

/// The offset a token message carries.
fn token_offset(data: &[u8]) -> Option<u64> {
    std::str::from_utf8(data).ok()?.trim().parse().ok()
}

impl RabbitSubscription {
    pub(crate) async fn open(
        settings: RabbitMqSettings,
        name: String,
        group: &str,
        partitions: Vec<(String, u32)>,
        start: StartFrom,
    ) -> Result<Self, BusError> {
        let mut subscription = Self {
            settings,
            name,
            group: group.to_owned(),
            partitions,
            start,
            live: None,
            next: HashMap::new(),
            committed: HashMap::new(),
            generation: 0,
        };
        subscription.revive().await?;
        Ok(subscription)
    }

    fn every_partition(&self) -> Vec<Partition> {
        self.partitions.iter().flat_map(|(topic, n)| (0..*n).map(move |p| (topic.clone(), p))).collect()
    }

    fn is_member(&self) -> bool {
        self.start == StartFrom::Committed
    }

    /// Connects and starts consuming: lease queues for a group member, the partition streams at the
    /// requested positions for a reader.
    async fn revive(&mut self) -> Result<(), BusError> {
        let connection = crate::connect(&self.settings, &self.name).await?;
        let (sender, events) = mpsc::unbounded_channel();
        let mut live = Live { connection, sender, events, reading: HashMap::new(), leases: HashMap::new() };
        if self.is_member() {
            for partition in self.every_partition() {
                let lease = self.take_lease(&live, &partition).await?;
                live.leases.insert(partition, lease);
            }
        } else {
            let revived = self.live.is_some() || !self.next.is_empty();
            for partition in self.every_partition() {
                let from = match self.next.get(&partition) {
                    // Reconnecting: on from where the caller got to.
                    Some(next) if revived => Start::Offset(*next),
                    _ => self.start_of(&live.connection, &partition).await?,
                };
                self.read(&mut live, partition, from).await?;
            }
        }
        self.live = Some(live);
        Ok(())
    }

    /// Where an explicitly positioned reader starts `partition`.
    async fn start_of(&self, connection: &Connection, partition: &Partition) -> Result<Start, BusError> {
        Ok(match &self.start {
            StartFrom::Committed | StartFrom::Earliest => Start::First,
            StartFrom::Latest => Start::Next,
            StartFrom::Timestamp(at) => Start::Time(*at),
            StartFrom::Offsets(listed) => {
                match listed.iter().find(|p| p.topic == partition.0 && p.partition == partition.1) {
                    Some(position) => Start::Offset(position.offset),
                    None => match self.peek_token(connection, partition).await? {
                        Some(offset) => Start::Offset(offset),
                        None => Start::First,
                    },
                }
            }
        })
    }

    /// The group's committed offset of `partition`, read without taking the token (readers only).
    async fn peek_token(&self, connection: &Connection, partition: &Partition) -> Result<Option<u64>, BusError> {
        let channel = connection.create_channel().await.map_err(unavailable("opening a channel"))?;
        let queue = lease_queue(&self.settings, &self.group, partition);
        let got = channel.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false }).await;
        let offset = match got {
            Ok(Some(message)) => {
                let offset = token_offset(&message.delivery.data);
                let _ = message.delivery.acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
                offset
            }
            // No token ready (the group holds it, or has none): nothing committed to read here.
            Ok(None) => None,
            Err(e) if crate::not_found(&e) => None,
            Err(e) => return Err(unavailable("reading a committed offset")(e)),
        };
        if channel.status().connected() {
            let _ = channel.close(200, "peeked".into()).await;
        }
        Ok(offset)
    }

    /// Joins the line for `partition`'s token: declares the lease queue (seeding it with offset 0 for
    /// a new group) and consumes it with prefetch 1.
    async fn take_lease(&self, live: &Live, partition: &Partition) -> Result<Lease, BusError> {
        let channel = live.connection.create_channel().await.map_err(unavailable("opening a lease channel"))?;
        let queue = lease_queue(&self.settings, &self.group, partition);
        let declared = channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() },
                lease_arguments(),
            )
            .await
            .map_err(unavailable("declaring a lease queue"))?;
        channel.confirm_select(ConfirmSelectOptions::default()).await.map_err(unavailable("enabling confirms"))?;
        if declared.message_count() == 0 && declared.consumer_count() == 0 {
            // A new group (or one whose token is held by nobody and lost): start at the beginning. Two
            // members seeding at once leave tokens of the same offset; the queue keeps one.
            publish_token(&channel, &queue, 0).await?;
        }
        channel.basic_qos(1, BasicQosOptions::default()).await.map_err(unavailable("setting the lease prefetch"))?;
        let consumer = channel
            .basic_consume(
                queue.as_str().into(),
                format!("{}-{}", self.name, uuid_like()).into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(unavailable("joining a lease queue"))?;
        let sender = live.sender.clone();
        let owned = partition.clone();
        tokio::spawn(async move {
            let mut consumer = consumer;
            while let Some(delivery) = consumer.next().await {
                let Ok(delivery) = delivery else { break };
                match token_offset(&delivery.data) {
                    Some(offset) => {
                        let token = Event::Token { partition: owned.clone(), offset, acker: delivery.acker };
                        if sender.send(token).is_err() {
                            return;
                        }
                    }
                    None => {
                        warn!(queue = %delivery.routing_key, "a lease queue held a message that is no token; dropped");
                        let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                    }
                }
            }
            let _ = sender.send(Event::Closed { what: format!("the lease of {}/{}", owned.0, owned.1) });
        });
        Ok(Lease { channel, queue, token: None })
    }

    /// Starts reading `partition`'s stream at `from`, on a channel of its own (its prefetch bounds what
    /// waits in memory).
    async fn read(&mut self, live: &mut Live, partition: Partition, from: Start) -> Result<(), BusError> {
        self.generation += 1;
        let generation = self.generation;
        let channel = live.connection.create_channel().await.map_err(unavailable("opening a stream channel"))?;
        channel
            .basic_qos(self.settings.prefetch, BasicQosOptions::default())
            .await
            .map_err(unavailable("setting the stream prefetch"))?;
        let mut arguments = FieldTable::default();
        arguments.insert("x-stream-offset".into(), from.argument());
        let stream = stream_name(&self.settings, &partition.0, partition.1);
        let consumer = channel
            .basic_consume(
                stream.as_str().into(),
                format!("{}-{}", self.name, uuid_like()).into(),
                BasicConsumeOptions::default(),
                arguments,
            )
            .await
            .map_err(unavailable("consuming a partition stream"))?;
        let sender = live.sender.clone();
        let (topic, number) = partition.clone();
        tokio::spawn(async move {
            let mut consumer = consumer;
            while let Some(delivery) = consumer.next().await {
                let Ok(delivery) = delivery else { break };
                let Some(message) = incoming(&topic, number, &delivery) else {
                    warn!(topic, partition = number, "a stream delivery without its offset; skipped");
                    let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                    continue;
                };
                let record =
                    Event::Record { partition: (topic.clone(), number), generation, message, acker: delivery.acker };
                if sender.send(record).is_err() {
                    return;
                }
            }
            let _ = sender.send(Event::Closed { what: format!("the stream of {topic}/{number}") });
        });
        let (from_offset, from_time) = match from {
            Start::Offset(offset) => (offset, None),
            Start::Time(at) => (0, Some(at)),
            Start::First | Start::Next => (0, None),
        };
        live.reading.insert(partition, Reading { _channel: channel, generation, from_offset, from_time, last: None });
        Ok(())
    }

    /// A lease delivered its token.
    async fn on_token(&mut self, partition: Partition, offset: u64, acker: Acker) -> Result<(), BusError> {
        let Some(live) = self.live.as_mut() else { return Ok(()) };
        let Some(lease) = live.leases.get_mut(&partition) else { return Ok(()) };
        let offset = match lease.token.take() {
            // Two tokens (seeded twice, or left by a member that died mid-commit): keep the newer.
            Some((older, held)) => {
                let _ = older.ack(BasicAckOptions::default()).await;
                offset.max(held)
            }
            None => offset,
        };
        lease.token = Some((acker, offset));
        let committed = self.committed.entry(partition.clone()).or_insert(offset);
        *committed = (*committed).max(offset);
        if !live.reading.contains_key(&partition) {
            info!(group = %self.group, topic = %partition.0, partition = partition.1, offset, "partition assigned");
            let mut live = self.live.take().expect("checked above");
            let started = self.read(&mut live, partition.clone(), Start::Offset(offset)).await;
            self.live = Some(live);
            started?;
            self.next.insert(partition, offset);
        }
        Ok(())
    }

    /// Drops the connection (its consumers end with it); the next poll connects again.
    fn lose(&mut self, why: &str) {
        if let Some(live) = self.live.take() {
            warn!(group = %self.group, why, "RabbitMQ consumer lost; reconnecting");
            tokio::spawn(async move {
                let _ = live.connection.close(320, "reconnecting".into()).await;
            });
        }
    }

    /// Acknowledges (multiple) what each partition handed out, so the broker sends more.
    async fn credit(&mut self) {
        let Some(live) = self.live.as_mut() else { return };
        for reading in live.reading.values_mut() {
            if let Some(last) = reading.last.take() {
                let _ = last.ack(BasicAckOptions { multiple: true }).await;
            }
        }
    }

    /// The last offset of `partition`'s stream plus one (0 when empty), read from its last chunk.
    async fn end_of(
        connection: &Connection,
        settings: &RabbitMqSettings,
        partition: &Partition,
    ) -> Result<u64, BusError> {
        let channel = connection.create_channel().await.map_err(unavailable("opening a channel"))?;
        channel.basic_qos(1000, BasicQosOptions::default()).await.map_err(unavailable("setting a prefetch"))?;
        let mut arguments = FieldTable::default();
        arguments.insert("x-stream-offset".into(), long_string("last"));
        let tag = format!("end-{}", uuid_like());
        let mut consumer = channel
            .basic_consume(
                stream_name(settings, &partition.0, partition.1).as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                arguments,
            )
            .await
            .map_err(unavailable("reading a stream's end"))?;
        let mut end = 0;
        let started = tokio::time::Instant::now();
        loop {
            let wait = if end == 0 { END_EMPTY } else { END_QUIET };
            let wait = wait.min(END_LIMIT.saturating_sub(started.elapsed()));
            match tokio::time::timeout(wait, consumer.next()).await {
                Ok(Some(Ok(delivery))) => {
                    if let Some(offset) = delivery
                        .properties
                        .headers()
                        .as_ref()
                        .and_then(|h| h.inner().get(OFFSET_HEADER))
                        .and_then(integer)
                    {
                        end = end.max(offset as u64 + 1);
                    }
                    let _ = delivery.acker.ack(BasicAckOptions { multiple: true }).await;
                }
                Ok(Some(Err(e))) => return Err(unavailable("reading a stream's end")(e)),
                Ok(None) | Err(_) => break,
            }
        }
        let _ = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
        let _ = channel.close(200, "end read".into()).await;
        Ok(end)
    }
}

/// A token for a lease queue, confirmed by the broker.
async fn publish_token(channel: &Channel, queue: &str, offset: u64) -> Result<(), BusError> {
    crate::put_in_queue(channel, queue, offset.to_string().as_bytes(), "a committed offset").await
}

/// A short unique suffix for consumer tags.
fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

#[async_trait]
impl Subscription for RabbitSubscription {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<IncomingMessage>, BusError> {
        let live_ok = self.live.as_ref().is_some_and(|l| l.connection.status().connected());
        if !live_ok {
            self.lose("connection closed");
            self.revive().await?;
        }
        let deadline = tokio::time::Instant::now() + wait;
        let mut batch = Vec::new();
        while batch.len() < max.max(1) {
            let events = &mut self.live.as_mut().expect("revived above").events;
            let event = if batch.is_empty() {
                tokio::time::timeout_at(deadline, events.recv()).await.ok().flatten()
            } else {
                events.try_recv().ok()
            };
            let Some(event) = event else { break };
            match event {
                Event::Token { partition, offset, acker } => self.on_token(partition, offset, acker).await?,
                Event::Record { partition, generation, message, acker } => {
                    let live = self.live.as_mut().expect("revived above");
                    let Some(reading) = live.reading.get_mut(&partition) else { continue };
                    if reading.generation != generation {
                        continue;
                    }
                    let wanted = message.offset >= reading.from_offset
                        && reading.from_time.is_none_or(|at| message.timestamp >= at);
                    reading.last = Some(acker);
                    if wanted {
                        self.next.insert(partition, message.offset + 1);
                        batch.push(message);
                    }
                }
                Event::Closed { what } => {
                    if !batch.is_empty() {
                        // Hand out what was read; the next poll reconnects.
                        self.credit().await;
                        self.lose(&what);
                        return Ok(batch);
                    }
                    self.lose(&what);
                    return Err(BusError::Unavailable(anyhow::anyhow!("{what} ended")));
                }
            }
        }
        self.credit().await;
        Ok(batch)
    }

    async fn commit(&mut self, offsets: &[PartitionOffset]) -> Result<(), BusError> {
        let mut furthest: BTreeMap<Partition, u64> = BTreeMap::new();
        for position in offsets {
            let entry = furthest.entry((position.topic.clone(), position.partition)).or_default();
            *entry = (*entry).max(position.offset);
        }
        for (partition, offset) in furthest {
            if self.committed.get(&partition).is_some_and(|c| *c >= offset) {
                continue;
            }
            if !self.is_member() {
                // A reader keeps its progress in memory only (replay and tools start where they say).
                self.committed.insert(partition, offset);
                continue;
            }
            let Some(live) = self.live.as_mut() else { continue };
            let reading = live.reading.contains_key(&partition);
            let Some(lease) = live.leases.get_mut(&partition) else { continue };
            if lease.token.is_none() && !reading {
                // Not this member's partition (any more): its owner commits it.
                debug!(group = %self.group, topic = %partition.0, partition = partition.1, "commit of a partition not owned; skipped");
                continue;
            }
            // The new token first, then the old one goes: a crash in between leaves both, and the next
            // owner resumes from the older (records again, none lost).
            publish_token(&lease.channel, &lease.queue, offset).await?;
            if let Some((old, _)) = lease.token.take() {
                old.ack(BasicAckOptions::default()).await.map_err(unavailable("releasing a committed offset"))?;
            }
            self.committed.insert(partition, offset);
        }
        Ok(())
    }

    async fn committed(&self) -> Result<Vec<PartitionOffset>, BusError> {
        let Some(live) = &self.live else { return Ok(Vec::new()) };
        Ok(live
            .reading
            .keys()
            .filter_map(|p| {
                let offset = *self.committed.get(p)?;
                Some(PartitionOffset { topic: p.0.clone(), partition: p.1, offset })
            })
            .collect())
    }

    async fn end_offsets(&self) -> Result<Vec<PartitionOffset>, BusError> {
        let Some(live) = &self.live else { return Ok(Vec::new()) };
        let reading: Vec<&Partition> = live.reading.keys().collect();
        let ends =
            futures::future::try_join_all(reading.iter().map(|p| Self::end_of(&live.connection, &self.settings, p)))
                .await?;
        Ok(reading
            .into_iter()
            .zip(ends)
            .map(|(p, end)| PartitionOffset { topic: p.0.clone(), partition: p.1, offset: end })
            .collect())
    }
}

impl Drop for RabbitSubscription {
    fn drop(&mut self) {
        // Close the connection: the held tokens go back to their queues at once, for the next member.
        if let Some(live) = self.live.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                let _ = live.connection.close(200, "subscription dropped".into()).await;
            });
        }
    }
}
