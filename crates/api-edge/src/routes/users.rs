//! `POST /v1/users` (sign up) and `GET /v1/me`.

use axum::extract::State;
use axum::response::Response;
use ridehail_events::Role;
use ridehail_events::user::{PasswordHash, RegisterUser, UpdateProfile, UserCommand, Vehicle};
use ridehail_events::validation::{MIN_PASSWORD_CHARS, invalid_vehicle_field, valid_email, valid_name, valid_password};
use ridehail_events::{Actor, UserId, topics};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::auth::AuthUser;
use crate::error::{ApiError, FieldError};
use crate::extract::{CommandHeaders, ValidJson};
use crate::submit::{Submission, fingerprint, submit};
use ridehail_ports::Resource;

/// A sign-up. Drivers give their vehicle; riders give none.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    #[schemars(email, length(max = 254))]
    pub email: String,
    #[schemars(length(min = 12, max = 256))]
    pub password: String,
    #[schemars(length(min = 1, max = 100))]
    pub name: String,
    pub role: Role,
    #[serde(default)]
    pub vehicle: Option<Vehicle>,
}

/// What identifies a sign-up for idempotency. It is stored only as a keyed hash, so neither the
/// address nor the name nor the password can be read back from the idempotency store; the password
/// is in it so that a retry with another password is a different request (422), not a replay.
#[derive(Serialize)]
struct RegisterFingerprint<'a> {
    email: &'a str,
    name: &'a str,
    role: Role,
    vehicle: &'a Option<Vehicle>,
    password: &'a str,
}

/// Collects field errors of one request.
#[derive(Default)]
struct Fields(Vec<FieldError>);

impl Fields {
    fn fail(&mut self, field: &str, message: &str) {
        self.0.push(FieldError { field: field.into(), message: message.into() });
    }

    fn name(&mut self, name: &str) {
        if !valid_name(name) {
            self.fail("name", "must be 1 to 100 characters");
        }
    }

    /// A vehicle given by (or required of) a user with `role`; `required` when it must be present.
    fn vehicle(&mut self, role: Role, vehicle: Option<&Vehicle>, required: bool) {
        match (role, vehicle) {
            (Role::Driver, None) if required => self.fail("vehicle", "drivers must give their vehicle"),
            (Role::Rider, Some(_)) => self.fail("vehicle", "only drivers have a vehicle"),
            (Role::Driver, Some(v)) => {
                if let Some(field) = invalid_vehicle_field(v) {
                    self.fail(&format!("vehicle.{field}"), "must be non-empty and not too long");
                }
            }
            _ => {}
        }
    }

    fn finish(self) -> Result<(), ApiError> {
        if self.0.is_empty() { Ok(()) } else { Err(ApiError::Validation(self.0)) }
    }
}

fn validate(req: &RegisterRequest) -> Result<(), ApiError> {
    let mut fields = Fields::default();
    if !valid_email(&req.email) {
        fields.fail("email", "must be an e-mail address");
    }
    if !valid_password(&req.password) {
        fields.fail("password", &format!("must be at least {MIN_PASSWORD_CHARS} characters"));
    }
    fields.name(&req.name);
    fields.vehicle(req.role, req.vehicle.as_ref(), true);
    fields.finish()
}

/// Sign up as a rider or a driver.
#[utoipa::path(post, path = "/v1/users", tag = "users", operation_id = "register", security(()),
    request_body(content = ref("#/components/schemas/RegisterRequest"), content_type = "application/json"),
    responses(
        (status = 202, description = "Submitted: follow `status_url`.", body = ref("#/components/schemas/Accepted")),
        (status = 201, description = "With `Prefer: wait`: registered.", body = ref("#/components/schemas/UserProfile")),
        (status = 422, description = "`validation_failed`: a field is invalid (`errors` names each one)."),
        (status = 503, description = "`unavailable`: also when the password hashing queue is full."),
    ))]
