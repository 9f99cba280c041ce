//! The event store: one document per event in `events`, plus the global position counter in `counters`.
//!
//! # Appending
//! 1. The batch is validated ([`validate_batch`]) and the stream's current version read: a stale
//!    `expected_version` is refused right away (the common, sequential case of a conflict).
//! 2. Global positions for the batch are taken from the `events` counter with one atomic
//!    `findOneAndUpdate({name}, {$inc: {value: n}}, upsert)`.
//! 3. The events are written with one ordered `insertMany`. A concurrent append to the same stream makes
//!    one of the writes hit the unique `(aggregate_id, sequence)` index (error 11000): that append fails
//!    with [`AppendError::Conflict`], the stream's current version as `actual`.
//!
//! # Atomic where the deployment allows it
//! On a replica set or a sharded cluster (detected at start-up by [`supports_transactions`], or
//! forced by `mongodb.transactions`), a batch of several events is inserted in one multi-document
//! transaction: all of it is stored or none. A one-event append needs none (a single insert is
//! atomic) and skips its round trips.
//!
//! On a single server (no transactions), the batch is written one event after the other. Ordered
//! insertion stops at the first failure, so what is stored is always a prefix of the batch with no
//! gaps, but it can be a strict prefix: when the process or the connection dies mid-batch, or when a
//! concurrent append takes a later sequence number of the batch first (the caller gets a `Conflict`,
//! but its first events are stored; this is logged). The stream then holds the prefix as history; the
//! command's retry decides again from that state, like any other reader. Ridehail's commands produce
//! one event in the vast majority of cases, which keeps this window small.
//!
//! # Global order
//! `read_all` sorts by the position stored on each event, and its cursor is the last position read. A
//! stream's events get increasing positions because an append only starts after the previous one of the
//! stream was stored. Positions of failed appends are never used (gaps are harmless). Positions are
//! taken before the insert, so for a moment a larger position can be readable before a smaller one:
//! a reader following the head of the log could step over an in-flight event. `read_all` is for replay
//! (of a log that is not being written to, or up to a point in the past), where this cannot happen.
//! The counter must never fall behind the largest stored position: back up and restore `events` and
//! `counters` together.

use anyhow::{Context, anyhow};
use async_trait::async_trait;
use futures::TryStreamExt;
use mongodb::bson::{DateTime as BsonDateTime, Document, doc};
use mongodb::options::ReturnDocument;
use mongodb::{Collection, Database};
use ridehail_events::WireEvent;
use ridehail_ports::{AppendError, EventStore, ReadAllPage, Snapshot, validate_batch};
use ridehail_ports::{StoreError, StoreResult};
use uuid::Uuid;

use crate::codec::{describe, duplicate_key_index, from_document, get_u64, is_duplicate_key, to_document, to_i64};

pub(crate) const EVENTS: &str = "events";
pub(crate) const COUNTERS: &str = "counters";
/// One document per stream with a snapshot (its `stream`, unique).
pub(crate) const SNAPSHOTS: &str = "snapshots";
/// The counter document (in `counters`) that hands out global positions.
const POSITION_COUNTER: &str = "events";
/// Fields an event document holds beyond the [`WireEvent`] shape.
const BOOKKEEPING: &[&str] = &["position", "occurred_at_date"];

/// [`EventStore`] on MongoDB. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MongoEventStore {
    db: Database,
    events: Collection<Document>,
    counters: Collection<Document>,
    snapshots: Collection<Document>,
    /// Multi-event batches are inserted in one transaction.
    transactions: bool,
}

/// Whether the server `db` is on runs multi-document transactions: a replica set member (`setName`)
/// or a `mongos` (`isdbgrid`), with sessions. A single server (and CongoDB) does not.
pub async fn supports_transactions(db: &Database) -> anyhow::Result<bool> {
    let hello = db.run_command(doc! {"hello": 1}).await.context("MongoDB hello")?;
    Ok(runs_transactions(&hello))
}

