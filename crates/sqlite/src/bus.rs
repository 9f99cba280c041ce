//! The embedded message bus: a partitioned log in SQLite with committed offsets per consumer group,
//! one database file per topic (so publishing events never waits for a consumer reading commands).
//!
//! A group has a single member in this adapter (it is assigned every partition). Publishing wakes the
//! local subscribers of that topic at once; a subscriber also looks again every 50 ms, so records
//! written by another process on the same data directory are seen too.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use rusqlite::{OptionalExtension, TransactionBehavior, params};
use tokio::sync::Notify;

use crate::sqlite::{Db, exec, from_millis, millis, one};
use ridehail_ports::{
    BusError, IncomingMessage, MessageBus, OutgoingMessage, PartitionOffset, StartFrom, Subscription, partition_for_key,
};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS topics (topic TEXT PRIMARY KEY, partitions INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, offset INTEGER NOT NULL,
    key TEXT NOT NULL, headers TEXT NOT NULL, payload BLOB NOT NULL, ts INTEGER NOT NULL,
    PRIMARY KEY (topic, partition, offset)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS group_offsets (
    group_id TEXT NOT NULL, topic TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL,
    PRIMARY KEY (group_id, topic, partition)
) WITHOUT ROWID;
";

/// The end of a partition. A bare `MAX` lets SQLite answer from the primary key's last entry; wrapped
/// in another expression it would scan the whole partition.
const NEXT_OFFSET: &str = "SELECT MAX(offset) FROM messages WHERE topic = ?1 AND partition = ?2";

fn next_offset(row: &rusqlite::Row<'_>) -> rusqlite::Result<u64> {
    Ok(row.get::<_, Option<u64>>(0)?.map_or(0, |last| last + 1))
}

/// One topic's log.
#[derive(Debug)]
struct TopicLog {
    db: Db,
    partitions: u32,
    /// Local subscriptions to wake when this topic gets records (and only then).
    subscribers: Mutex<Vec<Weak<Notify>>>,
}

impl TopicLog {
    fn wake_subscribers(&self) {
        let mut subscribers = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        subscribers.retain(|weak| match weak.upgrade() {
            // A stored permit: a subscription not waiting right now finds it on its next wait.
            Some(notify) => {
                notify.notify_one();
                true
            }
            None => false,
        });
    }
}

#[derive(Debug)]
struct Inner {
    topics: HashMap<String, TopicLog>,
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct EmbeddedBus {
    inner: Arc<Inner>,
}

impl EmbeddedBus {
    /// Opens the logs under directory `dir`, creating the listed topics; an existing topic keeps its
    /// partition count.
    pub fn open(dir: &Path, topics: &[(&str, u32)]) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut logs = HashMap::new();
        for (topic, partitions) in topics {
            let db = Db::open(&dir.join(format!("{topic}.sqlite")))?;
            db.migrate(SCHEMA)?;
            let partitions = db.with(|conn| {
                exec(
                    conn,
                    "INSERT OR IGNORE INTO topics (topic, partitions) VALUES (?1, ?2)",
                    params![topic, partitions],
                )?;
                Ok(one(conn, "SELECT partitions FROM topics WHERE topic = ?1", params![topic], |r| r.get::<_, u32>(0))?)
            })?;
            logs.insert((*topic).to_owned(), TopicLog { db, partitions, subscribers: Mutex::default() });
        }
        Ok(Self { inner: Arc::new(Inner { topics: logs }) })
    }

    fn log(&self, topic: &str) -> Result<&TopicLog, BusError> {
        self.inner.topics.get(topic).ok_or_else(|| BusError::UnknownTopic(topic.to_owned()))
    }

    fn partitions_of(&self, topic: &str) -> Result<u32, BusError> {
        self.log(topic).map(|log| log.partitions)
    }
}

#[async_trait]
impl MessageBus for EmbeddedBus {
    async fn publish(&self, topic: &str, messages: Vec<OutgoingMessage>) -> Result<(), BusError> {
        let log = self.log(topic)?;
        let partitions = log.partitions;
        if messages.is_empty() {
            return Ok(());
        }
        let now = millis(chrono::Utc::now());
        log.db.with(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut next: HashMap<u32, u64> = HashMap::new();
            for message in &messages {
                let partition = partition_for_key(&message.key, partitions);
                let offset = match next.get(&partition) {
                    Some(offset) => *offset,
                    None => one(&tx, NEXT_OFFSET, params![topic, partition], next_offset)?,
                };
                exec(
                    &tx,
                    "INSERT INTO messages (topic, partition, offset, key, headers, payload, ts)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![
                        topic,
                        partition,
                        offset,
                        message.key,
                        serde_json::to_string(&message.headers)?,
                        message.payload,
                        now
                    ],
                )?;
                next.insert(partition, offset + 1);
            }
            tx.commit()?;
            Ok(())
        })?;
        log.wake_subscribers();
        Ok(())
    }

    async fn subscribe(
        &self,
        group: &str,
        topics: &[&str],
        start: StartFrom,
    ) -> Result<Box<dyn Subscription>, BusError> {
        let mut assigned = Vec::new();
        for topic in topics {
            let partitions = self.partitions_of(topic)?;
            assigned.extend((0..partitions).map(|p| ((*topic).to_owned(), p)));
        }
        let group = group.to_owned();
        let mut positions = BTreeMap::new();
        for (topic, partition) in &assigned {
            let position = self.log(topic)?.db.with(|conn| {
                let committed: Option<u64> = one(
                    conn,
                    "SELECT next_offset FROM group_offsets WHERE group_id = ?1 AND topic = ?2 AND partition = ?3",
                    params![group, topic, partition],
                    |r| r.get(0),
                )
                .optional()?;
                let end: u64 = one(conn, NEXT_OFFSET, params![topic, partition], next_offset)?;
                let position = match &start {
                    StartFrom::Committed => committed.unwrap_or(0),
                    StartFrom::Earliest => 0,
                    StartFrom::Latest => end,
                    StartFrom::Timestamp(at) => one(
                        conn,
                        "SELECT MIN(offset) FROM messages WHERE topic = ?1 AND partition = ?2 AND ts >= ?3",
                        params![topic, partition, millis(*at)],
                        |r| r.get::<_, Option<u64>>(0),
                    )?
                    .unwrap_or(end),
                    StartFrom::Offsets(offsets) => offsets
                        .iter()
                        .find(|o| &o.topic == topic && o.partition == *partition)
                        .map(|o| o.offset)
                        .unwrap_or(committed.unwrap_or(0)),
                };
                Ok(position)
            })?;
            positions.insert((topic.clone(), *partition), position);
        }
        let wake = Arc::new(Notify::new());
        for topic in topics {
            let log = self.log(topic)?;
            log.subscribers.lock().unwrap_or_else(|e| e.into_inner()).push(Arc::downgrade(&wake));
        }
        Ok(Box::new(EmbeddedSubscription { bus: self.clone(), group, positions, wake }))
    }

    async fn partitions(&self, topic: &str) -> Result<u32, BusError> {
        self.partitions_of(topic)
    }

    async fn ping(&self) -> Result<(), BusError> {
        Ok(self.inner.topics.values().try_for_each(|log| log.db.ping())?)
    }

    /// Not a system the conventions name: Ridehail's own log in SQLite.
    fn system(&self) -> &'static str {
        "ridehail_embedded"
    }
}

