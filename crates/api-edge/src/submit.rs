//! Command submission: the one path every write endpoint takes.
//!
//! 1. `Idempotency-Key`: a retry of the same request replays the first response; the same key with a
//!    different request is a 422; a concurrent duplicate is a 409.
//! 2. The command's status is recorded as pending, then the command is published, keyed by aggregate.
//! 3. `202 Accepted` with the command id, correlation id and `Location` of the status — or, with
//!    `Prefer: wait=N`, the outcome once known: `201`/`200` with the resource, or the rejection.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ridehail_events::{Actor, CommandEnvelope, CommandId, CorrelationId, Message};
use ridehail_ports::{CommandState, CommandStatus, IdempotencyClaim, Resource, StoredResponse};
use ridehail_runtime::records::command_record;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::AppState;
use crate::error::ApiError;
use crate::extract::CommandHeaders;
use crate::views;

/// One command to submit.
#[derive(Debug)]
pub struct Submission<C> {
    pub topic: &'static str,
    pub aggregate_id: Uuid,
    pub actor: Actor,
    pub command: C,
    pub resource: Resource,
    /// Answer 201 (a new resource) rather than 200 when the command is accepted in time.
    pub creates: bool,
    /// Who may read the resource after acceptance (for `Prefer: wait`); `None` for sign-ups.
    pub viewer: Option<crate::auth::AuthUser>,
    /// The answer may carry personal data (a new user's profile): the idempotency store keeps only
    /// the `202` (ids and links), and a replay answers with it.
    pub personal: bool,
}

/// Hash of what identifies a request for idempotency: route and parsed body.
pub fn fingerprint(route: &str, body: &impl Serialize) -> String {
    let mut hasher = Sha256::new();
    hasher.update(route.as_bytes());
    hasher.update([0]);
    hasher.update(serde_json::to_vec(body).unwrap_or_default());
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

pub async fn submit<C: Message>(
    state: &AppState,
    headers: &CommandHeaders,
    scope: &str,
    fingerprint: String,
    submission: Submission<C>,
) -> Result<Response, ApiError> {
    let Some(key) = headers.idempotency_key.as_deref() else {
        return submit_once(state, headers, submission, None).await;
    };
    let now = state.backend.clock.now();
    let ttl = chrono::Duration::hours(i64::from(state.config.idempotency_ttl_hours));
    match state.backend.idempotency.claim(scope, key, &fingerprint, now, ttl).await? {
        IdempotencyClaim::Replay(stored) => return Ok(replay(stored)),
        IdempotencyClaim::Mismatch => return Err(ApiError::IdempotencyMismatch),
        IdempotencyClaim::InProgress => return Err(ApiError::IdempotencyInProgress),
        IdempotencyClaim::Claimed => {}
    }
    let mut claim = ClaimedKey {
        state: state.clone(),
        scope: scope.to_owned(),
        key: key.to_owned(),
        published: Arc::new(Mutex::new(None)),
        settled: false,
    };
    let personal = submission.personal;
    let result = submit_once(state, headers, submission, Some(&claim.published)).await;
    claim.settled = true;
    match result {
        Ok(response) => {
            let (response, mut stored) = store(response).await?;
            if personal && let Some(accepted) = claim.published.lock().unwrap_or_else(|e| e.into_inner()).take() {
                stored = accepted;
            }
            // If this fails the key stays "in progress" until it expires: retries get 409, never a
            // second command.
            if let Err(e) = state.backend.idempotency.complete(scope, key, &stored).await {
                tracing::error!(error = format!("{e:#}"), "could not store the response of an idempotent request");
            }
            Ok(response)
        }
        Err(error) => {
            // Nothing was published: let the client retry with the key.
            if let Err(e) = state.backend.idempotency.release(scope, key).await {
                tracing::warn!(error = format!("{e:#}"), "could not release an idempotency key");
            }
            Err(error)
        }
    }
}

/// A claimed `Idempotency-Key` whose request may be abandoned (client gone, deadline hit) before it
/// settles: then the key keeps the 202 if the command was published, and is released if not.
struct ClaimedKey {
    state: AppState,
    scope: String,
    key: String,
    /// The 202 answer, set as soon as the command is on the bus.
    published: Arc<Mutex<Option<StoredResponse>>>,
    settled: bool,
}

impl Drop for ClaimedKey {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let published = self.published.lock().unwrap_or_else(|e| e.into_inner()).take();
        let (state, scope, key) = (self.state.clone(), std::mem::take(&mut self.scope), std::mem::take(&mut self.key));
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        runtime.spawn(async move {
            let idempotency = &state.backend.idempotency;
            let outcome = match published {
                Some(stored) => idempotency.complete(&scope, &key, &stored).await,
                None => idempotency.release(&scope, &key).await,
            };
            if let Err(e) = outcome {
                tracing::warn!(error = format!("{e:#}"), "could not settle an abandoned idempotency key");
            }
        });
    }
}

