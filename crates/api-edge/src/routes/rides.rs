//! Ride endpoints. Riders request, read, cancel and rate their rides; drivers answer offers and drive.
//! A ride that is not the caller's is reported as not found.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ridehail_events::Role;
use ridehail_events::ride::*;
use ridehail_events::{Actor, RideId, WireEvent, topics, validation};
use ridehail_ports::{RideParty, RideQuery, RideView};
use serde::{Deserialize, Serialize};

use super::Position;
use crate::AppState;
use crate::auth::AuthUser;
use crate::error::ApiError;
use crate::extract::{CommandHeaders, ValidJson, ValidQuery, parse_id};
use crate::submit::{Submission, fingerprint, submit};
use ridehail_ports::Resource;

pub const MAX_PAGE: usize = 100;
const DEFAULT_PAGE: usize = 20;

pub(crate) async fn own_ride(state: &AppState, raw_id: &str, user: AuthUser) -> Result<RideView, ApiError> {
    let ride_id: RideId = parse_id(raw_id, "ride_id")?;
    crate::views::visible_ride(state, ride_id, Some(user)).await?.ok_or(ApiError::NotFound("no such ride"))
}

fn ride_submission(user: AuthUser, ride_id: RideId, command: RideCommand, creates: bool) -> Submission<RideCommand> {
    Submission {
        topic: topics::RIDE_COMMANDS,
        aggregate_id: ride_id.0,
        actor: Actor::User { user_id: user.user_id.0, role: user.role },
        command,
        resource: Resource::Ride(ride_id.0),
        creates,
        viewer: Some(user),
        personal: false,
    }
}

// ------------------------------------------------------------------ rider

/// A ride wanted from `pickup` to `dropoff` (at least 50 m and at most 150 km apart).
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RideRequest {
    pub pickup: Position,
    pub dropoff: Position,
}

/// Request a ride (riders; one ride at a time).
#[utoipa::path(post, path = "/v1/rides", tag = "rides", operation_id = "requestRide", security(("bearer" = [])),
    request_body(content = ref("#/components/schemas/RideRequest"), content_type = "application/json"),
    responses(
        (status = 202, description = "Submitted: follow `status_url`, or the ride's `updates`.", body = ref("#/components/schemas/Accepted")),
        (status = 201, description = "With `Prefer: wait`: the ride, being matched.", body = ref("#/components/schemas/RideView")),
        (status = 403, description = "`forbidden`: only riders request rides."),
        (status = 409, description = "With `Prefer: wait`: `active_ride_exists`, the rider has a ride in progress."),
        (status = 422, description = "`validation_failed`: a position is out of range, or the trip is shorter than 50 m or longer than 150 km."),
    ))]
pub async fn request(
    State(state): State<AppState>,
    user: AuthUser,
    headers: CommandHeaders,
    ValidJson(req): ValidJson<RideRequest>,
) -> Result<Response, ApiError> {
    user.require(Role::Rider)?;
    let pickup = req.pickup.check("pickup")?;
    let dropoff = req.dropoff.check("dropoff")?;
    let straight = pickup.distance_m(&dropoff);
    if straight < validation::MIN_TRIP_M {
        return Err(ApiError::field(
            "dropoff",
            format!("must be at least {} m from the pickup", validation::MIN_TRIP_M),
        ));
    }
    if straight > validation::MAX_TRIP_M {
        let km = validation::MAX_TRIP_M / 1000.0;
        return Err(ApiError::field("dropoff", format!("must be within {km} km of the pickup")));
    }
    let fp = fingerprint("POST /v1/rides", &req);
    let ride_id = RideId::new();
    let command = RideCommand::RequestRide(RequestRide { rider_id: user.user_id, pickup, dropoff });
    submit(&state, &headers, &user.user_id.to_string(), fp, ride_submission(user, ride_id, command, true)).await
}

