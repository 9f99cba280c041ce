//! The ride aggregate's commands and events, and the value types they carry.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::envelope::{AggregateType, message_enum};
use crate::geo::GeoPoint;
use crate::ids::{RideId, UserId};

/// Where a ride is in its lifecycle, as shown to clients and stored in read models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RideStatus {
    /// Waiting for a driver (searching, or offered to one who has not answered yet).
    Requested,
    DriverAssigned,
    DriverArrived,
    InProgress,
    Completed,
    Cancelled,
    /// No driver was found.
    Expired,
}

impl RideStatus {
    pub const ALL: [RideStatus; 7] = [
        Self::Requested,
        Self::DriverAssigned,
        Self::DriverArrived,
        Self::InProgress,
        Self::Completed,
        Self::Cancelled,
        Self::Expired,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Requested => "requested",
            Self::DriverAssigned => "driver_assigned",
            Self::DriverArrived => "driver_arrived",
            Self::InProgress => "in_progress",
            Self::Completed => "completed",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == s)
    }

    /// Completed, cancelled or expired: nothing more happens to the ride except ratings.
    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::Completed | Self::Cancelled | Self::Expired)
    }
}

/// A price split into its parts, all in minor units of one currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Fare {
    /// ISO 4217 code.
    pub currency: String,
    pub base_minor: i64,
    pub distance_minor: i64,
    pub time_minor: i64,
    /// Surge multiplier in basis points: 10000 = 1.0x.
    pub surge_bps: u32,
    /// What the rider pays: max(minimum, base + distance + time) x surge, rounded half up.
    pub total_minor: i64,
    pub distance_meters: u32,
    pub duration_seconds: u32,
    /// The total, ready to show: `total_minor` with its currency and minor units (since schema
    /// version 2 of the events that carry a fare; upcast from version 1 when read).
    pub total: FareTotal,
}

/// What the rider pays, in a shape an app can format without a currency table: `amount_minor`
/// hundredths (or thousandths, or units: `minor_units` says) of `currency`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FareTotal {
    pub amount_minor: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// Decimal places of the minor unit (ISO 4217): 2 for EUR (1250 = 12.50), 0 for JPY, 3 for KWD.
    pub minor_units: u8,
}

impl FareTotal {
    pub fn new(amount_minor: i64, currency: &str) -> Self {
        Self { amount_minor, currency: currency.to_owned(), minor_units: crate::money::minor_units(currency) }
    }
}

impl Fare {
    /// A fare stored before `total` existed (schema version 1), given it from `total_minor` and
    /// `currency`; any other JSON is left as it is.
    pub fn upcast_v1(fare: &mut serde_json::Value) {
        let Some(object) = fare.as_object_mut() else { return };
        if object.contains_key("total") {
            return;
        }
        let (Some(amount), Some(currency)) =
            (object.get("total_minor").and_then(|v| v.as_i64()), object.get("currency").and_then(|v| v.as_str()))
        else {
            return;
        };
        let total = FareTotal::new(amount, currency);
        object.insert("total".into(), serde_json::to_value(total).unwrap_or_default());
    }

    /// Deserializes a fare of any schema version (for read models stored before version 2).
    pub fn deserialize_any_version<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut value = serde_json::Value::deserialize(deserializer)?;
        Self::upcast_v1(&mut value);
        serde_json::from_value(value).map_err(serde::de::Error::custom)
    }

    /// [`Fare::deserialize_any_version`] of an optional fare.
    pub fn deserialize_any_version_opt<'de, D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Self>, D::Error> {
        let value = Option::<serde_json::Value>::deserialize(deserializer)?;
        value.map(|v| Self::deserialize_any_version(v).map_err(serde::de::Error::custom)).transpose()
    }
}

/// Who cancelled a ride.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "party", rename_all = "snake_case", deny_unknown_fields)]
pub enum Canceller {
    Rider {
        rider_id: UserId,
    },
    Driver {
        driver_id: UserId,
    },
    /// Ridehail itself (operations).
    System,
}

/// Which side of a ride gives a rating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RatingParty {
    /// The rider rates the driver.
    Rider,
    /// The driver rates the rider.
    Driver,
}

// ---------------------------------------------------------------- commands

/// A rider asks for a ride from `pickup` to `dropoff`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestRide {
    pub rider_id: UserId,
    pub pickup: GeoPoint,
    pub dropoff: GeoPoint,
}

/// The offered driver takes the ride.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AcceptRide {
    pub driver_id: UserId,
}

/// The offered driver turns the ride down; the next nearest driver is offered it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeclineRide {
    pub driver_id: UserId,
}

/// The assigned driver is at the pickup point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ArriveAtPickup {
    pub driver_id: UserId,
}

/// The rider is on board.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRide {
    pub driver_id: UserId,
}

/// The rider was dropped off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteRide {
    pub driver_id: UserId,
    /// Distance actually driven, if the driver's app measured it; otherwise the straight-line
    /// distance from pickup to dropoff is charged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distance_meters: Option<u32>,
}