/// What a `hello` answer says about transactions.
fn runs_transactions(hello: &Document) -> bool {
    let replicated = hello.contains_key("setName") || hello.get_str("msg").is_ok_and(|m| m == "isdbgrid");
    replicated && hello.contains_key("logicalSessionTimeoutMinutes")
}

impl MongoEventStore {
    /// Uses `db` as migrated by [`crate::migrations::up`]: without its unique index on
    /// `(aggregate_id, sequence)`, concurrent appends are not detected. No transactions (any server).
    pub fn new(db: &Database) -> Self {
        Self::with_transactions(db, false)
    }

    /// As [`MongoEventStore::new`], inserting batches of several events in one transaction when
    /// `transactions` (the server must run them: see [`supports_transactions`]).
    pub fn with_transactions(db: &Database, transactions: bool) -> Self {
        Self {
            db: db.clone(),
            events: db.collection(EVENTS),
            counters: db.collection(COUNTERS),
            snapshots: db.collection(SNAPSHOTS),
            transactions,
        }
    }

    /// Whether batches of several events are inserted in one transaction.
    pub fn transactional(&self) -> bool {
        self.transactions
    }

    /// Inserts `docs` in order: in one transaction when they are several and the store uses them.
    async fn insert(&self, docs: Vec<Document>) -> mongodb::error::Result<()> {
        use mongodb::error::UNKNOWN_TRANSACTION_COMMIT_RESULT;
        if !self.transactions || docs.len() < 2 {
            return self.events.insert_many(docs).ordered(true).await.map(drop);
        }
        let mut session = self.db.client().start_session().await?;
        session.start_transaction().await?;
        if let Err(e) = self.events.insert_many(docs).ordered(true).session(&mut session).await {
            // Nothing of the batch is stored; the abort only frees the server's state early.
            let _ = session.abort_transaction().await;
            return Err(e);
        }
        // A commit whose result is unknown (a lost connection, a failover) may be retried: the
        // server commits a transaction once.
        let mut attempt = 0;
        loop {
            match session.commit_transaction().await {
                Err(e) if e.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT) && attempt < 2 => attempt += 1,
                outcome => return outcome,
            }
        }
    }

    async fn current_version(&self, aggregate_id: Uuid) -> anyhow::Result<u64> {
        let last = self
            .events
            .find_one(doc! {"aggregate_id": aggregate_id.to_string()})
            .sort(doc! {"sequence": -1})
            .projection(doc! {"_id": 0, "sequence": 1})
            .await
            .with_context(|| format!("reading the version of stream {aggregate_id}"))?;
        match last {
            Some(doc) => get_u64(&doc, "sequence").with_context(|| format!("{EVENTS} of stream {aggregate_id}")),
            None => Ok(0),
        }
    }

    /// Reserves `count` consecutive global positions; returns the first.
    async fn allocate_positions(&self, count: usize) -> anyhow::Result<u64> {
        let count = i64::try_from(count).context("batch too large")?;
        let mut attempt = 0;
        let counter = loop {
            let updated = self
                .counters
                .find_one_and_update(doc! {"name": POSITION_COUNTER}, doc! {"$inc": {"value": count}})
                .upsert(true)
                .return_document(ReturnDocument::After)
                .await;
            match updated {
                Ok(Some(counter)) => break counter,
                Ok(None) => return Err(anyhow!("the position counter upsert returned no document")),
                // Two first-ever appends raced to create the counter; the other one did: increment it.
                Err(e) if is_duplicate_key(&e) && attempt == 0 => attempt += 1,
                Err(e) => return Err(e).context("allocating event positions"),
            }
        };
        let last = get_u64(&counter, "value").context("the position counter is corrupt")?;
        Ok(last + 1 - count as u64)
    }

    fn decode(doc: Document) -> StoreResult<WireEvent> {
        let key = match (doc.get_str("aggregate_id"), get_u64(&doc, "sequence")) {
            (Ok(id), Ok(sequence)) => format!("{id}#{sequence}"),
            _ => describe(&doc, "position"),
        };
        from_document(doc, BOOKKEEPING, EVENTS, &key)
    }
}

