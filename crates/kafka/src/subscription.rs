//! One consumer-group member (or one explicitly assigned reader), see the crate documentation.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::{FutureExt as _, StreamExt as _};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers as _, Message as _};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use ridehail_ports::{BusError, IncomingMessage, PartitionOffset, StartFrom, Subscription};
use tracing::{info, warn};

use crate::KafkaSettings;

const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Commits what is finished before partitions move to another member.
#[derive(Debug)]
pub(crate) struct RebalanceContext {
    group: String,
}

impl ClientContext for RebalanceContext {}

impl ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(partitions) => {
                // Served inside poll: commit what the partition workers finished and stored; records
                // they still hold may be processed again by the new owner (handlers are idempotent).
                match consumer.commit_consumer_state(CommitMode::Sync) {
                    Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                    Err(e) => warn!(group = %self.group, error = %e, "commit before revoke failed"),
                }
                info!(group = %self.group, partitions = partitions.count(), "partitions revoked");
            }
            Rebalance::Assign(partitions) => {
                info!(group = %self.group, partitions = partitions.count(), "partitions assigned");
            }
            Rebalance::Error(e) => warn!(group = %self.group, error = %e, "rebalance error"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            // Not fatal: the records are redelivered after a restart or rebalance (idempotent handlers).
            Err(e) => {
                warn!(group = %self.group, error = %e, partitions = offsets.count(), "offset commit failed")
            }
        }
    }
}

type Consumer = StreamConsumer<RebalanceContext>;

pub(crate) struct KafkaSubscription {
    consumer: Arc<Consumer>,
    namespace: String,
}

impl std::fmt::Debug for KafkaSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSubscription").field("namespace", &self.namespace).finish_non_exhaustive()
    }
}

fn unavailable(context: &'static str) -> impl FnOnce(KafkaError) -> BusError {
    move |e| BusError::Unavailable(anyhow::Error::new(e).context(context))
}

/// Runs blocking librdkafka admin calls off the async threads.
async fn blocking<T: Send + 'static>(
    consumer: &Arc<Consumer>,
    call: impl FnOnce(&Consumer) -> KafkaResult<T> + Send + 'static,
    context: &'static str,
) -> Result<T, BusError> {
    let consumer = consumer.clone();
    tokio::task::spawn_blocking(move || call(&consumer))
        .await
        .map_err(|e| BusError::Unavailable(e.into()))?
        .map_err(unavailable(context))
}

impl KafkaSubscription {
    /// `partitions`: the logical topics with their partition counts.
    pub(crate) async fn open(
        settings: &KafkaSettings,
        client_id: &str,
        group: &str,
        partitions: &[(String, u32)],
        start: StartFrom,
    ) -> Result<Self, BusError> {
        let group = settings.physical(group);
        let defaults = [
            ("auto.commit.interval.ms", settings.auto_commit_interval_ms.to_string()),
            ("auto.offset.reset", "earliest".to_owned()),
            ("partition.assignment.strategy", "cooperative-sticky".to_owned()),
            ("session.timeout.ms", settings.session_timeout_ms.to_string()),
            ("heartbeat.interval.ms", (settings.session_timeout_ms / 3).max(100).to_string()),
            ("fetch.wait.max.ms", settings.fetch_wait_max_ms.to_string()),
        ];
        // At least once: an offset is stored only once its record is finished, and committed from there.
        let fixed = [
            ("group.id", group.as_str()),
            ("enable.auto.commit", "true"),
            ("enable.auto.offset.store", "false"),
            ("enable.partition.eof", "false"),
        ];
        let config = crate::client_config(settings, client_id, &defaults, &fixed);
        let consumer: Consumer = config
            .create_with_context(RebalanceContext { group: group.clone() })
            .map_err(unavailable("creating a Kafka consumer"))?;
        let consumer = Arc::new(consumer);
        let physical: Vec<(String, u32)> = partitions.iter().map(|(t, n)| (settings.physical(t), *n)).collect();
        let every = |offset: Offset| {
            let mut list = TopicPartitionList::new();
            for (topic, count) in &physical {
                for partition in 0..*count {
                    list.add_partition_offset(topic, partition as i32, offset).expect("a valid offset");
                }
            }
            list
        };
        let assignment = match start {
            StartFrom::Committed => {
                let topics: Vec<&str> = physical.iter().map(|(t, _)| t.as_str()).collect();
                consumer.subscribe(&topics).map_err(unavailable("subscribing"))?;
                None
            }
            StartFrom::Earliest => Some(every(Offset::Beginning)),
            StartFrom::Latest => {
                // Resolve the ends now, so records published after `subscribe` returns are all read.
                let mut list = every(Offset::End);
                for (topic, count) in physical.clone() {
                    for partition in 0..count {
                        let topic_name = topic.clone();
                        let (_, high) = blocking(
                            &consumer,
                            move |c| c.fetch_watermarks(&topic_name, partition as i32, ADMIN_TIMEOUT),
                            "fetching watermarks",
                        )
                        .await?;
                        list.set_partition_offset(&topic, partition as i32, Offset::Offset(high))
                            .map_err(unavailable("setting an offset"))?;
                    }
                }
                Some(list)
            }
            StartFrom::Timestamp(at) => {
                let list = every(Offset::Offset(at.timestamp_millis()));
                Some(
                    blocking(&consumer, move |c| c.offsets_for_times(list, ADMIN_TIMEOUT), "looking up offsets")
                        .await?,
                )
            }
            StartFrom::Offsets(explicit) => {
                let list = every(Offset::Invalid);
                let mut list =
                    blocking(&consumer, move |c| c.committed_offsets(list, ADMIN_TIMEOUT), "reading committed offsets")
                        .await?;
                for elem in list.clone().elements() {
                    if elem.offset() == Offset::Invalid {
                        list.set_partition_offset(elem.topic(), elem.partition(), Offset::Beginning)
                            .map_err(unavailable("setting an offset"))?;
                    }
                }
                for position in explicit {
                    let topic = settings.physical(&position.topic);
                    list.set_partition_offset(
                        &topic,
                        position.partition as i32,
                        Offset::Offset(position.offset as i64),
                    )
                    .map_err(unavailable("setting an offset"))?;
                }
                Some(list)
            }
        };
        if let Some(list) = assignment {
            consumer.assign(&list).map_err(unavailable("assigning partitions"))?;
        }
        Ok(Self { consumer, namespace: settings.namespace.clone() })
    }

