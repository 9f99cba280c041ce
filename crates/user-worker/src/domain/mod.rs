//! The user aggregate's pure core (riders and drivers) and the e-mail claim that keeps addresses
//! unique. No I/O; field rules shared with the edge live in `ridehail_events::validation`.

pub mod email_claim;
pub mod user;

pub use email_claim::{EmailTaken, decide_claim, evolve_claim};
pub use user::{UserRejection, UserState, decide, evolve, state_of};