/// One ride. While the store is down, an older copy from the cache is served, marked
/// `X-Ridehail-Stale: true` with its `Age` in seconds.
#[utoipa::path(get, path = "/v1/rides/{id}", tag = "rides", operation_id = "getRide", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "The ride id.")),
    responses(
        (status = 200, description = "The ride (its rider's, its driver's, or offered to the caller).", body = ref("#/components/schemas/RideView"),
            headers(
                ("X-Ridehail-Stale" = String, description = "`true` when the store is down and this is an older copy from the cache."),
                ("Age" = u64, description = "With `X-Ridehail-Stale`: how old the copy is, in seconds."),
            )),
        (status = 404, description = "`not_found`: no such ride, or not the caller's to see."),
    ))]
pub async fn get(State(state): State<AppState>, user: AuthUser, Path(id): Path<String>) -> Result<Response, ApiError> {
    use axum::response::IntoResponse as _;
    let ride_id: RideId = parse_id(&id, "ride_id")?;
    let (view, stale_for) =
        crate::views::visible_ride_or_stale(&state, ride_id, user).await?.ok_or(ApiError::NotFound("no such ride"))?;
    let mut response = Json(view).into_response();
    if let Some(age) = stale_for {
        let headers = response.headers_mut();
        headers.insert("x-ridehail-stale", axum::http::HeaderValue::from_static("true"));
        headers.insert(axum::http::header::AGE, axum::http::HeaderValue::from(age.as_secs()));
    }
    Ok(response)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    pub status: Option<String>,
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

/// The caller's rides (as rider, or as driver), newest first.
#[utoipa::path(get, path = "/v1/rides", tag = "rides", operation_id = "listRides", security(("bearer" = [])),
    params(
        ("status" = Option<String>, Query, description = "Only rides in this state."),
        ("limit" = Option<u32>, Query, description = "Page size, 1 to 100 (default 20).", minimum = 1, maximum = 100),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page.", pattern = "^[A-Za-z0-9_-]{22}$"),
    ),
    responses(
        (status = 200, description = "One page.", body = ref("#/components/schemas/RidePage")),
        (status = 422, description = "`validation_failed`: `limit`, `status` or `cursor` is invalid."),
    ))]
pub async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    ValidQuery(params): ValidQuery<ListParams>,
) -> Result<Json<RidePage>, ApiError> {
    let limit = params.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::field("limit", format!("must be between 1 and {MAX_PAGE}")));
    }
    let status = params
        .status
        .as_deref()
        .map(|s| RideStatus::parse(s).ok_or_else(|| ApiError::field("status", "is not a ride status")))
        .transpose()?;
    let before = params.cursor.as_deref().map(decode_cursor).transpose()?;
    let party = match user.role {
        Role::Rider => RideParty::Rider(user.user_id),
        Role::Driver => RideParty::Driver(user.user_id),
    };
    let rides = state.backend.rides.list(&RideQuery { party, status, limit, before }).await?;
    let next_cursor = (rides.len() == limit).then(|| rides.last().map(|r| encode_cursor(r.ride_id))).flatten();
    Ok(Json(RidePage { items: rides, next_cursor }))
}

/// One page of the caller's rides, newest first.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct RidePage {
    pub items: Vec<RideView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// A ride's public events, oldest first.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct RideHistory {
    pub ride_id: RideId,
    pub events: Vec<WireEvent>,
}

/// Cursors are opaque to clients: the last ride id of the page, base64url-encoded.
fn encode_cursor(ride_id: RideId) -> String {
    URL_SAFE_NO_PAD.encode(ride_id.0.as_bytes())
}

fn decode_cursor(cursor: &str) -> Result<RideId, ApiError> {
    let bytes =
        URL_SAFE_NO_PAD.decode(cursor).map_err(|_| ApiError::field("cursor", "is not a cursor from this API"))?;
    let uuid =
        uuid::Uuid::from_slice(&bytes).map_err(|_| ApiError::field("cursor", "is not a cursor from this API"))?;
    Ok(RideId(uuid))
}