    fn convert(&self, message: &BorrowedMessage<'_>) -> IncomingMessage {
        let topic = message.topic();
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| (h.key.to_owned(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        let timestamp = message
            .timestamp()
            .to_millis()
            .and_then(DateTime::<Utc>::from_timestamp_millis)
            .unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
        IncomingMessage {
            topic: topic.strip_prefix(self.namespace.as_str()).unwrap_or(topic).to_owned(),
            partition: message.partition() as u32,
            offset: message.offset() as u64,
            key: message.key().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default(),
            headers,
            payload: message.payload().unwrap_or_default().to_vec(),
            timestamp,
        }
    }
}

#[async_trait]
impl Subscription for KafkaSubscription {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<IncomingMessage>, BusError> {
        let mut batch = Vec::new();
        let mut stream = self.consumer.stream();
        let first = match tokio::time::timeout(wait, stream.next()).await {
            Err(_) | Ok(None) => return Ok(batch),
            Ok(Some(first)) => first,
        };
        batch.push(self.convert(&first.map_err(unavailable("consuming"))?));
        // Take what is already fetched, without waiting again.
        while batch.len() < max {
            match stream.next().now_or_never() {
                Some(Some(Ok(message))) => batch.push(self.convert(&message)),
                Some(Some(Err(e))) => {
                    warn!(error = %e, "consumer error after a partial batch; returning what was read");
                    break;
                }
                Some(None) | None => break,
            }
        }
        Ok(batch)
    }

    async fn commit(&mut self, offsets: &[PartitionOffset]) -> Result<(), BusError> {
        // One element per partition (librdkafka stores the last element of a partition, and a list
        // built with a partition twice holds an invalid offset there): keep the furthest position.
        let mut furthest: std::collections::BTreeMap<(String, u32), u64> = std::collections::BTreeMap::new();
        for position in offsets {
            let entry = furthest.entry((position.topic.clone(), position.partition)).or_default();
            *entry = (*entry).max(position.offset);
        }
        let mut list = TopicPartitionList::with_capacity(furthest.len());
        for ((topic, partition), offset) in furthest {
            let topic = format!("{}{topic}", self.namespace);
            list.add_partition_offset(&topic, partition as i32, Offset::Offset(offset as i64))
                .map_err(unavailable("building the offset list"))?;
        }
        // Stored offsets are committed by librdkafka (interval, revoke, close). A partition revoked
        // meanwhile refuses the store: its new owner re-processes those records (idempotent handlers).
        match self.consumer.store_offsets(&list) {
            Ok(()) => Ok(()),
            Err(KafkaError::StoreOffset(RDKafkaErrorCode::State)) => {
                warn!("offsets of revoked partitions not stored; the new owner will re-deliver them");
                Ok(())
            }
            Err(e) => Err(unavailable("storing offsets")(e)),
        }
    }

    async fn committed(&self) -> Result<Vec<PartitionOffset>, BusError> {
        let list = blocking(&self.consumer, |c| c.committed(ADMIN_TIMEOUT), "reading committed offsets").await?;
        Ok(list
            .elements()
            .iter()
            .filter_map(|elem| match elem.offset() {
                Offset::Offset(offset) if offset >= 0 => Some(PartitionOffset {
                    topic: elem.topic().strip_prefix(self.namespace.as_str()).unwrap_or(elem.topic()).to_owned(),
                    partition: elem.partition() as u32,
                    offset: offset as u64,
                }),
                _ => None,
            })
            .collect())
    }

    async fn end_offsets(&self) -> Result<Vec<PartitionOffset>, BusError> {
        let namespace = self.namespace.clone();
        blocking(
            &self.consumer,
            move |c| {
                let mut out = Vec::new();
                for elem in c.assignment()?.elements() {
                    let (_, high) = c.fetch_watermarks(elem.topic(), elem.partition(), ADMIN_TIMEOUT)?;
                    out.push(PartitionOffset {
                        topic: elem.topic().strip_prefix(namespace.as_str()).unwrap_or(elem.topic()).to_owned(),
                        partition: elem.partition() as u32,
                        offset: high.max(0) as u64,
                    });
                }
                Ok(out)
            },
            "reading the partitions' ends",
        )
        .await
    }
}

impl Drop for KafkaSubscription {
    fn drop(&mut self) {
        // Commit what is finished now rather than leave it to the next member to redo.
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => warn!(error = %e, "final offset commit failed; finished records may be redelivered"),
        }
    }
}