async fn submit_once<C: Message>(
    state: &AppState,
    headers: &CommandHeaders,
    submission: Submission<C>,
    published: Option<&Mutex<Option<StoredResponse>>>,
) -> Result<Response, ApiError> {
    let b = &state.backend;
    let now = b.clock.now();
    let envelope = CommandEnvelope {
        command_id: CommandId::new(),
        aggregate_id: submission.aggregate_id,
        correlation_id: headers.correlation_id,
        causation_id: None,
        actor: submission.actor.clone(),
        issued_at: now,
        command: submission.command,
    };
    let pending = CommandStatus::pending(&envelope, submission.resource);
    b.commands.record(&pending).await?;
    let record = command_record(&envelope.to_wire());
    b.bus.publish(submission.topic, vec![record]).await?;
    tracing::info!(command_id = %envelope.command_id, command_type = envelope.command.type_name(), "command published");

    // Published: from here on the answer is never an error (a retry would submit the command again),
    // at worst the plain 202.
    if let Some(published) = published {
        let (status, headers, body) = accepted_parts(&pending, submission.resource);
        *published.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(StoredResponse { status: status.as_u16(), headers, body });
    }
    // Wait no longer than the request's deadline allows: a wait cut short answers 202.
    let wait = headers.wait.map(|w| w.min(headers.deadline.saturating_duration_since(tokio::time::Instant::now())));
    if let Some(wait) = wait.filter(|w| !w.is_zero()) {
        match waited_response(
            state,
            envelope.command_id,
            wait,
            submission.resource,
            submission.creates,
            submission.viewer,
        )
        .await
        {
            Ok(Some(response)) => return Ok(response),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = ?e, "waiting for the outcome failed; answering 202"),
        }
    }
    Ok(accepted_response(&pending, submission.resource))
}

/// The outcome within `wait`, if the command reached one.
async fn waited_response(
    state: &AppState,
    command_id: CommandId,
    wait: std::time::Duration,
    resource: Resource,
    creates: bool,
    viewer: Option<crate::auth::AuthUser>,
) -> Result<Option<Response>, ApiError> {
    let status = state.backend.commands.wait_final(command_id, wait).await?;
    let Some(status) = status.filter(|s| s.state != CommandState::Pending) else { return Ok(None) };
    let mut response = outcome_response(state, &status, resource, creates, viewer).await?;
    if let Ok(value) = HeaderValue::from_str(&format!("wait={}", wait.as_secs())) {
        response.headers_mut().insert("preference-applied", value);
    }
    Ok(Some(response))
}

