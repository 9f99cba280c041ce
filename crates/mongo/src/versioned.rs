//! The projection write every read model uses: store a document only if it is newer than the stored one.
//!
//! The idiom is conditional update, then insert:
//! 1. `replaceOne({key, owner.., version: {$lt: v}}, doc)`: matched ⇒ the stored document was older (and
//!    had the same owner): replaced, keeping its `_id`.
//! 2. Otherwise look the key up: a document with the same or a newer version (or another owner) ⇒ not
//!    written; an older one ⇒ it appeared since step 1, start again.
//! 3. No document ⇒ `insertOne`. A duplicate-key error (a concurrent writer inserted it first, caught by
//!    the unique index on the key) ⇒ start again, which now goes through step 1 or 2.
//!
//! On MongoDB the unique index on the key makes this correct under concurrency; the usual one-shot
//! `replaceOne(.., upsert: true)` would be too, but it depends entirely on that index, whereas these
//! steps stay correct for sequential writers on a server without unique-index enforcement.

use anyhow::{Context, bail};
use mongodb::Collection;
use mongodb::bson::{Bson, Document, doc};

use crate::codec::{get_u64, is_duplicate_key, to_i64};

/// Rounds of the idiom before giving up; each extra round needs another writer to win a race on the
/// same key, so a handful is plenty.
const ATTEMPTS: usize = 8;

/// A read-model document to store unless the stored one is at least as new.
pub(crate) struct VersionedWrite<'a> {
    pub collection: &'a Collection<Document>,
    /// Identifies the document, e.g. `{ride_id: ".."}`; unique-indexed.
    pub key: Document,
    /// Names the document in errors, without personal data (e.g. `ride_id=..`).
    pub label: String,
    /// Fields the stored document must also have for the write to apply (e.g. the user an e-mail
    /// belongs to); empty for none.
    pub owner: Document,
    pub version: u64,
    /// The whole document, key, owner and `version` fields included.
    pub document: Document,
}

impl VersionedWrite<'_> {
    /// Returns whether it wrote.
    pub(crate) async fn apply(self) -> anyhow::Result<bool> {
        let name = format!("{} {}", self.collection.name(), self.label);
        let version = to_i64(self.version, "version")?;
        let mut filter = self.key.clone();
        filter.extend(self.owner.clone());
        filter.insert("version", doc! {"$lt": version});
        let mut projection = doc! {"_id": 0, "version": 1};
        projection.extend(self.owner.keys().map(|field| (field.clone(), Bson::Int32(1))));
        for _ in 0..ATTEMPTS {
            let updated = self
                .collection
                .replace_one(filter.clone(), self.document.clone())
                .await
                .with_context(|| format!("updating {name}"))?;
            if updated.matched_count > 0 {
                return Ok(true);
            }
            let stored = self
                .collection
                .find_one(self.key.clone())
                .projection(projection.clone())
                .await
                .with_context(|| format!("reading {name}"))?;
            if let Some(stored) = stored {
                let same_owner = self.owner.iter().all(|(field, value)| stored.get(field) == Some(value));
                let stored_version = get_u64(&stored, "version").with_context(|| format!("{name} is corrupt"))?;
                if same_owner && stored_version < self.version {
                    continue;
                }
                return Ok(false);
            }
            match self.collection.insert_one(self.document.clone()).await {
                Ok(_) => return Ok(true),
                Err(e) if is_duplicate_key(&e) => continue,
                Err(e) => return Err(e).with_context(|| format!("inserting {name}")),
            }
        }
        bail!("gave up writing {name} after {ATTEMPTS} rounds of concurrent writes")
    }
}

/// `{field: value}` for one string key.
pub(crate) fn key(field: &str, value: impl ToString) -> Document {
    let mut key = Document::new();
    key.insert(field, Bson::String(value.to_string()));
    key
}
