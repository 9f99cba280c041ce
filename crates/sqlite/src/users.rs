//! The embedded user read models: profiles and credentials (keyed by normalised e-mail).

use async_trait::async_trait;
use ridehail_events::UserId;
use rusqlite::{OptionalExtension, params};

use crate::sqlite::{Db, exec};
use ridehail_ports::{Credentials, UserProfile, UserViews};
use ridehail_ports::{StoreError, StoreResult};

/// One generation's tables (generation 0 is `profiles` and `credentials`, later ones suffixed `_g<N>`).
#[derive(Debug, Clone)]
struct Tables {
    profiles: String,
    credentials: String,
}

impl Tables {
    fn of(generation: u64) -> Self {
        let suffix = if generation == 0 { String::new() } else { format!("_g{generation}") };
        Self { profiles: format!("profiles{suffix}"), credentials: format!("credentials{suffix}") }
    }

    fn schema(&self) -> String {
        let Self { profiles, credentials } = self;
        format!(
            "CREATE TABLE IF NOT EXISTS {profiles} (user_id TEXT PRIMARY KEY, version INTEGER NOT NULL, body TEXT NOT NULL) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS {credentials} (
                 email TEXT PRIMARY KEY, user_id TEXT NOT NULL, version INTEGER NOT NULL, body TEXT NOT NULL
             ) WITHOUT ROWID;"
        )
    }
}

/// The tables of a generation, for dropping them.
pub(crate) fn tables(generation: u64) -> [String; 2] {
    let Tables { profiles, credentials } = Tables::of(generation);
    [profiles, credentials]
}

#[derive(Debug, Clone)]
pub struct EmbeddedUserViews {
    db: Db,
    tables: std::sync::Arc<Tables>,
}

impl EmbeddedUserViews {
    /// Generation 0 in `db`, created if missing.
    pub fn new(db: Db) -> anyhow::Result<Self> {
        let views = Self::generation(db, 0);
        views.prepare()?;
        Ok(views)
    }

    /// One generation's tables in `db` (see [`EmbeddedUserViews::prepare`]).
    pub fn generation(db: Db, generation: u64) -> Self {
        Self { db, tables: std::sync::Arc::new(Tables::of(generation)) }
    }

    /// Creates the tables unless they exist.
    pub fn prepare(&self) -> anyhow::Result<()> {
        self.db.migrate(&self.tables.schema())
    }
}

#[async_trait]
impl UserViews for EmbeddedUserViews {
    async fn upsert_profile(&self, profile: &UserProfile) -> StoreResult<bool> {
        let body = serde_json::to_string(profile)?;
        self.db.with(|conn| {
            Ok(exec(
                conn,
                &format!(
                    "INSERT INTO {t} (user_id, version, body) VALUES (?1, ?2, ?3)
                     ON CONFLICT (user_id) DO UPDATE SET version = excluded.version, body = excluded.body
                     WHERE excluded.version > {t}.version",
                    t = self.tables.profiles
                ),
                params![profile.user_id.to_string(), profile.version, body],
            )? > 0)
        })
    }

    async fn profile(&self, user_id: UserId) -> StoreResult<Option<UserProfile>> {
        let body: Option<String> = self.db.with(|conn| {
            Ok(conn
                .prepare_cached(&format!("SELECT body FROM {} WHERE user_id = ?1", self.tables.profiles))?
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
                &format!(
                    "INSERT INTO {t} (email, user_id, version, body) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (email) DO UPDATE SET user_id = excluded.user_id, version = excluded.version,
                        body = excluded.body
                     WHERE excluded.user_id = {t}.user_id AND excluded.version > {t}.version",
                    t = self.tables.credentials
                ),
                params![credentials.email_normalised, credentials.user_id.to_string(), credentials.version, body],
            )? > 0)
        })
    }

    async fn credentials_by_email(&self, email_normalised: &str) -> StoreResult<Option<Credentials>> {
        let body: Option<String> = self.db.with(|conn| {
            Ok(conn
                .prepare_cached(&format!("SELECT body FROM {} WHERE email = ?1", self.tables.credentials))?
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