/// The ride's public events, oldest first (the analytics schemas of `schemas/`).
#[utoipa::path(get, path = "/v1/rides/{id}/history", tag = "rides", operation_id = "getRideHistory",
    security(("bearer" = [])), params(("id" = uuid::Uuid, Path, description = "The ride id.")),
    responses(
        (status = 200, description = "The events.", body = ref("#/components/schemas/RideHistory")),
        (status = 404, description = "`not_found`: no such ride, or not the caller's to see."),
    ))]
pub async fn history(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<RideHistory>, ApiError> {
    let ride = own_ride(&state, &id, user).await?;
    let events = state.backend.events.read_stream(ride.ride_id.0).await?;
    let public: Vec<WireEvent> = events
        .into_iter()
        .filter(|w| {
            use ridehail_events::Message;
            RideEvent::decode(&w.event_type, w.schema_version, w.payload.clone()).is_ok_and(|e| e.is_public())
        })
        .collect();
    Ok(Json(RideHistory { ride_id: ride.ride_id, events: public }))
}

/// Why the ride is cancelled.
#[derive(Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    /// Not blank.
    #[serde(default)]
    #[schemars(required, length(min = 1, max = 200), regex(pattern = r"\S"))]
    pub reason: String,
}

/// Cancel the ride (its rider, or its driver before the trip starts).
#[utoipa::path(post, path = "/v1/rides/{id}/cancel", tag = "rides", operation_id = "cancelRide",
    security(("bearer" = [])), params(("id" = uuid::Uuid, Path, description = "The ride id.")),
    request_body(content = ref("#/components/schemas/CancelRequest"), content_type = "application/json"),
    responses(
        (status = 202, description = "Submitted: follow `status_url`.", body = ref("#/components/schemas/Accepted")),
        (status = 200, description = "With `Prefer: wait`: the cancelled ride.", body = ref("#/components/schemas/RideView")),
        (status = 404, description = "`not_found`: no such ride, or not the caller's to see."),
        (status = 422, description = "`validation_failed`: the reason is too long."),
    ))]
pub async fn cancel(
    State(state): State<AppState>,
    user: AuthUser,
    headers: CommandHeaders,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: CancelRequest = optional_body(&body)?;
    if !validation::valid_reason(&req.reason) {
        return Err(ApiError::field(
            "reason",
            format!("must be given, at most {} characters", validation::MAX_REASON_CHARS),
        ));
    }
    let ride = own_ride(&state, &id, user).await?;
    let cancelled_by = match user.role {
        Role::Rider => Canceller::Rider { rider_id: user.user_id },
        Role::Driver => Canceller::Driver { driver_id: user.user_id },
    };
    let fp = fingerprint(&format!("POST /v1/rides/{}/cancel", ride.ride_id), &req);
    let command = RideCommand::CancelRide(CancelRide { cancelled_by, reason: req.reason });
    submit(&state, &headers, &user.user_id.to_string(), fp, ride_submission(user, ride.ride_id, command, false)).await
}

/// Stars for the other party of a completed ride.
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RatingRequest {
    #[schemars(range(min = 1, max = 5))]
    pub stars: u8,
    #[serde(default)]
    #[schemars(length(max = 500))]
    pub comment: Option<String>,
}

/// Rate the other party of a completed ride.
#[utoipa::path(post, path = "/v1/rides/{id}/rating", tag = "rides", operation_id = "rateRide",
    security(("bearer" = [])), params(("id" = uuid::Uuid, Path, description = "The ride id.")),
    request_body(content = ref("#/components/schemas/RatingRequest"), content_type = "application/json"),
    responses(
        (status = 202, description = "Submitted: follow `status_url`.", body = ref("#/components/schemas/Accepted")),
        (status = 200, description = "With `Prefer: wait`: the rated ride.", body = ref("#/components/schemas/RideView")),
        (status = 404, description = "`not_found`: no such ride, or not the caller's to see."),
        (status = 422, description = "`validation_failed`: stars outside 1 to 5, or the comment is too long."),
    ))]
