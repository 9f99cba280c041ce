//! The embedded user read models: profiles and credentials (keyed by normalised e-mail).

use async_trait::async_trait;
use ridehail_events::UserId;
use rusqlite::{OptionalExtension, params};

use crate::sqlite::{Db, exec};
use ridehail_ports::{Credentials, UserProfile, UserViews};
use ridehail_ports::{StoreError, StoreResult};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS profiles (user_id TEXT PRIMARY KEY, version INTEGER NOT NULL, body TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS credentials (
    email TEXT PRIMARY KEY, user_id TEXT NOT NULL, version INTEGER NOT NULL, body TEXT NOT NULL
) WITHOUT ROWID;
";

#[derive(Debug, Clone)]
pub struct EmbeddedUserViews {
    db: Db,
}

impl EmbeddedUserViews {
    pub fn new(db: Db) -> anyhow::Result<Self> {
        db.migrate(SCHEMA)?;
        Ok(Self { db })
    }
}

#[async_trait]
impl UserViews for EmbeddedUserViews {
    async fn upsert_profile(&self, profile: &UserProfile) -> StoreResult<bool> {
        let body = serde_json::to_string(profile)?;
        self.db.with(|conn| {
            Ok(exec(
                conn,
                "INSERT INTO profiles (user_id, version, body) VALUES (?1, ?2, ?3)
                 ON CONFLICT (user_id) DO UPDATE SET version = excluded.version, body = excluded.body
                 WHERE excluded.version > profiles.version",
                params![profile.user_id.to_string(), profile.version, body],
            )? > 0)
        })
    }

    async fn profile(&self, user_id: UserId) -> StoreResult<Option<UserProfile>> {
        let body: Option<String> = self.db.with(|conn| {
            Ok(conn
                .prepare_cached("SELECT body FROM profiles WHERE user_id = ?1")?
                .query_row(params![user_id.to_string()], |r| r.get(0))
                .optional()?)
        })?;
        body.map(|b| {
            serde_json::from_str(&b).map_err(|e| StoreError::corrupt(format!("stored profile does not decode: {e}")))
        })
        .transpose()
    }

    async fn upsert_credentials(&self, credentials: &Credentials) -> StoreResult<bool> {
        let body = serde_json::to_string(credentials)?;
        self.db.with(|conn| {
            Ok(exec(
                conn,
                "INSERT INTO credentials (email, user_id, version, body) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (email) DO UPDATE SET user_id = excluded.user_id, version = excluded.version,
                    body = excluded.body
                 WHERE excluded.user_id = credentials.user_id AND excluded.version > credentials.version",
                params![credentials.email_normalised, credentials.user_id.to_string(), credentials.version, body],
            )? > 0)
        })
    }

    async fn credentials_by_email(&self, email_normalised: &str) -> StoreResult<Option<Credentials>> {
        let body: Option<String> = self.db.with(|conn| {
            Ok(conn
                .prepare_cached("SELECT body FROM credentials WHERE email = ?1")?
                .query_row(params![email_normalised], |r| r.get(0))
                .optional()?)
        })?;
        body.map(|b| {
            serde_json::from_str(&b).map_err(|e| StoreError::corrupt(format!("stored credentials do not decode: {e}")))
        })
        .transpose()
    }

    async fn ping(&self) -> StoreResult<()> {
        self.db.ping()
    }
}
