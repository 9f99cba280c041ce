//! `GET /v1/commands/{id}`: what became of a submitted command.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse as _, Response};
use ridehail_events::CommandId;

use crate::AppState;
use crate::auth::MaybeAuthUser;
use crate::error::ApiError;
use crate::extract::parse_id;

/// A command submitted by a user is visible to that user only; a sign-up to whoever holds its
/// unguessable id; Ridehail's own (timer) commands to nobody.
///
/// With `Accept: text/event-stream`, the answer is a stream: the status now, then the final outcome
/// when it comes.
#[utoipa::path(get, path = "/v1/commands/{id}", tag = "commands", operation_id = "getCommand",
    security((), ("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "The command id of a `202 Accepted`.")),
    responses(
        (status = 200, description = "The command's status; with `Accept: text/event-stream`, a stream: a `status` event now, and another with the final state when it comes.",
            content((ref("#/components/schemas/CommandStatus") = "application/json"), (String = "text/event-stream"))),
        (status = 401, description = "`unauthenticated`: the command was submitted by a user; their token is needed."),
        (status = 404, description = "`not_found`: no such command, or not the caller's."),
    ))]
pub async fn get(
    State(state): State<AppState>,
    MaybeAuthUser(user): MaybeAuthUser,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id: CommandId = parse_id(&id, "command_id")?;
    let status = match state.backend.commands.get(id).await? {
        Some(s) if s.issued_by.is_none() && s.command_type == "RegisterUser" => s,
        Some(s) if s.issued_by.is_some() && s.issued_by == user.map(|u| u.user_id.0) => s,
        Some(_) if user.is_none() => return Err(ApiError::Unauthenticated("a bearer token is required")),
        _ => return Err(ApiError::NotFound("no such command")),
    };
    let streamed = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/event-stream"));
    Ok(if streamed {
        crate::live::command_outcome(state, status).into_response()
    } else {
        Json(status).into_response()
    })
}
