//! The user aggregate's commands and events (riders and drivers), and the e-mail claim stream that
//! keeps addresses unique.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::envelope::{AggregateType, message_enum};
use crate::geo::GeoPoint;
use crate::ids::{Role, UserId};

/// A driver's car.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Vehicle {
    #[schemars(length(min = 1, max = 50))]
    pub make: String,
    #[schemars(length(min = 1, max = 50))]
    pub model: String,
    #[schemars(length(min = 1, max = 30))]
    pub colour: String,
    #[schemars(length(min = 1, max = 15))]
    pub plate: String,
}

/// An argon2id PHC string. Never logged: its `Debug` is redacted.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct PasswordHash(pub String);

impl std::fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordHash(<redacted>)")
    }
}

// ---------------------------------------------------------------- commands

/// Sign up as a rider or a driver. The edge hashes the password before this command exists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterUser {
    pub email: String,
    pub name: String,
    pub role: Role,
    pub password_hash: PasswordHash,
    /// Required for drivers, absent for riders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vehicle: Option<Vehicle>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProfile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vehicle: Option<Vehicle>,
}

/// A driver starts or stops taking rides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetAvailability {
    pub online: bool,
    /// Where the driver is when going online (optional: the last known location is kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<GeoPoint>,
}

/// A driver's new position, as a command. No longer sent: location pings are telemetry that the edge
/// writes to the driver geo index (docs/locations.md). Still handled, for records already on the topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateLocation {
    pub location: GeoPoint,
}

message_enum! {
    /// Everything that can be asked of a user.
    pub enum UserCommand: AggregateType::User {
        RegisterUser(RegisterUser) = v 1;
        UpdateProfile(UpdateProfile) = v 1;
        SetAvailability(SetAvailability) = v 1;
        UpdateLocation(UpdateLocation) = v 1;
    }
}

// ---------------------------------------------------------------- events

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserRegistered {
    pub email: String,
    pub name: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vehicle: Option<Vehicle>,
}

/// Internal: the credential, kept in the event store for rebuilding the credentials read model and
/// never published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordSet {
    pub password_hash: PasswordHash,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileUpdated {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vehicle: Option<Vehicle>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DriverWentOnline {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<GeoPoint>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DriverWentOffline {}

/// An online driver's position as the stream knows it: given again with an availability change, or
/// (in history written before location pings left the stream) from an `UpdateLocation` command. Pings
/// are not events: they go to the driver geo index only (docs/locations.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DriverLocationUpdated {
    pub location: GeoPoint,
}

message_enum! {
    /// Everything that can happen to a user.
    pub enum UserEvent: AggregateType::User {
        UserRegistered(UserRegistered) = v 1;
        PasswordSet(PasswordSet) = v 1, internal!;
        ProfileUpdated(ProfileUpdated) = v 1;
        DriverWentOnline(DriverWentOnline) = v 1;
        DriverWentOffline(DriverWentOffline) = v 1;
        DriverLocationUpdated(DriverLocationUpdated) = v 1;
    }
}

/// The e-mail address (by its claim stream id) now belongs to `user_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailClaimed {
    pub user_id: UserId,
}

message_enum! {
    /// The e-mail uniqueness stream (internal, never published).
    pub enum EmailClaimEvent: AggregateType::EmailClaim {
        EmailClaimed(EmailClaimed) = v 1, internal!;
    }
}
