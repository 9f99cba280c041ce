//! The user aggregate: registration, profile, and (for drivers) availability and location.

use chrono::{DateTime, Utc};
use ridehail_events::user::*;
use ridehail_events::{EventEnvelope, GeoPoint, Role};
use ridehail_ports::Fix;

use ridehail_events::validation::{invalid_vehicle_field, valid_email, valid_name};

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UserState {
    pub role: Role,
    pub name: String,
    pub vehicle: Option<Vehicle>,
    pub online: bool,
    /// The last location the stream holds (given when going online), and when.
    pub location: Option<GeoPoint>,
    pub located_at: Option<DateTime<Utc>>,
}

impl UserState {
    /// The stream's last position fix, for the geo index.
    pub fn fix(&self) -> Option<Fix> {
        Some(Fix { location: self.location?, at: self.located_at? })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserRejection {
    #[error("the user does not exist")]
    UserNotFound,
    #[error("the user is already registered")]
    AlreadyRegistered,
    #[error("the e-mail address is already registered")]
    EmailTaken,
    #[error("{field} is invalid")]
    InvalidField { field: &'static str },
    #[error("drivers must give their vehicle")]
    VehicleRequired,
    #[error("only drivers have a vehicle")]
    VehicleNotAllowed,
    #[error("only drivers can do this")]
    NotADriver,
    #[error("a driver needs a location to go online")]
    LocationRequired,
    #[error("nothing to update")]
    NothingToUpdate,
}

impl UserRejection {
    pub fn code(&self) -> &'static str {
        match self {
            Self::UserNotFound => "user_not_found",
            Self::AlreadyRegistered => "already_registered",
            Self::EmailTaken => "email_taken",
            Self::InvalidField { .. } => "invalid_field",
            Self::VehicleRequired => "vehicle_required",
            Self::VehicleNotAllowed => "vehicle_not_allowed",
            Self::NotADriver => "not_a_driver",
            Self::LocationRequired => "location_required",
            Self::NothingToUpdate => "nothing_to_update",
        }
    }
}

fn check_vehicle(role: Role, vehicle: Option<&Vehicle>) -> Result<(), UserRejection> {
    match (role, vehicle) {
        (Role::Driver, None) => Err(UserRejection::VehicleRequired),
        (Role::Rider, Some(_)) => Err(UserRejection::VehicleNotAllowed),
        (Role::Driver, Some(v)) => match invalid_vehicle_field(v) {
            Some(_) => Err(UserRejection::InvalidField { field: "vehicle" }),
            None => Ok(()),
        },
        (Role::Rider, None) => Ok(()),
    }
}

fn driver(state: &Option<UserState>) -> Result<&UserState, UserRejection> {
    let s = state.as_ref().ok_or(UserRejection::UserNotFound)?;
    if s.role != Role::Driver {
        return Err(UserRejection::NotADriver);
    }
    Ok(s)
}

fn check_location(location: &GeoPoint) -> Result<(), UserRejection> {
    location.validate().map_err(|_| UserRejection::InvalidField { field: "location" })
}

pub fn decide(state: &Option<UserState>, command: &UserCommand) -> Result<Vec<UserEvent>, UserRejection> {
    match command {
        UserCommand::RegisterUser(c) => {
            if state.is_some() {
                return Err(UserRejection::AlreadyRegistered);
            }
            if !valid_email(&c.email) {
                return Err(UserRejection::InvalidField { field: "email" });
            }
            if !valid_name(&c.name) {
                return Err(UserRejection::InvalidField { field: "name" });
            }
            // Only a hash may be stored: refuse anything that is not an argon2id PHC string.
            if !c.password_hash.0.starts_with("$argon2id$") {
                return Err(UserRejection::InvalidField { field: "password_hash" });
            }
            check_vehicle(c.role, c.vehicle.as_ref())?;
            Ok(vec![
                UserEvent::UserRegistered(UserRegistered {
                    email: c.email.trim().to_owned(),
                    name: c.name.trim().to_owned(),
                    role: c.role,
                    vehicle: c.vehicle.clone(),
                }),
                UserEvent::PasswordSet(PasswordSet { password_hash: c.password_hash.clone() }),
            ])
        }
        UserCommand::UpdateProfile(c) => {
            let s = state.as_ref().ok_or(UserRejection::UserNotFound)?;
            if c.name.is_none() && c.vehicle.is_none() {
                return Err(UserRejection::NothingToUpdate);
            }
            if c.name.as_deref().is_some_and(|n| !valid_name(n)) {
                return Err(UserRejection::InvalidField { field: "name" });
            }
            if let Some(vehicle) = &c.vehicle {
                check_vehicle(s.role, Some(vehicle))?;
            }
            Ok(vec![UserEvent::ProfileUpdated(ProfileUpdated {
                name: c.name.as_ref().map(|n| n.trim().to_owned()),
                vehicle: c.vehicle.clone(),
            })])
        }
        UserCommand::SetAvailability(c) => {
            let s = driver(state)?;
            if let Some(location) = &c.location {
                check_location(location)?;
            }
            match (s.online, c.online) {
                (false, true) if c.location.is_none() && s.location.is_none() => Err(UserRejection::LocationRequired),
                (false, true) => Ok(vec![UserEvent::DriverWentOnline(DriverWentOnline { location: c.location })]),
                (true, false) => Ok(vec![UserEvent::DriverWentOffline(DriverWentOffline {})]),
                // Already in the asked state: only a new location is news.
                _ => Ok(c
                    .location
                    .map(|location| UserEvent::DriverLocationUpdated(DriverLocationUpdated { location }))
                    .into_iter()
                    .collect()),
            }
        }
        UserCommand::UpdateLocation(c) => {
            driver(state)?;
            check_location(&c.location)?;
            Ok(vec![UserEvent::DriverLocationUpdated(DriverLocationUpdated { location: c.location })])
        }
    }
}

/// The state after a whole stream.
pub fn state_of(history: &[EventEnvelope<UserEvent>]) -> Option<UserState> {
    history.iter().fold(None, |s, e| evolve(s, &e.event, e.occurred_at))
}

/// Applies one event. `at` is when it occurred (from its envelope).
pub fn evolve(state: Option<UserState>, event: &UserEvent, at: DateTime<Utc>) -> Option<UserState> {
    if let UserEvent::UserRegistered(e) = event {
        return Some(UserState {
            role: e.role,
            name: e.name.clone(),
            vehicle: e.vehicle.clone(),
            online: false,
            location: None,
            located_at: None,
        });
    }
    let mut s = state?;
    match event {
        UserEvent::UserRegistered(_) | UserEvent::PasswordSet(_) => {}
        UserEvent::ProfileUpdated(e) => {
            if let Some(name) = &e.name {
                s.name = name.clone();
            }
            if let Some(vehicle) = &e.vehicle {
                s.vehicle = Some(vehicle.clone());
            }
        }
        UserEvent::DriverWentOnline(e) => {
            s.online = true;
            if let Some(location) = e.location {
                (s.location, s.located_at) = (Some(location), Some(at));
            }
        }
        UserEvent::DriverWentOffline(_) => s.online = false,
        UserEvent::DriverLocationUpdated(e) => (s.location, s.located_at) = (Some(e.location), Some(at)),
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ridehail_events::Message;

    fn vehicle() -> Vehicle {
        Vehicle { make: "Toyota".into(), model: "Prius".into(), colour: "white".into(), plate: "AA-00-BB".into() }
    }
    fn register(role: Role, vehicle: Option<Vehicle>) -> UserCommand {
        UserCommand::RegisterUser(RegisterUser {
            email: "Ana@Example.com".into(),
            name: " Ana ".into(),
            role,
            password_hash: PasswordHash("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into()),
            vehicle,
        })
    }
    fn given(events: &[UserEvent]) -> Option<UserState> {
        events.iter().fold(None, |s, e| evolve(s, e, chrono::DateTime::UNIX_EPOCH))
    }
    fn registered(role: Role) -> Vec<UserEvent> {
        decide(&None, &register(role, (role == Role::Driver).then(vehicle))).unwrap()
    }
    fn types(events: &[UserEvent]) -> Vec<&'static str> {
        events.iter().map(|e| e.type_name()).collect()
    }
    fn online(location: Option<GeoPoint>) -> UserCommand {
        UserCommand::SetAvailability(SetAvailability { online: true, location })
    }
    const LISBON: GeoPoint = GeoPoint { lat: 38.72, lon: -9.14 };

    #[test]
    fn given_nobody_when_registering_then_the_user_and_a_private_password_event_are_recorded() {
        let events = registered(Role::Driver);
        assert_eq!(types(&events), ["UserRegistered", "PasswordSet"]);
        assert!(events[0].is_public());
        assert!(!events[1].is_public(), "the credential never leaves the event store");
        let UserEvent::UserRegistered(e) = &events[0] else { unreachable!() };
        assert_eq!(e.name, "Ana");
    }

    #[test]
    fn registration_rules() {
        assert_eq!(decide(&None, &register(Role::Driver, None)), Err(UserRejection::VehicleRequired));
        assert_eq!(decide(&None, &register(Role::Rider, Some(vehicle()))), Err(UserRejection::VehicleNotAllowed));
        let mut plain = register(Role::Rider, None);
        if let UserCommand::RegisterUser(c) = &mut plain {
            c.password_hash = PasswordHash("correct horse battery".into());
        }
        assert_eq!(decide(&None, &plain), Err(UserRejection::InvalidField { field: "password_hash" }));
        let mut bad_email = register(Role::Rider, None);
        if let UserCommand::RegisterUser(c) = &mut bad_email {
            c.email = "not-an-email".into();
        }
        assert_eq!(decide(&None, &bad_email), Err(UserRejection::InvalidField { field: "email" }));
        let state = given(&registered(Role::Rider));
        assert_eq!(decide(&state, &register(Role::Rider, None)), Err(UserRejection::AlreadyRegistered));
    }

    #[test]
    fn given_an_offline_driver_when_going_online_then_a_location_is_needed() {
        let state = given(&registered(Role::Driver));
        assert_eq!(decide(&state, &online(None)), Err(UserRejection::LocationRequired));
        let events = decide(&state, &online(Some(LISBON))).unwrap();
        assert_eq!(events, vec![UserEvent::DriverWentOnline(DriverWentOnline { location: Some(LISBON) })]);
        let bad = decide(&state, &online(Some(GeoPoint { lat: 0.0, lon: 200.0 })));
        assert_eq!(bad, Err(UserRejection::InvalidField { field: "location" }));
    }

    #[test]
    fn given_an_online_driver_then_availability_changes_are_idempotent() {
        let mut history = registered(Role::Driver);
        history.push(UserEvent::DriverWentOnline(DriverWentOnline { location: Some(LISBON) }));
        let state = given(&history);
        assert_eq!(decide(&state, &online(None)), Ok(vec![]));
        assert_eq!(types(&decide(&state, &online(Some(LISBON))).unwrap()), ["DriverLocationUpdated"]);
        let offline = UserCommand::SetAvailability(SetAvailability { online: false, location: None });
        assert_eq!(types(&decide(&state, &offline).unwrap()), ["DriverWentOffline"]);
        history.push(UserEvent::DriverWentOffline(DriverWentOffline {}));
        // Back online without a location: the last known one is kept.
        let state = given(&history);
        assert_eq!(types(&decide(&state, &online(None)).unwrap()), ["DriverWentOnline"]);
        assert_eq!(state.unwrap().location, Some(LISBON));
    }

    #[test]
    fn riders_cannot_use_driver_commands_and_unknown_users_are_refused() {
        let rider = given(&registered(Role::Rider));
        assert_eq!(decide(&rider, &online(Some(LISBON))), Err(UserRejection::NotADriver));
        let locate = UserCommand::UpdateLocation(UpdateLocation { location: LISBON });
        assert_eq!(decide(&rider, &locate), Err(UserRejection::NotADriver));
        assert_eq!(decide(&None, &locate), Err(UserRejection::UserNotFound));
    }

    #[test]
    fn profile_updates() {
        let rider = given(&registered(Role::Rider));
        let rename = UserCommand::UpdateProfile(UpdateProfile { name: Some("Ana S.".into()), vehicle: None });
        let events = decide(&rider, &rename).unwrap();
        assert_eq!(given(&[registered(Role::Rider), events].concat()).unwrap().name, "Ana S.");
        let empty = UserCommand::UpdateProfile(UpdateProfile { name: None, vehicle: None });
        assert_eq!(decide(&rider, &empty), Err(UserRejection::NothingToUpdate));
        let car = UserCommand::UpdateProfile(UpdateProfile { name: None, vehicle: Some(vehicle()) });
        assert_eq!(decide(&rider, &car), Err(UserRejection::VehicleNotAllowed));
    }

    /// Every (state x command) pair, under one representative command each.
    #[test]
    fn every_state_and_command_pair_has_the_expected_outcome() {
        let driver = registered(Role::Driver);
        let mut located = driver.clone();
        located.push(UserEvent::DriverLocationUpdated(DriverLocationUpdated { location: LISBON }));
        let mut online_driver = driver.clone();
        online_driver.push(UserEvent::DriverWentOnline(DriverWentOnline { location: Some(LISBON) }));
        let states: [(&str, Vec<UserEvent>); 5] = [
            ("none", vec![]),
            ("rider", registered(Role::Rider)),
            ("driver offline, never located", driver),
            ("driver offline, located", located),
            ("driver online", online_driver),
        ];
        let commands: [(&str, UserCommand); 5] = [
            ("register", register(Role::Rider, None)),
            ("rename", UserCommand::UpdateProfile(UpdateProfile { name: Some("New Name".into()), vehicle: None })),
            ("go online", online(None)),
            ("go offline", UserCommand::SetAvailability(SetAvailability { online: false, location: None })),
            ("move", UserCommand::UpdateLocation(UpdateLocation { location: LISBON })),
        ];
        use UserRejection::*;
        let expected: [[Result<&[&str], UserRejection>; 5]; 5] = [
            // register, rename, go online, go offline, move
            [
                Ok(&["UserRegistered", "PasswordSet"]),
                Err(UserNotFound),
                Err(UserNotFound),
                Err(UserNotFound),
                Err(UserNotFound),
            ],
            [Err(AlreadyRegistered), Ok(&["ProfileUpdated"]), Err(NotADriver), Err(NotADriver), Err(NotADriver)],
            [
                Err(AlreadyRegistered),
                Ok(&["ProfileUpdated"]),
                Err(LocationRequired),
                Ok(&[]),
                Ok(&["DriverLocationUpdated"]),
            ],
            [
                Err(AlreadyRegistered),
                Ok(&["ProfileUpdated"]),
                Ok(&["DriverWentOnline"]),
                Ok(&[]),
                Ok(&["DriverLocationUpdated"]),
            ],
            [
                Err(AlreadyRegistered),
                Ok(&["ProfileUpdated"]),
                Ok(&[]),
                Ok(&["DriverWentOffline"]),
                Ok(&["DriverLocationUpdated"]),
            ],
        ];
        let mut failures = Vec::new();
        for (row, (state_name, history)) in states.iter().enumerate() {
            let state = given(history);
            for (col, (command_name, command)) in commands.iter().enumerate() {
                let got = decide(&state, command);
                let ok = match (&expected[row][col], &got) {
                    (Ok(want), Ok(events)) => types(events) == *want,
                    (Err(want), Err(rejection)) => want == rejection,
                    _ => false,
                };
                if !ok {
                    failures.push(format!(
                        "given {state_name} when {command_name}: want {:?}, got {got:?}",
                        expected[row][col]
                    ));
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
}