/// `202 Accepted` pointing at the command's status.
fn accepted_response(status: &CommandStatus, resource: Resource) -> Response {
    let (code, headers, body) = accepted_parts(status, resource);
    let mut response = (code, body).into_response();
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (name.parse::<header::HeaderName>(), HeaderValue::from_str(&value)) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

/// The body of a `202 Accepted`: where to follow the command and read what it acts on.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Accepted {
    pub command_id: CommandId,
    pub correlation_id: CorrelationId,
    pub status: SubmittedState,
    /// `/v1/commands/{command_id}` (also in `Location`).
    pub status_url: String,
    /// The ride the command acts on (ride commands).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ride_id: Option<Uuid>,
    /// The user the command acts on (sign-ups, profile and driver commands).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<Uuid>,
    pub resource_url: String,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SubmittedState {
    Pending,
}

/// The answer to `Prefer: wait` when the command was accepted but its resource cannot be shown yet.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct AcceptedOutcome {
    pub command_id: CommandId,
    pub status: OutcomeState,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeState {
    Accepted,
}

/// Status, headers and JSON body of the 202 answer.
fn accepted_parts(status: &CommandStatus, resource: Resource) -> (StatusCode, Vec<(String, String)>, Vec<u8>) {
    let status_url = format!("/v1/commands/{}", status.command_id);
    let (ride_id, user_id) = match resource {
        Resource::Ride(id) => (Some(id), None),
        Resource::User(id) => (None, Some(id)),
    };
    let body = Accepted {
        command_id: status.command_id,
        correlation_id: status.correlation_id,
        status: SubmittedState::Pending,
        status_url: status_url.clone(),
        ride_id,
        user_id,
        resource_url: resource.url(),
    };
    let headers = vec![
        (header::CONTENT_TYPE.as_str().to_owned(), "application/json".to_owned()),
        (header::LOCATION.as_str().to_owned(), status_url),
    ];
    (StatusCode::ACCEPTED, headers, serde_json::to_vec(&body).unwrap_or_default())
}

/// The answer once a command reached a final state.
async fn outcome_response(
    state: &AppState,
    status: &CommandStatus,
    resource: Resource,
    creates: bool,
    viewer: Option<crate::auth::AuthUser>,
) -> Result<Response, ApiError> {
    if let Some(rejection) = &status.rejection {
        return Ok(ApiError::Rejected(rejection.clone()).into_response());
    }
    if let Some(failure) = &status.failure {
        return Ok(ApiError::CommandFailed(failure.clone()).into_response());
    }
    let body = match resource {
        Resource::Ride(id) => {
            views::visible_ride(state, id.into(), viewer).await?.map(|v| serde_json::to_value(v).unwrap_or_default())
        }
        Resource::User(id) => views::profile_json(state, id.into()).await?,
    };
    let body = body.unwrap_or_else(|| {
        serde_json::to_value(AcceptedOutcome { command_id: status.command_id, status: OutcomeState::Accepted })
            .unwrap_or_default()
    });
    let code = if creates { StatusCode::CREATED } else { StatusCode::OK };
    let mut response = (code, axum::Json(body)).into_response();
    if let Ok(location) = HeaderValue::from_str(&resource.url()) {
        let name = if creates { header::LOCATION } else { header::CONTENT_LOCATION };
        response.headers_mut().insert(name, location);
    }
    Ok(response)
}

/// Buffers a response so it can be both sent and kept for replays.
async fn store(response: Response) -> Result<(Response, StoredResponse), ApiError> {
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.map_err(|e| ApiError::Unexpected(anyhow::anyhow!("{e}")))?;
    let headers = parts
        .headers
        .iter()
        .filter(|(name, _)| *name != header::CONTENT_LENGTH)
        .filter_map(|(name, value)| Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned())))
        .collect();
    let stored = StoredResponse { status: parts.status.as_u16(), headers, body: bytes.to_vec() };
    Ok((Response::from_parts(parts, Body::from(bytes)), stored))
}

fn replay(stored: StoredResponse) -> Response {
    let mut headers = HeaderMap::new();
    for (name, value) in &stored.headers {
        if let (Ok(name), Ok(value)) = (name.parse::<header::HeaderName>(), HeaderValue::from_str(value)) {
            headers.insert(name, value);
        }
    }
    headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    (status, headers, stored.body).into_response()
}
