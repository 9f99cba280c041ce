//! The user aggregate's pure core (riders and drivers) and the e-mail claim that keeps addresses
//! unique. No I/O; validation rules shared with the edge live in [`validation`].

pub mod email_claim;
pub mod user;
pub mod validation;

pub use email_claim::{EmailTaken, decide_claim, evolve_claim};
pub use user::{UserRejection, UserState, decide, evolve};