pub async fn rate(
    State(state): State<AppState>,
    user: AuthUser,
    headers: CommandHeaders,
    Path(id): Path<String>,
    ValidJson(req): ValidJson<RatingRequest>,
) -> Result<Response, ApiError> {
    if !validation::STARS.contains(&req.stars) {
        let (min, max) = (validation::STARS.start(), validation::STARS.end());
        return Err(ApiError::field("stars", format!("must be between {min} and {max}")));
    }
    if !validation::valid_comment(req.comment.as_deref()) {
        return Err(ApiError::field(
            "comment",
            format!("must be at most {} characters", validation::MAX_COMMENT_CHARS),
        ));
    }
    let ride = own_ride(&state, &id, user).await?;
    let by = match user.role {
        Role::Rider => RatingParty::Rider,
        Role::Driver => RatingParty::Driver,
    };
    let fp = fingerprint(&format!("POST /v1/rides/{}/rating", ride.ride_id), &req);
    let command =
        RideCommand::RateRide(RateRide { by, rater_id: user.user_id, stars: req.stars, comment: req.comment });
    submit(&state, &headers, &user.user_id.to_string(), fp, ride_submission(user, ride.ride_id, command, false)).await
}

// ------------------------------------------------------------------ driver

#[derive(Debug, Clone, Copy)]
pub enum DriverAction {
    Accept,
    Decline,
    Arrive,
    Start,
    Complete,
}

/// The trip as driven (the body may be left out: the fare uses the straight-line distance).
#[derive(Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteRequest {
    #[serde(default)]
    pub distance_meters: Option<u32>,
}

/// An optional JSON body: empty means the defaults.
fn optional_body<T: Default + serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            ApiError::MalformedJson(e.to_string())
        } else {
            ApiError::InvalidBody {
                status: axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                detail: e.to_string(),
                field: None,
            }
        }
    })
}

pub async fn driver_action(
    state: AppState,
    user: AuthUser,
    headers: CommandHeaders,
    id: String,
    action: DriverAction,
    body: Bytes,
) -> Result<Response, ApiError> {
    user.require(Role::Driver)?;
    let ride = own_ride(&state, &id, user).await?;
    let driver_id = user.user_id;
    let (name, command) = match action {
        DriverAction::Accept => ("accept", RideCommand::AcceptRide(AcceptRide { driver_id })),
        DriverAction::Decline => ("decline", RideCommand::DeclineRide(DeclineRide { driver_id })),
        DriverAction::Arrive => ("arrive", RideCommand::ArriveAtPickup(ArriveAtPickup { driver_id })),
        DriverAction::Start => ("start", RideCommand::StartRide(StartRide { driver_id })),
        DriverAction::Complete => {
            let req: CompleteRequest = optional_body(&body)?;
            ("complete", RideCommand::CompleteRide(CompleteRide { driver_id, distance_meters: req.distance_meters }))
        }
    };
    let fp = fingerprint(&format!("POST /v1/rides/{}/{name}", ride.ride_id), &String::from_utf8_lossy(&body));
    submit(&state, &headers, &user.user_id.to_string(), fp, ride_submission(user, ride.ride_id, command, false)).await
}

