use crate::error::StoreResult;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ridehail_events::Role;
use ridehail_events::UserId;
use ridehail_events::user::{PasswordHash, Vehicle};
use serde::{Deserialize, Serialize};

/// A user's profile, as shown to the user. Holds no credential.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct UserProfile {
    pub user_id: UserId,
    pub email: String,
    pub name: String,
    pub role: Role,
    pub vehicle: Option<Vehicle>,
    /// Drivers only: taking rides right now.
    pub online: bool,
    pub registered_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: u64,
}

/// What login needs, looked up by normalised e-mail. Never sent to a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Credentials {
    pub user_id: UserId,
    pub email_normalised: String,
    pub role: Role,
    pub password_hash: PasswordHash,
    pub version: u64,
}

/// The user read models: profiles and credentials.
#[async_trait]
pub trait UserViews: Send + Sync + std::fmt::Debug {
    /// Stores the profile unless the stored one is at the same or a newer version.
    async fn upsert_profile(&self, profile: &UserProfile) -> StoreResult<bool>;
    async fn profile(&self, user_id: UserId) -> StoreResult<Option<UserProfile>>;
    /// Stores the credentials unless the stored ones are at the same or a newer version.
    async fn upsert_credentials(&self, credentials: &Credentials) -> StoreResult<bool>;
    async fn credentials_by_email(&self, email_normalised: &str) -> StoreResult<Option<Credentials>>;
    /// Empties a cache in front of the store, if there is one (after a projection switch, cached
    /// documents may come from the old generation). Stores without a cache have nothing to do.
    async fn forget_cached(&self) -> StoreResult<()> {
        Ok(())
    }
    async fn ping(&self) -> StoreResult<()>;
}
