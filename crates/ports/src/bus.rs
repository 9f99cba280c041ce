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