pub async fn register(
    State(state): State<AppState>,
    headers: CommandHeaders,
    ValidJson(req): ValidJson<RegisterRequest>,
) -> Result<Response, ApiError> {
    validate(&req)?;
    let identity = RegisterFingerprint {
        email: &req.email,
        name: &req.name,
        role: req.role,
        vehicle: &req.vehicle,
        password: &req.password,
    };
    let fp = state.keyed_hash(&format!("POST /v1/users\0{}", serde_json::to_string(&identity).unwrap_or_default()));
    let password_hash = state.signup_passwords.hash(SecretString::from(req.password)).await?;
    let user_id = UserId::new();
    let email = ridehail_events::ids::normalise_email(&req.email);
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
        personal: true,
    };
    // Sign-ups have no caller to scope keys by: scope them by (a keyed hash of) the address.
    let scope = format!("signup:{}", state.keyed_hash(&email));
    submit(&state, &headers, &scope, fp, submission).await
}

/// The caller's profile.
#[utoipa::path(get, path = "/v1/me", tag = "users", operation_id = "getMe", security(("bearer" = [])),
    responses(
        (status = 200, description = "The profile (never a credential).", body = ref("#/components/schemas/UserProfile")),
        (status = 404, description = "`not_found`: the profile is not projected yet (just after sign-up)."),
    ))]
pub async fn me(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<axum::Json<ridehail_ports::UserProfile>, ApiError> {
    let profile = state.backend.users.profile(user.user_id).await?;
    profile.map(axum::Json).ok_or(ApiError::NotFound("no profile for this user yet"))
}

/// What to change: at least one of the two (`null` leaves it as it is).
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("anyOf" = [
    { "required": ["name"], "properties": { "name": { "type": "string" } } },
    { "required": ["vehicle"], "properties": { "vehicle": { "type": "object" } } },
]))]
pub struct ProfileUpdate {
    #[serde(default)]
    #[schemars(length(min = 1, max = 100))]
    pub name: Option<String>,
    #[serde(default)]
    pub vehicle: Option<Vehicle>,
}

/// `PATCH /v1/me`: change the name and, for drivers, the vehicle.
#[utoipa::path(patch, path = "/v1/me", tag = "users", operation_id = "updateMe", security(("bearer" = [])),
    request_body(content = ref("#/components/schemas/ProfileUpdate"), content_type = "application/json"),
    responses(
        (status = 202, description = "Submitted: follow `status_url`.", body = ref("#/components/schemas/Accepted")),
        (status = 200, description = "With `Prefer: wait`: the updated profile.", body = ref("#/components/schemas/UserProfile")),
        (status = 422, description = "`validation_failed`: nothing to change, or a field is invalid (a rider gave a vehicle)."),
    ))]
pub async fn update_me(
    State(state): State<AppState>,
    user: AuthUser,
    headers: CommandHeaders,
    ValidJson(req): ValidJson<ProfileUpdate>,
) -> Result<Response, ApiError> {
    let mut fields = Fields::default();
    if req.name.is_none() && req.vehicle.is_none() {
        fields.fail("name", "give a name or a vehicle to change");
    }
    if let Some(name) = &req.name {
        fields.name(name);
    }
    fields.vehicle(user.role, req.vehicle.as_ref(), false);
    fields.finish()?;
    let fp = fingerprint("PATCH /v1/me", &req);
    let submission = Submission {
        topic: topics::USER_COMMANDS,
        aggregate_id: user.user_id.0,
        actor: Actor::User { user_id: user.user_id.0, role: user.role },
        command: UserCommand::UpdateProfile(UpdateProfile { name: req.name, vehicle: req.vehicle }),
        resource: Resource::User(user.user_id.0),
        creates: false,
        viewer: Some(user),
        personal: true,
    };
    submit(&state, &headers, &user.user_id.to_string(), fp, submission).await
}
