//! The ride aggregate's pure core: no I/O, no clock. `now` and the outside facts (surge, the driver
//! picked from the geo index) come in as arguments.
//!
//! - [`fare`]: pricing policy, surge multiplier and fare computation in integer minor units.
//! - [`matching`]: the search policy (radius steps, offer timeout, retry interval).
//! - [`ride`]: the state, `decide` and `evolve`.

pub mod fare;
pub mod matching;
pub mod ride;

#[cfg(test)]
mod tests;

pub use fare::PricingPolicy;
pub use matching::{DriverCandidate, MatchingPolicy, Search};
pub use ride::{Facts, RideRejection, RideState, decide, evolve, search_for, state_of};
