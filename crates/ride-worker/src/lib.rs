//! ride-worker: consumes ride commands, decides with the pure ride domain, appends and publishes the
//! events, projects the ride read model and schedules the ride's timers.

pub mod domain;
