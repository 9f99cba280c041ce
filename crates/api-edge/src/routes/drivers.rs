//! Driver endpoints on the driver's own user: availability and location.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use ridehail_events::Role;
use ridehail_events::user::{SetAvailability, UserCommand};
use ridehail_events::{Actor, topics};
use serde::{Deserialize, Serialize};

use super::Position;
use crate::AppState;
use crate::auth::AuthUser;
use crate::error::ApiError;
use crate::extract::{CommandHeaders, ValidJson};
use crate::submit::{Submission, fingerprint, submit};
use ridehail_ports::{Fix, Resource};

/// Going online (optionally from a position) or offline.
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AvailabilityRequest {
    pub online: bool,
    #[serde(default)]
    pub location: Option<Position>,
}

fn driver_submission(user: AuthUser, command: UserCommand) -> Submission<UserCommand> {
    Submission {
        topic: topics::USER_COMMANDS,
        aggregate_id: user.user_id.0,
        actor: Actor::User { user_id: user.user_id.0, role: user.role },
        command,
        resource: Resource::User(user.user_id.0),
        creates: false,
        viewer: Some(user),
        personal: false,
    }
}

/// Go online (to receive offers) or offline.
#[utoipa::path(put, path = "/v1/drivers/me/availability", tag = "drivers", operation_id = "setAvailability",
    security(("bearer" = [])),
    request_body(content = ref("#/components/schemas/AvailabilityRequest"), content_type = "application/json"),
    responses(
        (status = 202, description = "Submitted: follow `status_url`.", body = ref("#/components/schemas/Accepted")),
        (status = 200, description = "With `Prefer: wait`: the driver's profile.", body = ref("#/components/schemas/UserProfile")),
        (status = 403, description = "`forbidden`: only drivers have an availability."),
    ))]
pub async fn set_availability(
    State(state): State<AppState>,
    user: AuthUser,
    headers: CommandHeaders,
    ValidJson(req): ValidJson<AvailabilityRequest>,
) -> Result<Response, ApiError> {
    user.require(Role::Driver)?;
    let location = req.location.map(|l| l.check("location")).transpose()?;
    let fp = fingerprint("PUT /v1/drivers/me/availability", &req);
    let command = UserCommand::SetAvailability(SetAvailability { online: req.online, location });
    submit(&state, &headers, &user.user_id.to_string(), fp, driver_submission(user, command)).await
}

/// Where the driver is now (for matching): telemetry, not history. The position goes straight to the
/// driver geo index (docs/locations.md); nothing is appended to the driver's stream, so there is no
/// command to follow.
#[utoipa::path(put, path = "/v1/drivers/me/location", tag = "drivers", operation_id = "setLocation",
    security(("bearer" = [])),
    request_body(content = ref("#/components/schemas/Position"), content_type = "application/json"),
    responses(
        (status = 204, description = "Recorded (a position older than the one recorded is ignored)."),
        (status = 403, description = "`forbidden`: only drivers have a location."),
        (status = 404, description = "`not_found`: the driver's registration is not processed yet."),
    ))]
pub async fn set_location(
    State(state): State<AppState>,
    user: AuthUser,
    ValidJson(req): ValidJson<Position>,
) -> Result<StatusCode, ApiError> {
    user.require(Role::Driver)?;
    let location = req.check("location")?;
    let fix = Fix { location, at: state.backend.clock.now() };
    if !state.backend.drivers.report_location(user.user_id, fix).await? {
        return Err(ApiError::NotFound("driver"));
    }
    ridehail_runtime::metrics::locations::reported();
    Ok(StatusCode::NO_CONTENT)
}
