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
use serde_json::{Value, json};

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

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RideRequest {
    pub pickup: Position,
    pub dropoff: Position,
}

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

pub async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    ValidQuery(params): ValidQuery<ListParams>,
) -> Result<Json<Value>, ApiError> {
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
    Ok(Json(json!({ "items": rides, "next_cursor": next_cursor })))
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

pub async fn history(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let ride = own_ride(&state, &id, user).await?;
    let events = state.backend.events.read_stream(ride.ride_id.0).await?;
    let public: Vec<WireEvent> = events
        .into_iter()
        .filter(|w| {
            use ridehail_events::Message;
            RideEvent::decode(&w.event_type, w.schema_version, w.payload.clone()).is_ok_and(|e| e.is_public())
        })
        .collect();
    Ok(Json(json!({ "ride_id": ride.ride_id, "events": public })))
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    #[serde(default)]
    pub reason: String,
}

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

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RatingRequest {
    pub stars: u8,
    #[serde(default)]
    pub comment: Option<String>,
}

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

#[derive(Debug, Default, Serialize, Deserialize)]
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
    ($name:ident, $action:expr) => {
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

driver_route!(accept, DriverAction::Accept);
driver_route!(decline, DriverAction::Decline);
driver_route!(arrive, DriverAction::Arrive);
driver_route!(start, DriverAction::Start);
driver_route!(complete, DriverAction::Complete);