#[derive(Debug)]
struct EmbeddedSubscription {
    bus: EmbeddedBus,
    group: String,
    /// Next offset to read, per assigned partition.
    positions: BTreeMap<(String, u32), u64>,
    /// Woken by publishes to the subscribed topics.
    wake: Arc<Notify>,
}

impl EmbeddedSubscription {
    fn fetch(&self, max: usize) -> anyhow::Result<Vec<IncomingMessage>> {
        let per_partition = (max / self.positions.len().max(1)).max(1);
        let mut out = Vec::new();
        for ((topic, partition), position) in &self.positions {
            if out.len() >= max {
                break;
            }
            let Some(log) = self.bus.inner.topics.get(topic) else { continue };
            log.db.with(|conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT offset, key, headers, payload, ts FROM messages
                     WHERE topic = ?1 AND partition = ?2 AND offset >= ?3 ORDER BY offset LIMIT ?4",
                )?;
                let rows = stmt.query_map(params![topic, partition, position, per_partition], |r| {
                    Ok((
                        r.get::<_, u64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, Vec<u8>>(3)?,
                        r.get::<_, i64>(4)?,
                    ))
                })?;
                for row in rows {
                    let (offset, key, headers, payload, ts) = row?;
                    out.push(IncomingMessage {
                        topic: topic.clone(),
                        partition: *partition,
                        offset,
                        key,
                        headers: serde_json::from_str(&headers).context("decoding stored headers")?,
                        payload,
                        timestamp: from_millis(ts),
                    });
                }
                Ok(())
            })?;
        }
        Ok(out)
    }
}

#[async_trait]
impl Subscription for EmbeddedSubscription {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<IncomingMessage>, BusError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let batch = self.fetch(max)?;
            if !batch.is_empty() {
                for message in &batch {
                    self.positions.insert((message.topic.clone(), message.partition), message.offset + 1);
                }
                return Ok(batch);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            // Woken by a local publish to our topics, or after a short nap: another process may publish.
            let nap = (deadline - now).min(Duration::from_millis(50));
            let _ = tokio::time::timeout(nap, self.wake.notified()).await;
        }
    }

    async fn commit(&mut self, offsets: &[PartitionOffset]) -> Result<(), BusError> {
        let mut by_topic: BTreeMap<&str, Vec<&PartitionOffset>> = BTreeMap::new();
        for o in offsets {
            by_topic.entry(o.topic.as_str()).or_default().push(o);
        }
        for (topic, offsets) in by_topic {
            self.bus.log(topic)?.db.with(|conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                for o in offsets {
                    exec(
                        &tx,
                        "INSERT INTO group_offsets (group_id, topic, partition, next_offset) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (group_id, topic, partition) DO UPDATE SET next_offset = excluded.next_offset",
                        params![self.group, o.topic, o.partition, o.offset],
                    )?;
                }
                tx.commit()?;
                Ok(())
            })?;
        }
        Ok(())
    }

    async fn committed(&self) -> Result<Vec<PartitionOffset>, BusError> {
        let mut out = Vec::new();
        for (topic, partition) in self.positions.keys() {
            let offset: Option<u64> = self.bus.log(topic)?.db.with(|conn| {
                Ok(one(
                    conn,
                    "SELECT next_offset FROM group_offsets WHERE group_id = ?1 AND topic = ?2 AND partition = ?3",
                    params![self.group, topic, partition],
                    |r| r.get(0),
                )
                .optional()?)
            })?;
            if let Some(offset) = offset {
                out.push(PartitionOffset { topic: topic.clone(), partition: *partition, offset });
            }
        }
        Ok(out)
    }

    async fn end_offsets(&self) -> Result<Vec<PartitionOffset>, BusError> {
        let mut out = Vec::new();
        for (topic, partition) in self.positions.keys() {
            let offset = self
                .bus
                .log(topic)?
                .db
                .with(|conn| Ok(one(conn, NEXT_OFFSET, params![topic, partition], next_offset)?))?;
            out.push(PartitionOffset { topic: topic.clone(), partition: *partition, offset });
        }
        Ok(out)
    }
}
