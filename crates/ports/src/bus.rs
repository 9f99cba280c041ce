use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

/// A record to publish. Records with the same key land in the same partition, in publish order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// The aggregate id the record is about.
    pub key: String,
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
}

/// A record as consumed, with where it sits in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingMessage {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub key: String,
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
    pub timestamp: DateTime<Utc>,
}

impl IncomingMessage {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// A position to resume a partition from: the offset of the next record to read.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PartitionOffset {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
}

/// Where a new subscription starts reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartFrom {
    /// The group's committed offsets; partitions without one start at the earliest record.
    Committed,
    Earliest,
    /// Only records published after subscribing.
    Latest,
    /// The first record at or after this time, per partition (replay).
    Timestamp(DateTime<Utc>),
    /// Explicit offsets; partitions not listed start at the committed offset.
    Offsets(Vec<PartitionOffset>),
}

/// The partition of `key` in a topic of `partitions` partitions (FNV-1a of the key's bytes, modulo the
/// count): stable across runs and processes, so every producer of an adapter that partitions on the
/// client (the embedded bus, RabbitMQ) puts a key in the same partition. A producer in another
/// language computes it the same way (docs/rabbitmq.md).
pub fn partition_for_key(key: &str, partitions: u32) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in key.as_bytes() {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % partitions.max(1)
}

/// What `ridehail topics apply` found or did for one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicState {
    Created,
    /// Already there with the configured partition count.
    Unchanged,
    /// Already there with another partition count. Left alone: adding partitions remaps keys to
    /// partitions and would break per-aggregate ordering for records in flight; do it deliberately.
    PartitionMismatch {
        actual: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicReport {
    /// The broker-side name (with the namespace).
    pub topic: String,
    pub partitions: u32,
    pub state: TopicState,
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("topic {0:?} does not exist")]
    UnknownTopic(String),
    #[error("message bus unavailable: {0:#}")]
    Unavailable(#[from] anyhow::Error),
}

impl From<crate::StoreError> for BusError {
    fn from(error: crate::StoreError) -> Self {
        Self::Unavailable(error.into())
    }
}

/// A partitioned, durable log with consumer groups (Kafka's model).
#[async_trait]
pub trait MessageBus: Send + Sync + std::fmt::Debug {
    /// Publishes records; returns once they are durable. Either an error or every record was written.
    async fn publish(&self, topic: &str, messages: Vec<OutgoingMessage>) -> Result<(), BusError>;

    /// Joins consumer group `group` on `topics`.
    async fn subscribe(
        &self,
        group: &str,
        topics: &[&str],
        start: StartFrom,
    ) -> Result<Box<dyn Subscription>, BusError>;

    /// Number of partitions of a topic.
    async fn partitions(&self, topic: &str) -> Result<u32, BusError>;

    async fn ping(&self) -> Result<(), BusError>;

    /// The messaging system, as traces name it (`messaging.system`: `kafka`, …).
    fn system(&self) -> &'static str;
}

/// One member of a consumer group.
#[async_trait]
pub trait Subscription: Send + std::fmt::Debug {
    /// Up to `max` records from the assigned partitions, each partition in offset order, waiting at
    /// most `wait` for the first one. An empty batch means nothing arrived in time. Reading advances
    /// the member's position but commits nothing.
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<IncomingMessage>, BusError>;

    /// Durably records, per partition, the offset of the next record to process. Call it only after
    /// the effects of every record before that offset are durable (at-least-once).
    async fn commit(&mut self, offsets: &[PartitionOffset]) -> Result<(), BusError>;

    /// The group's committed offsets for the assigned partitions.
    async fn committed(&self) -> Result<Vec<PartitionOffset>, BusError>;

    /// Per assigned partition, the end of its log: the offset the next record published there will
    /// get (Kafka's high watermark). Less what the group finished, it is the group's lag.
    async fn end_offsets(&self) -> Result<Vec<PartitionOffset>, BusError>;
}

#[cfg(test)]
mod tests {
    use super::partition_for_key;

    #[test]
    fn a_key_always_maps_to_the_same_partition() {
        // FNV-1a 32 of "a" is 0xe40c292c: a producer in another language can check its own against it.
        assert_eq!(partition_for_key("a", u32::MAX), 0xe40c_292c);
        let p = partition_for_key("ride-42", 8);
        assert!(p < 8);
        assert_eq!(partition_for_key("ride-42", 8), p);
        let spread: std::collections::HashSet<u32> = (0..100).map(|i| partition_for_key(&format!("k{i}"), 8)).collect();
        assert!(spread.len() > 4, "keys should spread over partitions: {spread:?}");
        assert_eq!(partition_for_key("anything", 0), 0, "no partitions count as one");
    }
}
