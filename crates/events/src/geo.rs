//! Coordinates and the surge grid.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A WGS84 position in decimal degrees.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GeoPoint {
    /// Latitude, -90..=90.
    #[schemars(range(min = -90.0, max = 90.0))]
    pub lat: f64,
    /// Longitude, -180..=180.
    #[schemars(range(min = -180.0, max = 180.0))]
    pub lon: f64,
}

/// Why a coordinate pair is not a position on Earth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GeoError {
    #[error("latitude must be a number between -90 and 90")]
    Latitude,
    #[error("longitude must be a number between -180 and 180")]
    Longitude,
}

const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// Side of a surge grid cell in degrees (about 1.1 km of latitude).
pub const SURGE_CELL_DEGREES: f64 = 0.01;

impl GeoPoint {
    pub fn new(lat: f64, lon: f64) -> Result<Self, GeoError> {
        if !lat.is_finite() || !(-90.0..=90.0).contains(&lat) {
            return Err(GeoError::Latitude);
        }
        if !lon.is_finite() || !(-180.0..=180.0).contains(&lon) {
            return Err(GeoError::Longitude);
        }
        Ok(Self { lat, lon })
    }

    /// Checks a value that came from outside (deserialised without going through [`GeoPoint::new`]).
    pub fn validate(&self) -> Result<(), GeoError> {
        Self::new(self.lat, self.lon).map(|_| ())
    }

    /// Great-circle distance in metres (haversine).
    pub fn distance_m(&self, other: &GeoPoint) -> f64 {
        let (lat1, lat2) = (self.lat.to_radians(), other.lat.to_radians());
        let dlat = lat2 - lat1;
        let dlon = (other.lon - self.lon).to_radians();
        let a = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlon / 2.0).sin().powi(2);
        2.0 * EARTH_RADIUS_M * a.sqrt().asin()
    }

    /// The surge grid cell that holds this point, as `"<row>:<col>"`.
    pub fn cell(&self) -> String {
        let row = (self.lat / SURGE_CELL_DEGREES).floor() as i64;
        let col = (self.lon / SURGE_CELL_DEGREES).floor() as i64;
        format!("{row}:{col}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_out_of_range_and_non_finite_coordinates() {
        assert_eq!(GeoPoint::new(90.5, 0.0), Err(GeoError::Latitude));
        assert_eq!(GeoPoint::new(f64::NAN, 0.0), Err(GeoError::Latitude));
        assert_eq!(GeoPoint::new(0.0, -180.01), Err(GeoError::Longitude));
        assert!(GeoPoint::new(-90.0, 180.0).is_ok());
    }

    #[test]
    fn distance_matches_a_known_pair_of_points() {
        // Lisbon (Praça do Comércio) to Porto (Avenida dos Aliados): about 274 km.
        let lisbon = GeoPoint::new(38.7075, -9.1364).unwrap();
        let porto = GeoPoint::new(41.1486, -8.6110).unwrap();
        let d = lisbon.distance_m(&porto);
        assert!((270_000.0..278_000.0).contains(&d), "distance was {d}");
        assert_eq!(lisbon.distance_m(&lisbon), 0.0);
    }

    #[test]
    fn nearby_points_share_a_cell_and_distant_ones_do_not() {
        let a = GeoPoint::new(38.7101, -9.1401).unwrap();
        let b = GeoPoint::new(38.7102, -9.1402).unwrap();
        let c = GeoPoint::new(38.7301, -9.1401).unwrap();
        assert_eq!(a.cell(), b.cell());
        assert_ne!(a.cell(), c.cell());
    }
}
