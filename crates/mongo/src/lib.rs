//! MongoDB adapters of the storage ports: the event store ([`MongoEventStore`]), the ride and user read
//! models ([`MongoRideViews`], [`MongoUserViews`]), durable timers ([`MongoTimers`]), and the schema
//! [`migrations`] that create every index they rely on.
//!
//! - [`settings`](MongoSettings) and [`connect`]: one pooled client per process.
//! - [`open`]: connect, optionally migrate, and build every adapter ([`Stores`]).
//! - `codec`: stored documents have the JSON shape of the port types (see below).
//! - `versioned`: the "only if newer" write of every read model.
//!
//! # Schema
//! Every document has an ObjectId `_id` (generated) and is found by its own key fields, which have unique
//! indexes. Ids are hyphenated UUID strings (UUIDv7 strings sort by creation time, which the ride lists
//! page on); times are exact RFC 3339 strings; integers are BSON ints; payloads are BSON documents.
//!
//! - `events`: the [`WireEvent`](ridehail_events::WireEvent) fields, plus `position` (int64, the global
//!   order) and `occurred_at_date` (a BSON date, for people querying). Indexes `events_stream_sequence`
//!   (aggregate_id, sequence; unique) and `events_position` (position; unique).
//! - `counters`: `name`, `value` (the last position handed out). Index `counters_name` (unique).
//! - `rides`: the [`RideView`](ridehail_ports::RideView) fields. Indexes `rides_ride_id`
//!   (unique); `rides_rider_newest`, `rides_driver_newest`, `rides_offered_driver_newest` (the party's
//!   id, then ride_id descending); `rides_status_cell` (status, pickup_cell).
//! - `profiles`: the [`UserProfile`](ridehail_ports::UserProfile) fields. Index
//!   `profiles_user_id` (unique).
//! - `credentials`: the [`Credentials`](ridehail_ports::Credentials) fields. Index
//!   `credentials_email` (email_normalised; unique).
//! - `timers`: `timer_id`, `due_us` (int64 microseconds, rounded up), `due_at` (exact), `topic`, `key`,
//!   `headers` (`[{name, value}]`), `payload` (binary). Indexes `timers_timer_id` (unique) and
//!   `timers_due` (due_us, timer_id).
//! - `migrations`: `version`, `name`, `applied_at` (a BSON date). Index `migrations_version` (unique).
//! - `projections`: the [`ProjectionRecord`](ridehail_ports::projections::ProjectionRecord) fields plus
//!   `name` and `revision` (compare-and-swap). Index `projections_name` (unique).
//! - `rides_g<N>`, `profiles_g<N>`, `credentials_g<N>`: generation N of a rebuilt projection, with
//!   generation 0's indexes suffixed `_g<N>` (docs/projections.md).
//!
//! **Why a position counter.** `read_all` must give one deterministic order that respects every
//! stream's sequence, across processes. ObjectIds and timestamps come from each client's clock and
//! can disagree between processes; a counter document incremented atomically by each append
//! (`findOneAndUpdate $inc` by the batch length) gives positions that grow with the order in which
//! appends happen. The details and the one caveat (a reader at the very head) are in
//! [`event_store`](MongoEventStore).
//!
//! **Only newer writes.** Read-model writes carry the version of the last event applied; a write whose
//! version is not newer than the stored document changes nothing. The writes are a conditional
//! `replaceOne`, then a lookup, then an `insertOne`, retried when a concurrent writer wins a race (see
//! `versioned.rs`): correct under concurrency thanks to the unique key indexes, and still correct for
//! sequential writers where those indexes are not enforced.
//!
//! **Test servers.** The contract tests also run against CongoDB (an in-memory server speaking the
//! MongoDB protocol), which lacks unique-index enforcement (and accepts duplicate `_id`s), string
//! `_id`s, transactions and change streams. The schema needs none but the first, and only for
//! concurrent writers: the tests that need it check the server first and report themselves SKIPPED
//! where it is missing. Transactions are used where the server runs them (a replica set: multi-event
//! appends are all-or-nothing, see [`event_store`](MongoEventStore)); the hosted CI runs the
//! transactional cases on a real replica set.