/// The event's document, without its position yet.
fn event_document(event: &WireEvent) -> anyhow::Result<Document> {
    let mut doc = to_document(event)?;
    // For people querying the collection: `occurred_at` itself is an exact RFC 3339 string.
    doc.insert("occurred_at_date", BsonDateTime::from_millis(event.occurred_at.timestamp_millis()));
    Ok(doc)
}

#[async_trait]
impl EventStore for MongoEventStore {
    async fn append(&self, expected_version: u64, events: &[WireEvent]) -> Result<(), AppendError> {
        let aggregate_id = validate_batch(expected_version, events)?;
        let actual = self.current_version(aggregate_id).await?;
        if actual != expected_version {
            return Err(AppendError::Conflict { aggregate_id, expected: expected_version, actual });
        }
        let mut docs = events
            .iter()
            .map(event_document)
            .collect::<anyhow::Result<Vec<_>>>()
            .map_err(|e| AppendError::Invalid(format!("{e:#}")))?;
        let first = self.allocate_positions(events.len()).await?;
        for (doc, position) in docs.iter_mut().zip(first..) {
            doc.insert("position", to_i64(position, "position")?);
        }
        match self.insert(docs).await {
            Ok(()) => Ok(()),
            Err(e) => match duplicate_key_index(&e) {
                Some(stored) => {
                    if stored > 0 && !(self.transactions && events.len() > 1) {
                        tracing::warn!(
                            %aggregate_id,
                            stored,
                            batch = events.len(),
                            "append conflicted after part of its batch was stored"
                        );
                    }
                    let actual = self.current_version(aggregate_id).await?;
                    if actual == expected_version {
                        // Nothing took the stream's next sequence: the clash was on a position, so the
                        // counter is behind the stored events. Not a conflict the caller could resolve.
                        return Err(AppendError::Unavailable(anyhow::Error::new(e).context(format!(
                            "appending to stream {aggregate_id}: a position is taken; is the `{POSITION_COUNTER}` \
                             counter in `{COUNTERS}` behind the largest stored position?"
                        ))));
                    }
                    Err(AppendError::Conflict { aggregate_id, expected: expected_version, actual })
                }
                None => {
                    // Two transactions writing the same stream: the loser is told to retry; if the
                    // stream moved on meanwhile, that is a conflict for the caller to decide again.
                    if e.contains_label(mongodb::error::TRANSIENT_TRANSACTION_ERROR) {
                        let actual = self.current_version(aggregate_id).await?;
                        if actual != expected_version {
                            return Err(AppendError::Conflict { aggregate_id, expected: expected_version, actual });
                        }
                    }
                    Err(AppendError::Unavailable(
                        anyhow::Error::new(e).context(format!("appending to stream {aggregate_id}")),
                    ))
                }
            },
        }
    }

    async fn read_stream(&self, aggregate_id: Uuid) -> StoreResult<Vec<WireEvent>> {
        self.read_stream_after(aggregate_id, 0).await
    }

    async fn read_stream_after(&self, aggregate_id: Uuid, after: u64) -> StoreResult<Vec<WireEvent>> {
        let after = to_i64(after, "sequence")?;
        let docs: Vec<Document> = self
            .events
            .find(doc! {"aggregate_id": aggregate_id.to_string(), "sequence": {"$gt": after}})
            .sort(doc! {"sequence": 1})
            .await
            .with_context(|| format!("reading stream {aggregate_id}"))?
            .try_collect()
            .await
            .with_context(|| format!("reading stream {aggregate_id}"))?;
        docs.into_iter().map(Self::decode).collect()
    }

