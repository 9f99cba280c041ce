//! Typed identifiers. All are UUIDs; the ones minted by Ridehail are UUIDv7 so they sort by creation
//! time, which the read models use as a stable pagination key.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
        )]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new, time-ordered (v7) identifier.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }

        impl From<Uuid> for $name {
            fn from(value: Uuid) -> Self {
                Self(value)
            }
        }
    };
}

id_type!(
    /// A ride (the ride aggregate's id).
    RideId
);
id_type!(
    /// A rider or a driver (the user aggregate's id).
    UserId
);
id_type!(
    /// One command submission; events it caused carry it as their causation id.
    CommandId
);
id_type!(
    /// Ties together everything caused by one client request, across services.
    CorrelationId
);
id_type!(
    /// One event.
    EventId
);

/// The namespace for name-based ids derived from normalised e-mail addresses, so that the e-mail
/// uniqueness stream has an id that is stable but is not the address itself.
pub const EMAIL_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2b9e_4a7d_4c3e_9b51_7e0d_2f44_a1c3);

/// The id of the stream that records which user holds an e-mail address. The address is compared
/// case-insensitively and with surrounding whitespace removed.
pub fn email_claim_id(email: &str) -> Uuid {
    Uuid::new_v5(&EMAIL_NAMESPACE, normalise_email(email).as_bytes())
}

pub use crate::validation::normalise_email;

/// Namespace of the rider-slot stream ids (UUIDv5 of the rider's id).
pub const RIDER_SLOT_NAMESPACE: Uuid = Uuid::from_u128(0x0b7e_93a4_51c6_4f08_a2d9_6c15_e8f3_7d20);

/// The id of the stream that records which ride, if any, a rider has under way (at most one).
pub fn rider_slot_id(rider_id: UserId) -> Uuid {
    Uuid::new_v5(&RIDER_SLOT_NAMESPACE, rider_id.0.as_bytes())
}

/// What a user is on the platform: the role in their token and on their commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Rider,
    Driver,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Rider => "rider",
            Self::Driver => "driver",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_claim_id_ignores_case_and_surrounding_space() {
        assert_eq!(email_claim_id(" Ana@Example.COM "), email_claim_id("ana@example.com"));
        assert_ne!(email_claim_id("ana@example.com"), email_claim_id("ana2@example.com"));
    }

    #[test]
    fn new_ids_sort_by_creation_time() {
        let first = RideId::new();
        let second = RideId::new();
        assert!(first < second);
    }
}