macro_rules! driver_route {
    ($(#[$meta:meta])* $name:ident, $action:expr) => {
        $(#[$meta])*
        pub async fn $name(
            State(state): State<AppState>,
            user: AuthUser,
            headers: CommandHeaders,
            Path(id): Path<String>,
            body: Bytes,
        ) -> Result<Response, ApiError> {
            driver_action(state, user, headers, id, $action, body).await
        }
    };
}

driver_route!(
    /// Take the ride offered to the caller.
    #[utoipa::path(post, path = "/v1/rides/{id}/accept", tag = "drivers", operation_id = "acceptRide",
        security(("bearer" = [])), params(("id" = uuid::Uuid, Path, description = "The ride id.")), 
        responses(
            (status = 202, description = "Submitted: follow `status_url`.", body = ref("#/components/schemas/Accepted")),
            (status = 200, description = "With `Prefer: wait`: the ride, assigned to the caller.", body = ref("#/components/schemas/RideView")),
            (status = 403, description = "`forbidden`: only drivers accept rides."),
            (status = 404, description = "`not_found`: no such ride, or not offered or assigned to the caller."),
        ))]
    accept,
    DriverAction::Accept);
driver_route!(
    /// Turn down the ride offered to the caller (it is offered to another driver).
    #[utoipa::path(post, path = "/v1/rides/{id}/decline", tag = "drivers", operation_id = "declineRide",
        security(("bearer" = [])), params(("id" = uuid::Uuid, Path, description = "The ride id.")), 
        responses(
            (status = 202, description = "Submitted: follow `status_url`.", body = ref("#/components/schemas/Accepted")),
            (status = 200, description = "With `Prefer: wait`: the ride.", body = ref("#/components/schemas/RideView")),
            (status = 403, description = "`forbidden`: only drivers decline rides."),
            (status = 404, description = "`not_found`: no such ride, or not offered or assigned to the caller."),
        ))]
    decline,
    DriverAction::Decline);
driver_route!(
    /// The driver is at the pickup.
    #[utoipa::path(post, path = "/v1/rides/{id}/arrive", tag = "drivers", operation_id = "arriveAtPickup",
        security(("bearer" = [])), params(("id" = uuid::Uuid, Path, description = "The ride id.")), 
        responses(
            (status = 202, description = "Submitted: follow `status_url`.", body = ref("#/components/schemas/Accepted")),
            (status = 200, description = "With `Prefer: wait`: the ride.", body = ref("#/components/schemas/RideView")),
            (status = 403, description = "`forbidden`: only drivers arrive rides."),
            (status = 404, description = "`not_found`: no such ride, or not offered or assigned to the caller."),
        ))]
    arrive,
    DriverAction::Arrive);
driver_route!(
    /// The rider is on board.
    #[utoipa::path(post, path = "/v1/rides/{id}/start", tag = "drivers", operation_id = "startRide",
        security(("bearer" = [])), params(("id" = uuid::Uuid, Path, description = "The ride id.")), 
        responses(
            (status = 202, description = "Submitted: follow `status_url`.", body = ref("#/components/schemas/Accepted")),
            (status = 200, description = "With `Prefer: wait`: the ride.", body = ref("#/components/schemas/RideView")),
            (status = 403, description = "`forbidden`: only drivers start rides."),
            (status = 404, description = "`not_found`: no such ride, or not offered or assigned to the caller."),
        ))]
    start,
    DriverAction::Start);
driver_route!(
    /// The trip is over: the fare is computed.
    #[utoipa::path(post, path = "/v1/rides/{id}/complete", tag = "drivers", operation_id = "completeRide",
        security(("bearer" = [])), params(("id" = uuid::Uuid, Path, description = "The ride id.")), request_body(content = ref("#/components/schemas/CompleteRequest"), content_type = "application/json", description = "May be left out."),
        responses(
            (status = 202, description = "Submitted: follow `status_url`.", body = ref("#/components/schemas/Accepted")),
            (status = 200, description = "With `Prefer: wait`: the ride, with its fare.", body = ref("#/components/schemas/RideView")),
            (status = 403, description = "`forbidden`: only drivers complete rides."),
            (status = 404, description = "`not_found`: no such ride, or not offered or assigned to the caller."),
        ))]
    complete,
    DriverAction::Complete);
