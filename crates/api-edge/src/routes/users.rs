//! `POST /v1/users` (sign up) and `GET /v1/me`.

use axum::extract::State;
use axum::response::Response;
use ridehail_events::user::{PasswordHash, RegisterUser, Role, UpdateProfile, UserCommand, Vehicle};
use ridehail_events::validation::{MIN_PASSWORD_CHARS, invalid_vehicle_field, valid_email, valid_name, valid_password};
use ridehail_events::{Actor, UserId, topics};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::auth::AuthUser;
use crate::error::{ApiError, FieldError};
use crate::extract::{CommandHeaders, ValidJson};
use crate::submit::{Resource, Submission, fingerprint, submit};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    pub email: String,
    pub password: String,
    pub name: String,
    pub role: Role,
    #[serde(default)]
    pub vehicle: Option<Vehicle>,
}

/// What identifies a sign-up for idempotency; the password is left out on purpose (only its
/// presence matters; it is never stored in the idempotency record).
#[derive(Serialize)]
struct RegisterFingerprint<'a> {
    email: &'a str,
    name: &'a str,
    role: Role,
    vehicle: &'a Option<Vehicle>,
}

fn validate(req: &RegisterRequest) -> Result<(), ApiError> {
    let mut errors = Vec::new();
    let mut fail =
        |field: &str, message: &str| errors.push(FieldError { field: field.into(), message: message.into() });
    if !valid_email(&req.email) {
        fail("email", "must be an e-mail address");
    }
    if !valid_password(&req.password) {
        fail("password", &format!("must be at least {MIN_PASSWORD_CHARS} characters"));
    }
    if !valid_name(&req.name) {
        fail("name", "must be 1 to 100 characters");
    }
    match (req.role, &req.vehicle) {
        (Role::Driver, None) => fail("vehicle", "drivers must give their vehicle"),
        (Role::Rider, Some(_)) => fail("vehicle", "only drivers have a vehicle"),
        (Role::Driver, Some(v)) => {
            if let Some(field) = invalid_vehicle_field(v) {
                fail(&format!("vehicle.{field}"), "must be non-empty and not too long");
            }
        }
        (Role::Rider, None) => {}
    }
    if errors.is_empty() { Ok(()) } else { Err(ApiError::Validation(errors)) }
}

pub async fn register(
    State(state): State<AppState>,
    headers: CommandHeaders,
    ValidJson(req): ValidJson<RegisterRequest>,
) -> Result<Response, ApiError> {
    validate(&req)?;
    let fp = fingerprint(
        "POST /v1/users",
        &RegisterFingerprint { email: &req.email, name: &req.name, role: req.role, vehicle: &req.vehicle },
    );
    let password_hash = state.passwords.hash(SecretString::from(req.password)).await?;
    let user_id = UserId::new();
    let email = req.email.trim().to_owned();
    let command = UserCommand::RegisterUser(RegisterUser {
        email: email.clone(),
        name: req.name,
        role: req.role,
        password_hash: PasswordHash(password_hash),
        vehicle: req.vehicle,
    });
    let submission = Submission {
        topic: topics::USER_COMMANDS,
        aggregate_id: user_id.0,
        actor: Actor::Anonymous,
        command,
        resource: Resource::User(user_id.0),
        creates: true,
        viewer: None,
    };
    // Sign-ups have no caller to scope keys by: scope them by the address being registered.
    let scope = format!("signup:{}", ridehail_events::ids::email_claim_id(&email));
    submit(&state, &headers, &scope, fp, submission).await
}

/// The profile as JSON, if projected.
pub async fn profile_json(state: &AppState, user_id: UserId) -> Result<Option<serde_json::Value>, ApiError> {
    let profile = state.backend.users.profile(user_id).await.map_err(ApiError::Unavailable)?;
    Ok(profile.map(|p| serde_json::to_value(p).unwrap_or_default()))
}

pub async fn me(State(state): State<AppState>, user: AuthUser) -> Result<axum::Json<serde_json::Value>, ApiError> {
    profile_json(&state, user.user_id).await?.map(axum::Json).ok_or(ApiError::NotFound("no profile for this user yet"))
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileUpdate {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub vehicle: Option<Vehicle>,
}

/// `PATCH /v1/me`: change the name and, for drivers, the vehicle.
pub async fn update_me(
    State(state): State<AppState>,
    user: AuthUser,
    headers: CommandHeaders,
    ValidJson(req): ValidJson<ProfileUpdate>,
) -> Result<Response, ApiError> {
    let mut errors = Vec::new();
    if req.name.is_none() && req.vehicle.is_none() {
        errors.push(FieldError { field: "name".into(), message: "give a name or a vehicle to change".into() });
    }
    if req.name.as_deref().is_some_and(|n| !valid_name(n)) {
        errors.push(FieldError { field: "name".into(), message: "must be 1 to 100 characters".into() });
    }
    match (&req.vehicle, user.role) {
        (Some(_), Role::Rider) => {
            errors.push(FieldError { field: "vehicle".into(), message: "only drivers have a vehicle".into() })
        }
        (Some(v), Role::Driver) => {
            if let Some(field) = invalid_vehicle_field(v) {
                errors.push(FieldError {
                    field: format!("vehicle.{field}"),
                    message: "must be non-empty and not too long".into(),
                });
            }
        }
        (None, _) => {}
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let fp = fingerprint("PATCH /v1/me", &req);
    let submission = Submission {
        topic: topics::USER_COMMANDS,
        aggregate_id: user.user_id.0,
        actor: Actor::User { user_id: user.user_id.0, role: user.role },
        command: UserCommand::UpdateProfile(UpdateProfile { name: req.name, vehicle: req.vehicle }),
        resource: Resource::User(user.user_id.0),
        creates: false,
        viewer: Some(user),
    };
    submit(&state, &headers, &user.user_id.to_string(), fp, submission).await
}
