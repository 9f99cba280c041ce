//! One file per resource.

pub mod commands;
pub mod dead_letters;
pub mod drivers;
pub mod health;
pub mod rides;
pub mod sessions;
pub mod users;

use ridehail_events::GeoPoint;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// A position in a request body; range-checked before anything is published.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Position {
    /// Latitude in decimal degrees (WGS84).
    #[schemars(range(min = -90.0, max = 90.0))]
    pub lat: f64,
    /// Longitude in decimal degrees (WGS84).
    #[schemars(range(min = -180.0, max = 180.0))]
    pub lon: f64,
}

impl Position {
    pub fn check(&self, field: &str) -> Result<GeoPoint, ApiError> {
        GeoPoint::new(self.lat, self.lon).map_err(|e| ApiError::field(field, e.to_string()))
    }
}