/// Rider, driver or Ridehail calls the ride off before it starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelRide {
    pub cancelled_by: Canceller,
    /// Free text, at most 200 characters.
    #[schemars(length(max = 200))]
    pub reason: String,
}

/// Rider or driver rates the other after completion, once each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateRide {
    pub by: RatingParty,
    pub rater_id: UserId,
    /// 1 to 5.
    #[schemars(range(min = 1, max = 5))]
    pub stars: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 500))]
    pub comment: Option<String>,
}

/// Timer: the offered driver did not answer in time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExpireOffer {
    pub driver_id: UserId,
    pub offer_number: u32,
}

/// Timer: search again for a driver with a wider radius.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryMatching {
    /// The search attempt this timer was scheduled for (0-based).
    pub attempt: u32,
}

message_enum! {
    /// Everything that can be asked of a ride.
    pub enum RideCommand: AggregateType::Ride {
        RequestRide(RequestRide) = v 1;
        AcceptRide(AcceptRide) = v 1;
        DeclineRide(DeclineRide) = v 1;
        ArriveAtPickup(ArriveAtPickup) = v 1;
        StartRide(StartRide) = v 1;
        CompleteRide(CompleteRide) = v 1;
        CancelRide(CancelRide) = v 1;
        RateRide(RateRide) = v 1;
        ExpireOffer(ExpireOffer) = v 1;
        RetryMatching(RetryMatching) = v 1;
    }
}

// ---------------------------------------------------------------- events

/// A ride was requested, with the fare estimate quoted to the rider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RideRequested {
    pub rider_id: UserId,
    pub pickup: GeoPoint,
    pub dropoff: GeoPoint,
    /// Surge grid cell of the pickup (`row:col`, 0.01 degree cells).
    pub pickup_cell: String,
    pub estimate: Fare,
}

/// The ride was offered to a driver, who must accept before `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DriverOffered {
    pub driver_id: UserId,
    /// Counts offers of this ride, from 1.
    pub offer_number: u32,
    pub distance_meters: u32,
    pub search_radius_meters: u32,
    pub expires_at: DateTime<Utc>,
}

/// The offered driver turned the ride down.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DriverDeclined {
    pub driver_id: UserId,
    pub offer_number: u32,
}

/// The offered driver did not answer in time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OfferExpired {
    pub driver_id: UserId,
    pub offer_number: u32,
}

/// No driver was available within the current radius; the search continues later, wider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchingRetryScheduled {
    /// The attempt that will run at `retry_at` (0-based).
    pub attempt: u32,
    pub search_radius_meters: u32,
    pub retry_at: DateTime<Utc>,
}

/// The driver accepted: the ride is theirs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DriverAssigned {
    pub driver_id: UserId,
    pub offer_number: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DriverArrived {
    pub driver_id: UserId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RideStarted {
    pub driver_id: UserId,
}

/// The ride ended at the dropoff; `fare` is what the rider is charged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RideCompleted {
    pub driver_id: UserId,
    pub fare: Fare,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RideCancelled {
    pub cancelled_by: Canceller,
    pub reason: String,
    /// The driver who was offered or assigned the ride when it was cancelled, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_driver_id: Option<UserId>,
}

/// Every driver within the widest radius was tried, or none was found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RideExpired {
    pub search_attempts: u32,
    pub offers_made: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RideRated {
    pub by: RatingParty,
    pub rater_id: UserId,
    pub stars: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

message_enum! {
    /// Everything that can happen to a ride.
    pub enum RideEvent: AggregateType::Ride {
        RideRequested(RideRequested) = v 2;
        DriverOffered(DriverOffered) = v 1;
        DriverDeclined(DriverDeclined) = v 1;
        OfferExpired(OfferExpired) = v 1;
        MatchingRetryScheduled(MatchingRetryScheduled) = v 1;
        DriverAssigned(DriverAssigned) = v 1;
        DriverArrived(DriverArrived) = v 1;
        RideStarted(RideStarted) = v 1;
        RideCompleted(RideCompleted) = v 2;
        RideCancelled(RideCancelled) = v 1;
        RideExpired(RideExpired) = v 1;
        RideRated(RideRated) = v 1;
    }
}

// ---------------------------------------------------------------- the rider's slot (internal)

/// The rider has `ride_id` under way: no other ride of theirs is accepted until it ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ActiveRideClaimed {
    pub ride_id: RideId,
}

/// The rider's ride `ride_id` ended (completed, cancelled or expired): the slot is free.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ActiveRideReleased {
    pub ride_id: RideId,
}

message_enum! {
    /// One rider's slot: at most one ride under way at a time (internal, never published).
    pub enum RiderSlotEvent: AggregateType::RiderSlot {
        ActiveRideClaimed(ActiveRideClaimed) = v 1, internal!;
        ActiveRideReleased(ActiveRideReleased) = v 1, internal!;
    }
}
