//! The projection catalogue (`projections`: one document per projection, the
//! [`ProjectionRecord`] fields plus `name` and `revision`) and the generations of the ride and user
//! views (collections suffixed `_g<N>` beside generation 0's).

use std::sync::Arc;

use anyhow::Context;
use async_trait::async_trait;
use mongodb::bson::{Document, doc};
use mongodb::{Collection, Database};
use ridehail_ports::projections::{GenerationStore, Projection, ProjectionCatalogue, ProjectionRecord};
use ridehail_ports::{RideViews, StoreResult, UserViews};

use crate::codec::{from_document, get_u64, is_duplicate_key, to_document, to_i64};
use crate::rides::RIDES;
use crate::users::{CREDENTIALS, PROFILES};
use crate::{MongoRideViews, MongoUserViews};

pub(crate) const PROJECTIONS: &str = "projections";

/// The collections of a projection's generation 0.
fn collections(projection: Projection) -> &'static [&'static str] {
    match projection {
        Projection::Rides => &[RIDES],
        Projection::Users => &[PROFILES, CREDENTIALS],
        Projection::Drivers => &[],
    }
}

/// [`ProjectionCatalogue`] and [`GenerationStore`] on MongoDB. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MongoGenerations {
    db: Database,
    catalogue: Collection<Document>,
}

impl MongoGenerations {
    /// Uses `db` as migrated by [`crate::migrations::up`].
    pub fn new(db: &Database) -> Self {
        Self { db: db.clone(), catalogue: db.collection(PROJECTIONS) }
    }
}

#[async_trait]
impl ProjectionCatalogue for MongoGenerations {
    async fn load(&self, projection: Projection) -> StoreResult<(ProjectionRecord, u64)> {
        let found = self
            .catalogue
            .find_one(doc! {"name": projection.as_str()})
            .await
            .with_context(|| format!("reading the {projection} catalogue record"))?;
        let Some(found) = found else { return Ok((ProjectionRecord::initial(), 0)) };
        let revision = get_u64(&found, "revision").with_context(|| format!("the {projection} catalogue record"))?;
        let record = from_document(found, &["name", "revision"], PROJECTIONS, &format!("name={projection}"))?;
        Ok((record, revision))
    }

    async fn store(&self, projection: Projection, expected: u64, record: &ProjectionRecord) -> StoreResult<bool> {
        let mut document = to_document(record)?;
        document.insert("name", projection.as_str());
        document.insert("revision", to_i64(expected + 1, "revision")?);
        let what = || format!("storing the {projection} catalogue record");
        if expected == 0 {
            // Created only if absent: an upsert that sets fields on insert alone (correct for
            // sequential writers even where the unique index is not enforced).
            let created = self
                .catalogue
                .update_one(doc! {"name": projection.as_str()}, doc! {"$setOnInsert": document})
                .upsert(true)
                .await;
            return match created {
                Ok(result) => Ok(result.upserted_id.is_some()),
                Err(e) if is_duplicate_key(&e) => Ok(false),
                Err(e) => Err(anyhow::Error::new(e).context(what()).into()),
            };
        }
        let filter = doc! {"name": projection.as_str(), "revision": to_i64(expected, "revision")?};
        let replaced = self.catalogue.replace_one(filter, document).await.with_context(what)?;
        Ok(replaced.matched_count == 1)
    }
}

#[async_trait]
impl GenerationStore for MongoGenerations {
    fn catalogue(&self) -> Arc<dyn ProjectionCatalogue> {
        Arc::new(self.clone())
    }

    async fn prepare(&self, projection: Projection, generation: u64) -> StoreResult<()> {
        // The unique key indexes: the conditional writes rely on them.
        crate::migrations::prepare_generation(&self.db, collections(projection), generation, true).await?;
        Ok(())
    }

    async fn complete(&self, projection: Projection, generation: u64) -> StoreResult<()> {
        crate::migrations::prepare_generation(&self.db, collections(projection), generation, false).await?;
        Ok(())
    }

    async fn drop_generation(&self, projection: Projection, generation: u64) -> StoreResult<()> {
        for collection in collections(projection) {
            let name = crate::generation_collection(collection, generation);
            self.db.collection::<Document>(&name).drop().await.with_context(|| format!("dropping {name}"))?;
        }
        Ok(())
    }

    fn rides(&self, generation: u64) -> Arc<dyn RideViews> {
        Arc::new(MongoRideViews::generation(&self.db, generation))
    }

    fn users(&self, generation: u64) -> Arc<dyn UserViews> {
        Arc::new(MongoUserViews::generation(&self.db, generation))
    }
}
