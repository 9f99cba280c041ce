//! Versioned schema changes, recorded in the `migrations` collection (`version`, `name`, `applied_at`).
//!
//! Every index the adapters rely on is created here and nowhere else, with an explicit name, so what a
//! database holds is exactly what `status` says. Each migration is a list of [`Change`]s: `up` applies
//! them in order, `down` undoes them in reverse. Undoing never drops a collection: the data stays, only
//! the indexes go.
//!
//! Running `up` from several processes at once is safe: creating an index that exists with the same
//! definition does nothing, and the unique index on `migrations.version` keeps one record per version.
//! A migration is recorded after its changes, so one interrupted half-way is re-run in full next time.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::bson::{DateTime as BsonDateTime, Document, doc};
use mongodb::error::ErrorKind;
use mongodb::options::IndexOptions;
use mongodb::{Database, IndexModel};

use crate::codec::{get_u64, is_duplicate_key};
use crate::event_store::{COUNTERS, EVENTS, SNAPSHOTS};
use crate::projections::PROJECTIONS;
use crate::rides::RIDES;
use crate::timers::TIMERS;
use crate::users::{CREDENTIALS, PROFILES};

/// Where applied migrations are recorded.
pub const MIGRATIONS: &str = "migrations";

/// Server errors for "no such index" and "no such collection", both fine when undoing. Matched by name
/// too: CongoDB reports `IndexNotFound` with another code.
const INDEX_NOT_FOUND: (i32, &str) = (27, "IndexNotFound");
const NAMESPACE_NOT_FOUND: (i32, &str) = (26, "NamespaceNotFound");

/// One reversible schema change.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Creates an index on `up`, drops it on `down`.
    CreateIndex { collection: &'static str, name: &'static str, keys: Document, unique: bool },
}

/// A numbered set of changes, applied together.
#[derive(Debug, Clone, PartialEq)]
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub changes: Vec<Change>,
}

/// A migration applied or undone by [`up`] or [`down`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigrationId {
    pub version: u32,
    pub name: &'static str,
}

/// A migration and whether (and since when) the database has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationStatus {
    pub version: u32,
    pub name: String,
    /// `None`: pending.
    pub applied_at: Option<DateTime<Utc>>,
    /// Recorded in the database but not defined in this build (applied by a newer one).
    pub unknown: bool,
}

fn index(collection: &'static str, name: &'static str, keys: Document, unique: bool) -> Change {
    Change::CreateIndex { collection, name, keys, unique }
}

/// Every migration, in version order.
pub fn all() -> Vec<Migration> {
    vec![
        Migration {
            version: 1,
            name: "event store",
            changes: vec![
                index(MIGRATIONS, "migrations_version", doc! {"version": 1}, true),
                // Detects concurrent appends to a stream, and serves `read_stream` and the version read.
                index(EVENTS, "events_stream_sequence", doc! {"aggregate_id": 1, "sequence": 1}, true),
                // Serves `read_all`; unique because each position is handed out once.
                index(EVENTS, "events_position", doc! {"position": 1}, true),
                index(COUNTERS, "counters_name", doc! {"name": 1}, true),
            ],
        },
        Migration {
            version: 2,
            name: "ride views",
            changes: vec![
                index(RIDES, "rides_ride_id", doc! {"ride_id": 1}, true),
                // A party's rides, newest first; the driver's list merges the two driver indexes.
                index(RIDES, "rides_rider_newest", doc! {"rider_id": 1, "ride_id": -1}, false),
                index(RIDES, "rides_driver_newest", doc! {"driver_id": 1, "ride_id": -1}, false),
                index(RIDES, "rides_offered_driver_newest", doc! {"offered_driver_id": 1, "ride_id": -1}, false),
                // Waiting rides per pickup cell (surge demand).
                index(RIDES, "rides_status_cell", doc! {"status": 1, "pickup_cell": 1}, false),
            ],
        },
        Migration {
            version: 3,
            name: "user views",
            changes: vec![
                index(PROFILES, "profiles_user_id", doc! {"user_id": 1}, true),
                index(CREDENTIALS, "credentials_email", doc! {"email_normalised": 1}, true),
            ],
        },
        Migration {
            version: 4,
            name: "timers",
            changes: vec![
                index(TIMERS, "timers_timer_id", doc! {"timer_id": 1}, true),
                // Due timers, earliest first, ties in id order.
                index(TIMERS, "timers_due", doc! {"due_us": 1, "timer_id": 1}, false),
            ],
        },
        Migration {
            version: 5,
            name: "projection catalogue",
            changes: vec![index(PROJECTIONS, "projections_name", doc! {"name": 1}, true)],
        },
        Migration {
            version: 6,
            name: "snapshots",
            changes: vec![index(SNAPSHOTS, "snapshots_stream", doc! {"stream": 1}, true)],
        },
    ]
}

