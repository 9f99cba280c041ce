//! User read models folded from the user's whole stream: the profile (no credential) and the
//! credentials used by login.

use ridehail_events::ids::normalise_email;
use ridehail_events::user::UserEvent;
use ridehail_events::{EventEnvelope, UserId};
use ridehail_runtime::ports::{Credentials, UserProfile};

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
