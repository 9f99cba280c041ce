//! The ride read model: one document per ride in `rides`, in the JSON shape of [`RideView`].

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::bson::{Document, doc};
use mongodb::{Collection, Database};
use ridehail_events::RideId;
use ridehail_events::ride::RideStatus;
use ridehail_ports::StoreResult;
use ridehail_ports::{RideParty, RideQuery, RideView, RideViews};

use crate::codec::{describe, from_document, to_document};
use crate::versioned::{VersionedWrite, key};

pub(crate) const RIDES: &str = "rides";

/// [`RideViews`] on MongoDB. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MongoRideViews {
    db: Database,
    rides: Collection<Document>,
}

impl MongoRideViews {
    /// Generation 0 (`rides`) on `db` as migrated by [`crate::migrations::up`] (the queries rely on
    /// its indexes).
    pub fn new(db: &Database) -> Self {
        Self::generation(db, 0)
    }

    /// One generation's collection (`rides_g<N>`, indexed by [`crate::migrations::prepare_generation`]).
    pub fn generation(db: &Database, generation: u64) -> Self {
        Self { db: db.clone(), rides: db.collection(&crate::generation_collection(RIDES, generation)) }
    }

    fn decode(&self, doc: Document) -> StoreResult<RideView> {
        let key = describe(&doc, "ride_id");
        from_document(doc, &[], RIDES, &key)
    }
}

#[async_trait]
impl RideViews for MongoRideViews {
    async fn upsert(&self, view: &RideView) -> StoreResult<bool> {
        Ok(VersionedWrite {
            collection: &self.rides,
            key: key("ride_id", view.ride_id),
            label: format!("ride_id={}", view.ride_id),
            owner: Document::new(),
            version: view.version,
            document: to_document(view)?,
        }
        .apply()
        .await?)
    }

    /// Concurrent conditional writes, up to 32 at a time, each on a distinct ride: a ride's later
    /// view waits for the wave holding its earlier one, so the batch is its upserts in order. (The
    /// driver's `bulkWrite` is the client-level one of MongoDB 8, which the servers here lack.)
    async fn upsert_many(&self, views: &[RideView]) -> StoreResult<u64> {
        let mut written = 0;
        let mut rest = views;
        while !rest.is_empty() {
            let mut rides = std::collections::HashSet::new();
            let wave = rest.iter().take(32).take_while(|v| rides.insert(v.ride_id)).count();
            let writes: Vec<_> = rest[..wave].iter().map(|view| self.upsert(view)).collect();
            written += futures::future::try_join_all(writes).await?.into_iter().map(u64::from).sum::<u64>();
            rest = &rest[wave..];
        }
        Ok(written)
    }

    async fn get(&self, ride_id: RideId) -> StoreResult<Option<RideView>> {
        let found =
            self.rides.find_one(key("ride_id", ride_id)).await.with_context(|| format!("reading ride {ride_id}"))?;
        found.map(|doc| self.decode(doc)).transpose()
    }

    async fn list(&self, query: &RideQuery) -> StoreResult<Vec<RideView>> {
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        // Ride ids are UUIDv7 strings: their byte order is their creation order.
        let mut filter = match query.party {
            RideParty::Rider(id) => doc! {"rider_id": id.to_string()},
            RideParty::Driver(id) => {
                let id = id.to_string();
                doc! {"$or": [{"driver_id": &id}, {"offered_driver_id": &id}]}
            }
        };
        if let Some(status) = query.status {
            filter.insert("status", status.as_str());
        }
        if let Some(before) = query.before {
            filter.insert("ride_id", doc! {"$lt": before.to_string()});
        }
        let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
        let docs: Vec<Document> = self
            .rides
            .find(filter)
            .sort(doc! {"ride_id": -1})
            .limit(limit)
            .await
            .context("listing rides")?
            .try_collect()
            .await
            .context("listing rides")?;
        docs.into_iter().map(|doc| self.decode(doc)).collect()
    }

    async fn count_waiting_in_cell(&self, cell: &str) -> StoreResult<u64> {
        Ok(self
            .rides
            .count_documents(doc! {"status": RideStatus::Requested.as_str(), "pickup_cell": cell})
            .await
            .context("counting waiting rides")?)
    }

    async fn waiting_since(&self, before: DateTime<Utc>, limit: usize) -> StoreResult<Vec<RideView>> {
        // Few rides wait at any moment; their times are compared here (stored as RFC 3339 strings,
        // whose precision varies, so not in the query).
        let docs: Vec<Document> = self
            .rides
            .find(doc! {"status": RideStatus::Requested.as_str()})
            .await
            .context("listing waiting rides")?
            .try_collect()
            .await
            .context("listing waiting rides")?;
        let mut waiting = Vec::new();
        for doc in docs {
            let view = self.decode(doc)?;
            if view.updated_at < before {
                waiting.push(view);
            }
        }
        waiting.sort_by_key(|v| v.updated_at);
        waiting.truncate(limit);
        Ok(waiting)
    }

    async fn ping(&self) -> StoreResult<()> {
        crate::ping(&self.db).await
    }
}
