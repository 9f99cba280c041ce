//! Durable timers: one document per timer in `timers`.
//!
//! `due_us` (the deadline in microseconds since the epoch, rounded up) is what `due` filters and sorts
//! on, so a timer is never reported before its deadline; `due_at` keeps the deadline exactly (RFC 3339,
//! nanoseconds) so it reads back unchanged.

use anyhow::{Context, anyhow};
use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use futures::TryStreamExt;
use mongodb::bson::{Binary, Bson, Document, doc, spec::BinarySubtype};
use mongodb::{Collection, Database};
use ridehail_ports::{StoreError, StoreResult};
use ridehail_ports::{Timer, TimerStore};

use crate::codec::{describe, is_duplicate_key};

pub(crate) const TIMERS: &str = "timers";

/// [`TimerStore`] on MongoDB. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MongoTimers {
    db: Database,
    timers: Collection<Document>,
}

impl MongoTimers {
    /// Uses `db` as migrated by [`crate::migrations::up`] (the queries rely on its indexes).
    pub fn new(db: &Database) -> Self {
        Self { db: db.clone(), timers: db.collection(TIMERS) }
    }
}

/// Microseconds since the epoch, rounded down.
fn micros_floor(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

/// Microseconds since the epoch, rounded up.
fn micros_ceil(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros() + i64::from(!at.timestamp_subsec_nanos().is_multiple_of(1_000))
}

fn encode(timer: &Timer) -> Document {
    let headers: Vec<Bson> =
        timer.headers.iter().map(|(name, value)| doc! {"name": name, "value": value}.into()).collect();
    doc! {
        "timer_id": &timer.id,
        "due_us": micros_ceil(timer.due_at),
        "due_at": timer.due_at.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        "topic": &timer.topic,
        "key": &timer.key,
        "headers": headers,
        "payload": Binary { subtype: BinarySubtype::Generic, bytes: timer.payload.clone() },
    }
}

fn decode(doc: &Document) -> anyhow::Result<Timer> {
    let headers = doc
        .get_array("headers")?
        .iter()
        .map(|h| {
            let h = h.as_document().ok_or_else(|| anyhow!("a header is not a document"))?;
            Ok((h.get_str("name")?.to_owned(), h.get_str("value")?.to_owned()))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(Timer {
        id: doc.get_str("timer_id")?.to_owned(),
        due_at: DateTime::parse_from_rfc3339(doc.get_str("due_at")?)?.with_timezone(&Utc),
        topic: doc.get_str("topic")?.to_owned(),
        key: doc.get_str("key")?.to_owned(),
        headers,
        payload: doc.get_binary_generic("payload")?.clone(),
    })
}

#[async_trait]
impl TimerStore for MongoTimers {
    async fn schedule(&self, timer: &Timer) -> StoreResult<()> {
        // The first schedule of an id wins; later ones change nothing. The unique index on `timer_id`
        // settles concurrent first schedules (the loser sees a duplicate key); the lookup spares the
        // common repeated schedule a failing write. A plain insert (rather than an upsert) also stores
        // the payload as given on servers whose update operators mishandle binary values (CongoDB).
        let existing = self
            .timers
            .find_one(doc! {"timer_id": &timer.id})
            .projection(doc! {"_id": 1})
            .await
            .with_context(|| format!("looking up timer {}", timer.id))?;
        if existing.is_some() {
            return Ok(());
        }
        match self.timers.insert_one(encode(timer)).await {
            Ok(_) => Ok(()),
            Err(e) if is_duplicate_key(&e) => Ok(()),
            Err(e) => Err(anyhow::Error::new(e).context(format!("scheduling timer {}", timer.id)).into()),
        }
    }

    async fn cancel(&self, id: &str) -> StoreResult<()> {
        self.timers.delete_many(doc! {"timer_id": id}).await.with_context(|| format!("cancelling timer {id}"))?;
        Ok(())
    }

    async fn due(&self, now: DateTime<Utc>, limit: usize) -> StoreResult<Vec<Timer>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let docs: Vec<Document> = self
            .timers
            .find(doc! {"due_us": {"$lte": micros_floor(now)}})
            .sort(doc! {"due_us": 1, "timer_id": 1})
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .await
            .context("reading due timers")?
            .try_collect()
            .await
            .context("reading due timers")?;
        docs.iter()
            .map(|doc| {
                decode(doc).map_err(|e| {
                    let key = describe(doc, "timer_id");
                    StoreError::Corrupt(format!("{TIMERS} document {key} does not decode: {e:#}"))
                })
            })
            .collect()
    }

    async fn ping(&self) -> StoreResult<()> {
        crate::ping(&self.db).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_round_up_and_now_rounds_down_to_the_microsecond() {
        let at = DateTime::from_timestamp(1_800_000_000, 1_500).unwrap();
        assert_eq!(micros_ceil(at), 1_800_000_000_000_002);
        assert_eq!(micros_floor(at), 1_800_000_000_000_001);
        let exact = DateTime::from_timestamp(1_800_000_000, 2_000).unwrap();
        assert_eq!(micros_ceil(exact), micros_floor(exact));
    }

    #[test]
    fn a_timer_round_trips_through_its_document() {
        let timer = Timer {
            id: "t-1".into(),
            due_at: DateTime::from_timestamp(1_800_000_000, 123_456_789).unwrap(),
            topic: "topic".into(),
            key: "key".into(),
            headers: vec![("h".into(), "v".into())],
            payload: vec![0, 1, 255],
        };
        assert_eq!(decode(&encode(&timer)).unwrap(), timer);
    }
}