    async fn load_snapshot(&self, stream: Uuid) -> StoreResult<Option<Snapshot>> {
        let id = stream.to_string();
        let found = (self.snapshots.find_one(doc! {"stream": &id}))
            // Without unique-index enforcement (CongoDB) two first snapshots can both be stored.
            .sort(doc! {"version": -1})
            .await
            .with_context(|| format!("reading the snapshot of {id}"))?;
        found.map(|doc| from_document(doc, &[], SNAPSHOTS, &id)).transpose()
    }

    async fn save_snapshot(&self, snapshot: &Snapshot) -> StoreResult<()> {
        let id = snapshot.stream.to_string();
        let body = to_document(snapshot).map_err(|e| StoreError::Corrupt(format!("{e:#}")))?;
        let version = to_i64(snapshot.version, "version")?;
        // Replaces an older snapshot, or one of another code version (of no use); keeps a newer one.
        let replaceable = doc! {"stream": &id, "$or": [
            {"version": {"$lt": version}},
            {"state_version": {"$ne": i64::from(snapshot.state_version)}},
        ]};
        let context = || format!("writing the snapshot of {id}");
        let replaced = self.snapshots.replace_one(replaceable, body.clone()).await.with_context(context)?;
        if replaced.matched_count == 0 {
            // None yet, or a newer one: stored only in the first case.
            let inserted =
                self.snapshots.update_one(doc! {"stream": &id}, doc! {"$setOnInsert": body}).upsert(true).await;
            match inserted {
                // A concurrent first snapshot of the stream won (the unique index on `stream`).
                Err(e) if is_duplicate_key(&e) => {}
                other => drop(other.with_context(context)?),
            }
        }
        Ok(())
    }

    async fn read_all(&self, after: Option<&str>, limit: usize) -> StoreResult<ReadAllPage> {
        let after: i64 = match after {
            Some(token) => {
                token.parse().map_err(|_| StoreError::Corrupt(format!("invalid read-all position {token:?}")))?
            }
            None => 0,
        };
        if limit == 0 {
            return Ok(ReadAllPage { events: Vec::new(), next: None });
        }
        let docs: Vec<Document> = self
            .events
            .find(doc! {"position": {"$gt": after}})
            .sort(doc! {"position": 1})
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .await
            .context("reading all events")?
            .try_collect()
            .await
            .context("reading all events")?;
        let next = match docs.last() {
            Some(last) => Some(get_u64(last, "position").context("an event's position is corrupt")?.to_string()),
            None => None,
        };
        let events = docs.into_iter().map(Self::decode).collect::<StoreResult<_>>()?;
        Ok(ReadAllPage { events, next })
    }

    async fn head(&self) -> StoreResult<u64> {
        // The newest stored position (the counter may be ahead of it by an append in flight).
        let last = self
            .events
            .find_one(doc! {})
            .sort(doc! {"position": -1})
            .projection(doc! {"_id": 0, "position": 1})
            .await
            .context("reading the newest event position")?;
        match last {
            Some(doc) => Ok(get_u64(&doc, "position").context("an event's position is corrupt")?),
            None => Ok(0),
        }
    }

    async fn ping(&self) -> StoreResult<()> {
        crate::ping(&self.db).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_sets_and_mongos_run_transactions_single_servers_do_not() {
        let member = doc! {"isWritablePrimary": true, "setName": "rs0", "logicalSessionTimeoutMinutes": 30};
        let mongos = doc! {"isWritablePrimary": true, "msg": "isdbgrid", "logicalSessionTimeoutMinutes": 30};
        let single = doc! {"isWritablePrimary": true, "logicalSessionTimeoutMinutes": 30};
        let no_sessions = doc! {"isWritablePrimary": true, "setName": "rs0"};
        assert!(runs_transactions(&member));
        assert!(runs_transactions(&mongos));
        assert!(!runs_transactions(&single));
        assert!(!runs_transactions(&no_sessions));
    }
}
