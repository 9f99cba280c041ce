//! `ridehail replay`: rebuilds the read models from the event store, the source of truth.
//!
//! Reads the whole history in its global order, folds each stream, and writes every view with the
//! stream's version. Views only move forward, so replaying onto existing views changes nothing;
//! to recover from a damaged read model, delete its file (`rides.sqlite`, `views.sqlite`,
//! `drivers.sqlite`) and replay.

use std::collections::HashMap;

use ridehail_events::ride::RideEvent;
use ridehail_events::user::{Role, UserEvent};
use ridehail_events::{AggregateType, EventEnvelope, UserId, WireEvent};
use ridehail_runtime::Backend;
use tracing::info;

pub async fn run(backend: &Backend) -> anyhow::Result<()> {
    let mut streams: HashMap<uuid::Uuid, Vec<WireEvent>> = HashMap::new();
    let mut after: Option<String> = None;
    let mut total = 0usize;
    loop {
        let page = backend.events.read_all(after.as_deref(), 1000).await?;
        if page.events.is_empty() {
            break;
        }
        total += page.events.len();
        for event in page.events {
            streams.entry(event.aggregate_id).or_default().push(event);
        }
        after = page.next;
    }
    let (mut rides, mut users) = (0usize, 0usize);
    for (id, stream) in streams {
        match stream.first().map(|e| e.aggregate_type) {
            Some(AggregateType::Ride) => {
                let events = decode::<RideEvent>(stream)?;
                if let Some(view) = ride_worker::projection::project(&events) {
                    backend.rides.upsert(&view).await?;
                    rides += 1;
                }
            }
            Some(AggregateType::User) => {
                let events = decode::<UserEvent>(stream)?;
                if let Some(profile) = user_worker::projection::project_profile(&events) {
                    if profile.role == Role::Driver {
                        let state = events.iter().fold(None, |s, e| user_worker::domain::evolve(s, &e.event));
                        if let Some(s) = state {
                            backend
                                .drivers
                                .update_driver(UserId(id), s.location, s.online, events.len() as u64)
                                .await?;
                        }
                    }
                    backend.users.upsert_profile(&profile).await?;
                    users += 1;
                }
                if let Some(credentials) = user_worker::projection::project_credentials(&events) {
                    backend.users.upsert_credentials(&credentials).await?;
                }
            }
            _ => {}
        }
    }
    info!(events = total, rides, users, "replay finished");
    Ok(())
}

fn decode<E: ridehail_events::Message>(stream: Vec<WireEvent>) -> anyhow::Result<Vec<EventEnvelope<E>>> {
    stream.into_iter().map(|w| EventEnvelope::from_wire(w).map_err(Into::into)).collect()
}