mod codec;
mod event_store;
pub mod migrations;
mod projections;
mod rides;
mod settings;
mod timers;
mod users;
mod versioned;

use std::sync::Arc;

use anyhow::Context;
use mongodb::Database;
use mongodb::bson::doc;
use ridehail_ports::{GenerationStore, VersionedRideViews, VersionedUserViews};

pub use event_store::{MongoEventStore, supports_transactions};
pub use projections::MongoGenerations;
pub use rides::MongoRideViews;
pub use settings::{MongoSettings, connect};
pub use timers::MongoTimers;
pub use users::MongoUserViews;

/// Every MongoDB adapter, on one database. Clone the `Arc`s into the runtime's `Backend`.
#[derive(Debug, Clone)]
pub struct Stores {
    pub database: Database,
    pub events: Arc<MongoEventStore>,
    /// The ride views of the generation the catalogue serves ([`VersionedRideViews`]).
    pub rides: Arc<VersionedRideViews>,
    pub users: Arc<VersionedUserViews>,
    pub timers: Arc<MongoTimers>,
    pub projections: Arc<MongoGenerations>,
}

impl Stores {
    /// The adapters on `db`, which must be migrated; the event store inserts multi-event batches in
    /// one transaction when `transactions`.
    pub fn new(db: &Database, transactions: bool) -> Self {
        let projections = Arc::new(MongoGenerations::new(db));
        let generations: Arc<dyn GenerationStore> = projections.clone();
        Self {
            database: db.clone(),
            events: Arc::new(MongoEventStore::with_transactions(db, transactions)),
            rides: Arc::new(VersionedRideViews::new(generations.clone())),
            users: Arc::new(VersionedUserViews::new(generations.clone())),
            timers: Arc::new(MongoTimers::new(db)),
            projections,
        }
    }
}

/// Connects, applies pending migrations when `migrate_on_start` is `Some(true)`, and checks that none is
/// left pending: the adapters rely on the migrations' indexes (unique ones for correctness), so running
/// without them is refused rather than discovered later. Needs a reachable server.
pub async fn open(settings: &MongoSettings) -> anyhow::Result<Stores> {
    let db = connect(settings).await?;
    if settings.migrate_on_start == Some(true) {
        migrations::up(&db).await.context("migrating MongoDB")?;
    }
    let pending = migrations::pending(&db).await.context("checking MongoDB migrations")?;
    if let Some(first) = pending.first() {
        anyhow::bail!(
            "MongoDB database {:?} lacks {} migration(s), from {} ({}): run the migrations first",
            settings.database,
            pending.len(),
            first.version,
            first.name
        );
    }
    let supported = supports_transactions(&db).await?;
    let transactions = match settings.transactions {
        None => supported,
        Some(true) => {
            anyhow::ensure!(
                supported,
                "mongodb.transactions = true, but the server runs none (a replica set or a mongos does)"
            );
            true
        }
        Some(false) => false,
    };
    tracing::info!(
        transactions,
        supported,
        "MongoDB event store: {}",
        if transactions { "multi-event appends are transactions" } else { "appends are ordered inserts" }
    );
    Ok(Stores::new(&db, transactions))
}

/// The collection of a projection's generation: `base` for generation 0, `<base>_g<N>` after.
pub(crate) fn generation_collection(base: &str, generation: u64) -> String {
    if generation == 0 { base.to_owned() } else { format!("{base}_g{generation}") }
}

/// Runs the server's `ping` command.
pub async fn ping(db: &Database) -> ridehail_ports::StoreResult<()> {
    db.run_command(doc! {"ping": 1}).await.context("MongoDB ping")?;
    Ok(())
}
