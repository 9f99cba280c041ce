//! Money in integer minor units (cents), never floats.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// An amount in the currency's minor unit (e.g. cents) with its ISO 4217 code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Money {
    /// Amount in minor units (e.g. 1250 = 12.50).
    pub amount_minor: i64,
    /// ISO 4217 currency code, e.g. "EUR".
    #[schemars(length(min = 3, max = 3))]
    pub currency: String,
}

impl Money {
    pub fn new(amount_minor: i64, currency: impl Into<String>) -> Self {
        Self { amount_minor, currency: currency.into() }
    }
}

/// How many decimal places the currency's minor unit has (ISO 4217: EUR 2, JPY 0, KWD 3); 2 for a
/// code ISO 4217 does not know.
pub fn minor_units(currency: &str) -> u8 {
    iso_currency::Currency::from_code(currency).and_then(|c| c.exponent()).map_or(2, |e| e as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minor_units_follow_iso_4217() {
        assert_eq!((minor_units("EUR"), minor_units("JPY"), minor_units("KWD")), (2, 0, 3));
        assert_eq!(minor_units("XXZ"), 2, "unknown codes default to cents");
    }
}
