//! `ridehail replay`: rebuilds the read models from the event store, the source of truth.
//!
//! Reads the whole history in its global order, folds each stream, and writes every view with the
//! stream's version: ride views, profiles and credentials, driver positions and availability, and the
//! drivers held by rides that are offered or under way. Views only move forward, so replaying onto
//! existing views changes nothing; to recover from a damaged read model, stop Ridehail, delete its
//! file (`rides.sqlite`, `users.sqlite`, `drivers.sqlite`, with their `-wal`/`-shm`) and replay.

use std::collections::HashMap;

use ridehail_events::ride::RideEvent;
use ridehail_events::user::UserEvent;
use ridehail_events::{AggregateType, EventEnvelope, RideId, UserId, WireEvent};
use ridehail_ports::Backend;
use tracing::info;

use crate::progress::Meter;

/// Every stream of the history, in each stream's order, read with `meter` showing how far.
async fn load_streams(
    backend: &Backend,
    meter: &Meter,
) -> anyhow::Result<(HashMap<uuid::Uuid, Vec<WireEvent>>, usize)> {
    let mut streams: HashMap<uuid::Uuid, Vec<WireEvent>> = HashMap::new();
    let mut after: Option<String> = None;
    let mut total = 0usize;
    let head = backend.events.head().await?;
    loop {
        let page = backend.events.read_all(after.as_deref(), 1000).await?;
        let Some(next) = page.next else { break };
        total += page.events.len();
        for event in page.events {
            streams.entry(event.aggregate_id).or_default().push(event);
        }
        let position: u64 = next.parse()?;
        meter.set(position, head.max(position));
        after = Some(next);
    }
    meter.finish();
    Ok((streams, total))
}

/// What `replay` prints when done.
#[derive(Debug, serde::Serialize)]
struct Summary {
    events_read: usize,
    documents_written: usize,
    rides: usize,
    users: usize,
    duration_seconds: f64,
}

pub async fn run(backend: &Backend) -> anyhow::Result<()> {
    let meter = Meter::new("replay: reading the history");
    let (streams, total) = load_streams(backend, &meter).await?;
    let mut users = 0usize;
    // Users first: holds restored from rides need the drivers' rows.
    for (id, stream) in
        streams.iter().filter(|(_, s)| s.first().is_some_and(|e| e.aggregate_type == AggregateType::User))
    {
        let events = decode::<UserEvent>(stream.clone())?;
        let user = user_worker::projection::UserStream::of(&events);
        if user_worker::projection::write_read_models(backend, UserId(*id), &user, events.len() as u64).await? {
            users += 1;
        }
    }
    let mut rebuild = ride_worker::rebuild::RideRebuild::default();
    for stream in streams.values().filter(|s| s.first().is_some_and(|e| e.aggregate_type == AggregateType::Ride)) {
        rebuild.ride(backend, &decode::<RideEvent>(stream.clone())?).await?;
    }
    let rides = rebuild.rides;
    rebuild.restore_holds(backend, backend.clock.now()).await?;
    info!(events = total, rides, users, "replay finished");
    let duration_seconds = meter.elapsed().as_secs_f64();
    let summary = Summary { events_read: total, documents_written: rides + users, rides, users, duration_seconds };
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

fn decode<E: ridehail_events::Message>(stream: Vec<WireEvent>) -> anyhow::Result<Vec<EventEnvelope<E>>> {
    stream.into_iter().map(|w| EventEnvelope::from_wire(w).map_err(Into::into)).collect()
}

/// What `replay --verify` found.
#[derive(Debug, Default, serde::Serialize)]
pub struct Verification {
    pub events: usize,
    pub rides: usize,
    pub users: usize,
    /// Aggregates whose stored read model differs from the fold of their events (ids only).
    pub mismatches: Vec<String>,
}

/// Folds every stream and compares the result with the stored read models, changing nothing: the
/// check that the read models equal a replay of the history.
pub async fn verify(backend: &Backend) -> anyhow::Result<Verification> {
    let (streams, events) = load_streams(backend, &Meter::new("replay --verify: reading the history")).await?;
    let mut report = Verification { events, ..Verification::default() };
    for (id, stream) in &streams {
        let Some(first) = stream.first() else { continue };
        let matches = match first.aggregate_type {
            AggregateType::Ride => {
                report.rides += 1;
                let events = decode::<RideEvent>(stream.clone())?;
                ride_worker::projection::project(&events) == backend.rides.get(RideId(*id)).await?
            }
            AggregateType::User => {
                let events = decode::<UserEvent>(stream.clone())?;
                let Some(expected) = user_worker::projection::project_profile(&events) else { continue };
                report.users += 1;
                let credentials = user_worker::projection::project_credentials(&events);
                let stored = match &credentials {
                    Some(c) => backend.users.credentials_by_email(&c.email_normalised).await?,
                    None => None,
                };
                backend.users.profile(UserId(*id)).await? == Some(expected) && stored == credentials
            }
            _ => continue,
        };
        if !matches {
            report.mismatches.push(id.to_string());
        }
    }
    Ok(report)
}
