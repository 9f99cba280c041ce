//! User read models folded from the user's whole stream: the profile (no credential), the
//! credentials used by login, and (for drivers) the geo index entry.

use ridehail_events::Role;
use ridehail_events::ids::normalise_email;
use ridehail_events::user::UserEvent;
use ridehail_events::{EventEnvelope, UserId};
use ridehail_ports::Backend;
use ridehail_ports::{Credentials, UserProfile};

/// Writes every read model of one user from the user's whole stream; idempotent (views only move
/// forward). Used after each command and by replay. Returns whether the user exists.
pub async fn write_read_models(
    backend: &Backend,
    user_id: UserId,
    stream: &[EventEnvelope<UserEvent>],
) -> ridehail_ports::StoreResult<bool> {
    let Some(profile) = project_profile(stream) else { return Ok(false) };
    backend.users.upsert_profile(&profile).await?;
    if let Some(credentials) = project_credentials(stream) {
        backend.users.upsert_credentials(&credentials).await?;
    }
    if profile.role == Role::Driver
        && let Some(s) = crate::domain::state_of(stream)
    {
        backend.drivers.update_driver(user_id, s.location, s.online, stream.len() as u64).await?;
    }
    Ok(true)
}

pub fn project_profile(events: &[EventEnvelope<UserEvent>]) -> Option<UserProfile> {
    let mut profile: Option<UserProfile> = None;
    for envelope in events {
        if let UserEvent::UserRegistered(e) = &envelope.event {
            profile = Some(UserProfile {
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
            continue;
        }
        let Some(p) = profile.as_mut() else { continue };
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
    }
    profile
}

pub fn project_credentials(events: &[EventEnvelope<UserEvent>]) -> Option<Credentials> {
    let mut registered = None;
    let mut credentials = None;
    for envelope in events {
        match &envelope.event {
            UserEvent::UserRegistered(e) => registered = Some((normalise_email(&e.email), e.role)),
            UserEvent::PasswordSet(e) => {
                if let Some((email, role)) = &registered {
                    credentials = Some(Credentials {
                        user_id: UserId(envelope.aggregate_id),
                        email_normalised: email.clone(),
                        role: *role,
                        password_hash: e.password_hash.clone(),
                        version: envelope.sequence,
                    });
                }
            }
            _ => {}
        }
    }
    credentials
}
