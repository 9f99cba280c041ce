//! The user worker's projections for a live rebuild ([`ridehail_runtime::rebuild`]): profiles and
//! credentials into a new generation ([`UserFold`]), and the drivers' positions and online flags in
//! the geo index, in place ([`DriverFold`]).

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use ridehail_events::ids::normalise_email;
use ridehail_events::user::UserEvent;
use ridehail_events::{AggregateType, EventEnvelope, Role, UserId, WireEvent};
use ridehail_ports::projections::Projection;
use ridehail_ports::{Backend, Credentials, UserProfile, UserViews};
use ridehail_runtime::rebuild::{Fold, HELD_STREAMS, Step, step};
use uuid::Uuid;

use crate::domain::{UserState, evolve};
use crate::projection::{DRIVERS_VERSION, VERSION, apply_credentials, apply_profile};

/// A user's stream, decoded (the folds of this module see user streams only).
async fn read_user_stream(backend: &Backend, id: Uuid) -> anyhow::Result<Vec<EventEnvelope<UserEvent>>> {
    let stream = backend.events.read_stream(id).await?;
    Ok(stream.into_iter().map(EventEnvelope::from_wire).collect::<Result<_, _>>()?)
}

/// The user events of a page, decoded lazily by the caller.
fn user_events(events: Vec<WireEvent>) -> impl Iterator<Item = WireEvent> {
    events.into_iter().filter(|e| e.aggregate_type == AggregateType::User)
}

/// A user's profile and credentials as folded so far.
#[derive(Debug, Clone)]
struct Folded {
    profile: UserProfile,
    credentials: Option<Credentials>,
}

/// Profiles and credentials.
#[derive(Debug, Default)]
pub struct UserFold {
    users: HashMap<Uuid, Folded>,
}

impl UserFold {
    async fn held(&mut self, target: &dyn UserViews, id: Uuid, sequence: u64) -> anyhow::Result<Option<u64>> {
        if !self.users.contains_key(&id)
            && sequence > 1
            && let Some(profile) = target.profile(UserId(id)).await?
        {
            let credentials = target.credentials_by_email(&normalise_email(&profile.email)).await?;
            let credentials = credentials.filter(|c| c.user_id == profile.user_id);
            self.users.insert(id, Folded { profile, credentials });
        }
        Ok(self.users.get(&id).map(|f| f.profile.version))
    }
}

#[async_trait]
impl Fold for UserFold {
    fn projection(&self) -> Projection {
        Projection::Users
    }

    fn code_version(&self) -> u32 {
        VERSION
    }

    async fn apply(&mut self, backend: &Backend, generation: u64, events: Vec<WireEvent>) -> anyhow::Result<u64> {
        let target = backend.projections.users(generation);
        let mut changed = HashSet::new();
        for wire in user_events(events) {
            let id = wire.aggregate_id;
            let held = self.held(&*target, id, wire.sequence).await?;
            let folded = match step(held, wire.sequence) {
                Step::Skip => continue,
                Step::Apply => {
                    let envelope = EventEnvelope::<UserEvent>::from_wire(wire)?;
                    let before = self.users.remove(&id);
                    let credentials = apply_credentials(
                        before.as_ref().and_then(|f| f.credentials.clone()),
                        before.as_ref().map(|f| &f.profile),
                        &envelope,
                    );
                    apply_profile(before.map(|f| f.profile), &envelope).map(|profile| Folded { profile, credentials })
                }
                Step::Refold => {
                    let stream = read_user_stream(backend, id).await?;
                    crate::projection::project_profile(&stream)
                        .map(|profile| Folded { profile, credentials: crate::projection::project_credentials(&stream) })
                }
            };
            if let Some(folded) = folded {
                self.users.insert(id, folded);
                changed.insert(id);
            }
        }
        let mut written = 0;
        for folded in changed.iter().filter_map(|id| self.users.get(id)) {
            written += u64::from(target.upsert_profile(&folded.profile).await?);
            if let Some(credentials) = &folded.credentials {
                written += u64::from(target.upsert_credentials(credentials).await?);
            }
        }
        if self.users.len() > HELD_STREAMS {
            self.users.clear();
        }
        Ok(written)
    }
}

/// Drivers' positions and online flags, corrected in place in the geo index: its writes only move
/// forward (by user-stream version), so a pass over the history never undoes a newer live write.
/// Holds are not this projection's: they are the ride worker's decisions (`ridehail replay` restores
/// those of rides under way).
#[derive(Debug, Default)]
pub struct DriverFold {
    users: HashMap<Uuid, (UserState, u64)>,
}

#[async_trait]
impl Fold for DriverFold {
    fn projection(&self) -> Projection {
        Projection::Drivers
    }

    fn code_version(&self) -> u32 {
        DRIVERS_VERSION
    }

    async fn apply(&mut self, backend: &Backend, _generation: u64, events: Vec<WireEvent>) -> anyhow::Result<u64> {
        let mut changed = HashSet::new();
        for wire in user_events(events) {
            let id = wire.aggregate_id;
            let held = self.users.get(&id).map(|(_, version)| *version);
            let folded = match step(held, wire.sequence) {
                Step::Skip => continue,
                Step::Apply => {
                    let envelope = EventEnvelope::<UserEvent>::from_wire(wire)?;
                    evolve(self.users.remove(&id).map(|(s, _)| s), &envelope.event, envelope.occurred_at)
                        .map(|state| (state, envelope.sequence))
                }
                // The geo index keeps no fold to resume from: a stream first met mid-way is read whole.
                Step::Refold => {
                    let stream = read_user_stream(backend, id).await?;
                    crate::domain::state_of(&stream).map(|state| (state, stream.len() as u64))
                }
            };
            if let Some(folded) = folded {
                self.users.insert(id, folded);
                changed.insert(id);
            }
        }
        let mut written = 0;
        for id in &changed {
            if let Some((state, version)) = self.users.get(id).filter(|(s, _)| s.role == Role::Driver) {
                backend.drivers.update_driver(UserId(*id), state.fix(), state.online, *version).await?;
                written += 1;
            }
        }
        if self.users.len() > HELD_STREAMS {
            self.users.clear();
        }
        Ok(written)
    }
}