/// Creates the indexes of one generation of a projection's collections: those the migrations give
/// generation 0, on `<collection>_g<N>`, named `<name>_g<N>`; the unique ones (`unique`) or the others.
/// Safe to repeat.
pub async fn prepare_generation(
    db: &Database,
    collections: &[&str],
    generation: u64,
    unique_ones: bool,
) -> anyhow::Result<()> {
    for migration in all() {
        for Change::CreateIndex { collection, name, keys, unique } in migration.changes {
            if !collections.contains(&collection) || unique != unique_ones {
                continue;
            }
            let model = IndexModel::builder()
                .keys(keys)
                .options(IndexOptions::builder().name(format!("{name}_g{generation}")).unique(unique).build())
                .build();
            let target = crate::generation_collection(collection, generation);
            db.collection::<Document>(&target)
                .create_index(model)
                .await
                .with_context(|| format!("creating index {name} on {target}"))?;
        }
    }
    Ok(())
}

fn is_command_error(error: &mongodb::error::Error, (code, name): (i32, &str)) -> bool {
    matches!(error.kind.as_ref(), ErrorKind::Command(e) if e.code == code || e.code_name == name)
}

impl Change {
    async fn apply(&self, db: &Database) -> anyhow::Result<()> {
        match self {
            Change::CreateIndex { collection, name, keys, unique } => {
                let model = IndexModel::builder()
                    .keys(keys.clone())
                    .options(IndexOptions::builder().name((*name).to_owned()).unique(*unique).build())
                    .build();
                db.collection::<Document>(collection)
                    .create_index(model)
                    .await
                    .with_context(|| format!("creating index {name} on {collection}"))?;
            }
        }
        Ok(())
    }

    async fn undo(&self, db: &Database) -> anyhow::Result<()> {
        match self {
            Change::CreateIndex { collection, name, .. } => {
                match db.collection::<Document>(collection).drop_index(*name).await {
                    Ok(()) => {}
                    Err(e) if is_command_error(&e, INDEX_NOT_FOUND) || is_command_error(&e, NAMESPACE_NOT_FOUND) => {}
                    Err(e) => return Err(e).with_context(|| format!("dropping index {name} on {collection}")),
                }
            }
        }
        Ok(())
    }
}

/// Applied versions and when, from the `migrations` collection.
async fn recorded(db: &Database) -> anyhow::Result<BTreeMap<u32, (String, DateTime<Utc>)>> {
    let docs: Vec<Document> = db
        .collection::<Document>(MIGRATIONS)
        .find(doc! {})
        .await
        .context("reading applied migrations")?
        .try_collect()
        .await
        .context("reading applied migrations")?;
    let mut applied = BTreeMap::new();
    for doc in docs {
        let parsed = (|| {
            let version = u32::try_from(get_u64(&doc, "version")?)?;
            let name = doc.get_str("name")?.to_owned();
            let at = DateTime::from_timestamp_millis(doc.get_datetime("applied_at")?.timestamp_millis())
                .context("applied_at out of range")?;
            anyhow::Ok((version, name, at))
        })();
        let (version, name, at) = parsed.with_context(|| format!("{MIGRATIONS} document {doc} does not decode"))?;
        applied.entry(version).or_insert((name, at));
    }
    Ok(applied)
}

