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
