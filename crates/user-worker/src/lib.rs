//! user-worker: consumes user commands, decides with the pure user domain (and the e-mail claim),
//! appends and publishes events, projects profiles and credentials, and feeds the driver geo index.

pub mod domain;