/// Applies every pending migration in version order; returns what it applied (empty when up to date).
pub async fn up(db: &Database) -> anyhow::Result<Vec<MigrationId>> {
    let applied = recorded(db).await?;
    let mut done = Vec::new();
    for migration in all() {
        if applied.contains_key(&migration.version) {
            continue;
        }
        for change in &migration.changes {
            change.apply(db).await.with_context(|| format!("migration {} ({})", migration.version, migration.name))?;
        }
        let record =
            doc! {"version": i64::from(migration.version), "name": migration.name, "applied_at": BsonDateTime::now()};
        match db.collection::<Document>(MIGRATIONS).insert_one(record).await {
            Ok(_) => {}
            // Another process applied and recorded it at the same time.
            Err(e) if is_duplicate_key(&e) => continue,
            Err(e) => return Err(e).with_context(|| format!("recording migration {}", migration.version)),
        }
        tracing::info!(version = migration.version, name = migration.name, "applied MongoDB migration");
        done.push(MigrationId { version: migration.version, name: migration.name });
    }
    Ok(done)
}

/// Undoes the latest `steps` applied migrations, newest first; returns what it undid. Refuses to undo a
/// migration this build does not define.
pub async fn down(db: &Database, steps: usize) -> anyhow::Result<Vec<MigrationId>> {
    let applied = recorded(db).await?;
    let known = all();
    let mut done = Vec::new();
    for (&version, _) in applied.iter().rev().take(steps) {
        let Some(migration) = known.iter().find(|m| m.version == version) else {
            bail!("migration {version} was applied by a newer build: undo it with that build");
        };
        for change in migration.changes.iter().rev() {
            change.undo(db).await.with_context(|| format!("undoing migration {version} ({})", migration.name))?;
        }
        db.collection::<Document>(MIGRATIONS)
            .delete_many(doc! {"version": i64::from(version)})
            .await
            .with_context(|| format!("unrecording migration {version}"))?;
        tracing::info!(version, name = migration.name, "undid MongoDB migration");
        done.push(MigrationId { version, name: migration.name });
    }
    Ok(done)
}

/// Every migration this build defines, plus any recorded one it does not, in version order.
pub async fn status(db: &Database) -> anyhow::Result<Vec<MigrationStatus>> {
    let mut applied = recorded(db).await?;
    let mut out: Vec<MigrationStatus> = all()
        .into_iter()
        .map(|m| MigrationStatus {
            version: m.version,
            name: m.name.to_owned(),
            applied_at: applied.remove(&m.version).map(|(_, at)| at),
            unknown: false,
        })
        .collect();
    out.extend(applied.into_iter().map(|(version, (name, at))| MigrationStatus {
        version,
        name,
        applied_at: Some(at),
        unknown: true,
    }));
    out.sort_by_key(|m| m.version);
    Ok(out)
}

/// Versions this build defines that the database lacks.
pub async fn pending(db: &Database) -> anyhow::Result<Vec<MigrationId>> {
    let applied = recorded(db).await?;
    Ok(all()
        .into_iter()
        .filter(|m| !applied.contains_key(&m.version))
        .map(|m| MigrationId { version: m.version, name: m.name })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_increase_and_index_names_are_unique() {
        let migrations = all();
        assert!(migrations.windows(2).all(|w| w[0].version < w[1].version));
        let mut names: Vec<&str> = migrations
            .iter()
            .flat_map(|m| &m.changes)
            .map(|c| match c {
                Change::CreateIndex { name, .. } => *name,
            })
            .collect();
        let count = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), count);
    }
}
