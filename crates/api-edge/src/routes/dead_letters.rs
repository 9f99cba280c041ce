//! `/admin/dead-letters`: the dead letters, for operators only (an admin token from
//! `ridehail admin token`; a rider's or driver's token is refused). The same operations as
//! `ridehail dlq` (see `ridehail_runtime::dead_letters`).

use axum::Json;
use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use ridehail_runtime::dead_letters::{self, DeadLetter, DeadLetterFilter};
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::AppState;
use crate::auth::Operator;
use crate::error::ApiError;
use crate::extract::{ValidJson, ValidQuery};

/// Which dead letters to list (every parameter narrows).
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only those dead-lettered from this topic.
    pub source_topic: Option<String>,
    /// Only those whose reason contains this (case-insensitive).
    pub reason: Option<String>,
    /// Only records of this type (their `ridehail-type` header, e.g. `RequestRide`).
    pub message_type: Option<String>,
    /// Dead-lettered at or after (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    pub since: Option<DateTime<Utc>>,
    /// Dead-lettered before (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    pub until: Option<DateTime<Utc>>,
    /// Also those already redriven or purged.
    pub include_resolved: Option<bool>,
}

/// Dead letters (or those already redriven or purged too), oldest first.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct DeadLetterList {
    pub items: Vec<DeadLetter>,
}

/// Which dead letters to redrive or purge: exactly `ids`, or those the other fields select, or
/// every open one with `all`.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterSelection {
    #[serde(default)]
    pub ids: Vec<String>,
    pub source_topic: Option<String>,
    pub reason: Option<String>,
    pub message_type: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Every open dead letter (required when nothing else narrows).
    #[serde(default)]
    pub all: bool,
    /// Purging only: must be true.
    #[serde(default)]
    pub confirm: bool,
}

impl DeadLetterSelection {
    fn filter(&self) -> Result<DeadLetterFilter, ApiError> {
        let filter = DeadLetterFilter {
            ids: self.ids.clone(),
            source_topic: self.source_topic.clone(),
            reason: self.reason.clone(),
            message_type: self.message_type.clone(),
            since: self.since,
            until: self.until,
            include_resolved: false,
        };
        if !filter.narrows() && !self.all {
            return Err(ApiError::field("all", "must be true to act on every dead letter"));
        }
        Ok(filter)
    }
}

/// What a redrive or a purge acted on.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct DeadLetterAction {
    /// How many dead letters were redriven or purged.
    pub count: usize,
    pub ids: Vec<String>,
}

fn acted(letters: Vec<DeadLetter>) -> DeadLetterAction {
    DeadLetterAction { count: letters.len(), ids: letters.into_iter().map(|l| l.id).collect() }
}

/// The dead letters, oldest first (open ones unless `include_resolved`).
#[utoipa::path(get, path = "/admin/dead-letters", tag = "operations", operation_id = "listDeadLetters",
    security(("bearer" = [])),
    params(ListParams),
    responses(
        (status = 200, description = "The dead letters the parameters select, oldest first.", body = ref("#/components/schemas/DeadLetterList")),
        (status = 403, description = "`forbidden`: only operators (an admin token) can do this."),
        (status = 422, description = "`validation_failed`: a parameter is invalid."),
    ))]
pub async fn list(
    State(state): State<AppState>,
    _operator: Operator,
    ValidQuery(params): ValidQuery<ListParams>,
) -> Result<Json<DeadLetterList>, ApiError> {
    let filter = DeadLetterFilter {
        ids: Vec::new(),
        source_topic: params.source_topic,
        reason: params.reason,
        message_type: params.message_type,
        since: params.since,
        until: params.until,
        include_resolved: params.include_resolved.unwrap_or(false),
    };
    Ok(Json(DeadLetterList {
        items: dead_letters::list(&*state.backend.bus, dead_letters::DEAD_LETTERS, &filter).await?,
    }))
}

/// One dead letter, with its original headers and payload.
#[utoipa::path(get, path = "/admin/dead-letters/{id}", tag = "operations", operation_id = "getDeadLetter",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "`partition:offset` on the dead-letter topic.")),
    responses(
        (status = 200, description = "The dead letter, with its original headers and payload.", body = ref("#/components/schemas/DeadLetter")),
        (status = 403, description = "`forbidden`: only operators (an admin token) can do this."),
        (status = 404, description = "`not_found`: no such dead letter."),
    ))]
pub async fn get(
    State(state): State<AppState>,
    _operator: Operator,
    Path(id): Path<String>,
) -> Result<Json<DeadLetter>, ApiError> {
    let filter = DeadLetterFilter { ids: vec![id], include_resolved: true, ..DeadLetterFilter::default() };
    let found = dead_letters::list(&*state.backend.bus, dead_letters::DEAD_LETTERS, &filter).await?.into_iter().next();
    found.map(Json).ok_or(ApiError::NotFound("no such dead letter"))
}

/// Publishes dead letters again to their source topics, as they were.
#[utoipa::path(post, path = "/admin/dead-letters/redrive", tag = "operations", operation_id = "redriveDeadLetters",
    security(("bearer" = [])),
    request_body(content = ref("#/components/schemas/DeadLetterSelection"), content_type = "application/json"),
    responses(
        (status = 200, description = "The open dead letters selected were published again to their source topics, as they were (same ids: a second redrive is harmless).", body = ref("#/components/schemas/DeadLetterAction")),
        (status = 403, description = "`forbidden`: only operators (an admin token) can do this."),
        (status = 422, description = "`validation_failed`: nothing selects, and `all` is not true."),
    ))]
pub async fn redrive(
    State(state): State<AppState>,
    operator: Operator,
    ValidJson(selection): ValidJson<DeadLetterSelection>,
) -> Result<Json<DeadLetterAction>, ApiError> {
    let done = dead_letters::redrive(&*state.backend.bus, dead_letters::DEAD_LETTERS, &selection.filter()?).await?;
    info!(operator = operator.name, redriven = done.len(), "dead letters redriven");
    Ok(Json(acted(done)))
}

/// Hides dead letters from listings.
#[utoipa::path(post, path = "/admin/dead-letters/purge", tag = "operations", operation_id = "purgeDeadLetters",
    security(("bearer" = [])),
    request_body(content = ref("#/components/schemas/DeadLetterSelection"), content_type = "application/json"),
    responses(
        (status = 200, description = "The open dead letters selected are marked purged (hidden from listings; the bus's retention removes the bytes).", body = ref("#/components/schemas/DeadLetterAction")),
        (status = 403, description = "`forbidden`: only operators (an admin token) can do this."),
        (status = 422, description = "`validation_failed`: `confirm` is not true, or nothing selects and `all` is not true."),
    ))]
pub async fn purge(
    State(state): State<AppState>,
    operator: Operator,
    ValidJson(selection): ValidJson<DeadLetterSelection>,
) -> Result<Json<DeadLetterAction>, ApiError> {
    if !selection.confirm {
        return Err(ApiError::field("confirm", "must be true to purge"));
    }
    let done = dead_letters::purge(&*state.backend.bus, dead_letters::DEAD_LETTERS, &selection.filter()?).await?;
    info!(operator = operator.name, purged = done.len(), "dead letters purged");
    Ok(Json(acted(done)))
}
