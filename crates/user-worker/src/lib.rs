//! user-worker: consumes user commands, decides with the pure user domain (and the e-mail claim that
//! keeps addresses unique), appends and publishes events, projects profiles and credentials, and
//! feeds the driver geo index.
//!
//! - [`domain`]: the pure core and the field rules shared with the edge.
//! - [`handler`]: the user and e-mail claim aggregates' facts and effects, run by the runtime's
//!   command executor.
//! - [`projection`]: profile and credentials read models.
//! - [`rebuild`]: the folds of live rebuilds (users; drivers in place).

pub mod domain;
pub mod handler;
pub mod projection;
pub mod rebuild;

use std::sync::Arc;

use ridehail_ports::Backend;
use ridehail_runtime::consumer::{self, ConsumerConfig};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

pub use handler::{UserAggregate, UserCommandHandler, command_handler};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UserWorkerConfig {
    /// Consumer group on the user command topic.
    pub group: String,
}

impl Default for UserWorkerConfig {
    fn default() -> Self {
        Self { group: "user-worker".into() }
    }
}

/// Consumes user commands until `shutdown`, finishing the records already handed to its partition
/// workers.
pub async fn run(backend: Backend, config: UserWorkerConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let handler = Arc::new(command_handler(backend.clone()));
    let consumer_config = ConsumerConfig::new(config.group, &[ridehail_events::topics::USER_COMMANDS]);
    use ridehail_runtime::rebuild::keep_current;
    let users = keep_current(backend.clone(), rebuild::UserFold::default(), shutdown.clone());
    let drivers = keep_current(backend.clone(), rebuild::DriverFold::default(), shutdown.clone());
    let consumer = consumer::run(backend.bus.clone(), handler, consumer_config, shutdown);
    tokio::try_join!(consumer, users, drivers)?;
    Ok(())
}
