//! `GET /v1/commands/{id}`: what became of a submitted command.

use axum::Json;
use axum::extract::{Path, State};
use ridehail_events::CommandId;
use ridehail_ports::CommandStatus;

use crate::AppState;
use crate::auth::MaybeAuthUser;
use crate::error::ApiError;
use crate::extract::parse_id;

/// A command submitted by a user is visible to that user only; a sign-up to whoever holds its
/// unguessable id; Ridehail's own (timer) commands to nobody.
pub async fn get(
    State(state): State<AppState>,
    MaybeAuthUser(user): MaybeAuthUser,
    Path(id): Path<String>,
) -> Result<Json<CommandStatus>, ApiError> {
    let id: CommandId = parse_id(&id, "command_id")?;
    let status = state.backend.commands.get(id).await?;
    match status {
        Some(s) if s.issued_by.is_none() && s.command_type == "RegisterUser" => Ok(Json(s)),
        Some(s) if s.issued_by.is_some() && s.issued_by == user.map(|u| u.user_id.0) => Ok(Json(s)),
        Some(_) if user.is_none() => Err(ApiError::Unauthenticated("a bearer token is required")),
        _ => Err(ApiError::NotFound("no such command")),
    }
}
