//! The user read models: `profiles` (one document per user) and `credentials` (one per normalised
//! e-mail, which stays with the user who first holds it), in the JSON shapes of the port types.

use anyhow::Context;
use async_trait::async_trait;
use mongodb::bson::Document;
use mongodb::{Collection, Database};
use ridehail_events::UserId;
use ridehail_ports::StoreResult;
use ridehail_ports::{Credentials, UserProfile, UserViews};

use crate::codec::{from_document, to_document};
use crate::versioned::{VersionedWrite, key};

pub(crate) const PROFILES: &str = "profiles";
pub(crate) const CREDENTIALS: &str = "credentials";

/// [`UserViews`] on MongoDB. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MongoUserViews {
    db: Database,
    profiles: Collection<Document>,
    credentials: Collection<Document>,
}

impl MongoUserViews {
    /// Generation 0 (`profiles`, `credentials`) on `db` as migrated by [`crate::migrations::up`]
    /// (the queries rely on its indexes).
    pub fn new(db: &Database) -> Self {
        Self::generation(db, 0)
    }

    /// One generation's collections (suffixed `_g<N>`, indexed by
    /// [`crate::migrations::prepare_generation`]).
    pub fn generation(db: &Database, generation: u64) -> Self {
        Self {
            db: db.clone(),
            profiles: db.collection(&crate::generation_collection(PROFILES, generation)),
            credentials: db.collection(&crate::generation_collection(CREDENTIALS, generation)),
        }
    }
}

#[async_trait]
impl UserViews for MongoUserViews {
    async fn upsert_profile(&self, profile: &UserProfile) -> StoreResult<bool> {
        Ok(VersionedWrite {
            collection: &self.profiles,
            key: key("user_id", profile.user_id),
            label: format!("user_id={}", profile.user_id),
            owner: Document::new(),
            version: profile.version,
            document: to_document(profile)?,
        }
        .apply()
        .await?)
    }

    async fn profile(&self, user_id: UserId) -> StoreResult<Option<UserProfile>> {
        let found = self
            .profiles
            .find_one(key("user_id", user_id))
            .await
            .with_context(|| format!("reading profile {user_id}"))?;
        found.map(|doc| from_document(doc, &[], PROFILES, &format!("user_id={user_id}"))).transpose()
    }

    async fn upsert_credentials(&self, credentials: &Credentials) -> StoreResult<bool> {
        // The owner condition keeps an e-mail with its user: another user's credentials for the same
        // address never replace them, whatever their version.
        Ok(VersionedWrite {
            collection: &self.credentials,
            key: key("email_normalised", &credentials.email_normalised),
            label: format!("of user_id={}", credentials.user_id),
            owner: key("user_id", credentials.user_id),
            version: credentials.version,
            document: to_document(credentials)?,
        }
        .apply()
        .await?)
    }

    async fn credentials_by_email(&self, email_normalised: &str) -> StoreResult<Option<Credentials>> {
        // Errors name the credentials by user, never by e-mail (personal data).
        let found = self
            .credentials
            .find_one(key("email_normalised", email_normalised))
            .await
            .context("reading credentials")?;
        found
            .map(|doc| {
                let user = doc.get_str("user_id").unwrap_or("(unknown)").to_owned();
                from_document(doc, &[], CREDENTIALS, &format!("of user_id={user}"))
            })
            .transpose()
    }

    async fn ping(&self) -> StoreResult<()> {
        crate::ping(&self.db).await
    }
}
