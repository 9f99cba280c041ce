//! User read models folded from the user's stream: the profile (no credential), the credentials
//! used by login, and (for drivers) the geo index entry.

use ridehail_events::Role;
use ridehail_events::ids::normalise_email;
use ridehail_events::user::UserEvent;
use ridehail_events::{EventEnvelope, UserId};
use ridehail_ports::Backend;
use ridehail_ports::{Credentials, UserProfile};

use crate::domain::{UserState, evolve};

/// A user's stream folded: the aggregate's state and the user's read models. What the executor
/// keeps in the user aggregate's snapshots.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UserStream {
    pub state: Option<UserState>,
    pub profile: Option<UserProfile>,
    pub credentials: Option<Credentials>,
}

impl UserStream {
    /// The fold of a whole stream.
    pub fn of(events: &[EventEnvelope<UserEvent>]) -> Self {
        let mut stream = Self::default();
        for envelope in events {
            stream.apply(envelope);
        }
        stream
    }

    /// One more event.
    pub fn apply(&mut self, envelope: &EventEnvelope<UserEvent>) {
        self.credentials = apply_credentials(self.credentials.take(), self.profile.as_ref(), envelope);
        self.profile = apply_profile(self.profile.take(), envelope);
        self.state = evolve(self.state.take(), &envelope.event, envelope.occurred_at);
    }
}

/// Writes every read model of one user from the user's stream folded up to `version`; idempotent
/// (views only move forward). Used after each command and by replay. Returns whether the user exists.
pub async fn write_read_models(
    backend: &Backend,
    user_id: UserId,
    user: &UserStream,
    version: u64,
) -> ridehail_ports::StoreResult<bool> {
    let Some(profile) = &user.profile else { return Ok(false) };
    backend.users.upsert_profile(profile).await?;
    if let Some(credentials) = &user.credentials {
        backend.users.upsert_credentials(credentials).await?;
    }
    if profile.role == Role::Driver
        && let Some(s) = &user.state
    {
        backend.drivers.update_driver(user_id, s.fix(), s.online, version).await?;
    }
    Ok(true)
}

/// The version of this projection's code (profiles and credentials): raise it when what is folded
/// from the same events changes, and the deploy rebuilds the user views live (docs/projections.md).
pub const VERSION: u32 = 1;

/// The version of the drivers projection's code (positions and online flags in the geo index).
pub const DRIVERS_VERSION: u32 = 2;

pub fn project_profile(events: &[EventEnvelope<UserEvent>]) -> Option<UserProfile> {
    events.iter().fold(None, apply_profile)
}

/// The profile after one more event: `profile` is the fold of the stream's events before `envelope`.
pub fn apply_profile(profile: Option<UserProfile>, envelope: &EventEnvelope<UserEvent>) -> Option<UserProfile> {
    if let UserEvent::UserRegistered(e) = &envelope.event {
        return Some(UserProfile {
            user_id: UserId(envelope.aggregate_id),
            email: e.email.clone(),
            name: e.name.clone(),
            role: e.role,
            vehicle: e.vehicle.clone(),
            online: false,
            registered_at: envelope.occurred_at,
            updated_at: envelope.occurred_at,
            version: envelope.sequence,
        });
    }
    let mut p = profile?;
    p.updated_at = envelope.occurred_at;
    p.version = envelope.sequence;
    match &envelope.event {
        UserEvent::ProfileUpdated(e) => {
            if let Some(name) = &e.name {
                p.name = name.clone();
            }
            if let Some(vehicle) = &e.vehicle {
                p.vehicle = Some(vehicle.clone());
            }
        }
        UserEvent::DriverWentOnline(_) => p.online = true,
        UserEvent::DriverWentOffline(_) => p.online = false,
        UserEvent::UserRegistered(_) | UserEvent::PasswordSet(_) | UserEvent::DriverLocationUpdated(_) => {}
    }
    Some(p)
}

pub fn project_credentials(events: &[EventEnvelope<UserEvent>]) -> Option<Credentials> {
    let mut profile = None;
    let mut credentials = None;
    for envelope in events {
        credentials = apply_credentials(credentials, profile.as_ref(), envelope);
        profile = apply_profile(profile, envelope);
    }
    credentials
}

/// The credentials after one more event, given the profile as of the event before it (the
/// registration names the e-mail and the role).
pub fn apply_credentials(
    credentials: Option<Credentials>,
    profile: Option<&UserProfile>,
    envelope: &EventEnvelope<UserEvent>,
) -> Option<Credentials> {
    match (&envelope.event, profile) {
        (UserEvent::PasswordSet(e), Some(profile)) => Some(Credentials {
            user_id: UserId(envelope.aggregate_id),
            email_normalised: normalise_email(&profile.email),
            role: profile.role,
            password_hash: e.password_hash.clone(),
            version: envelope.sequence,
        }),
        _ => credentials,
    }
}
