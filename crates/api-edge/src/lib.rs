//! api-edge: Ridehail's HTTP edge. It authenticates (JWT), validates, and publishes commands,
//! answering `202 Accepted` with ids to follow; queries are served from the read models.
//!
//! - [`router`] builds the whole `Router` from an [`AppState`] (tests drive it with `oneshot`);
//!   [`serve`] runs it on a listener until shutdown.
//! - [`submit`]: the single command-submission path (idempotency keys, status, publish, `Prefer: wait`).
//! - [`error`]: the one error type, mapped to `application/problem+json` in one place.
//! - [`auth`], [`password`], [`extract`]: tokens, argon2id, request parsing.
//! - [`routes`]: one file per resource; [`views`]: what a caller may read and how it is rendered.

pub mod auth;
pub mod error;
pub mod extract;
pub mod password;
pub mod routes;
pub mod submit;
pub mod views;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::routing::{get, post, put};
use ridehail_ports::Backend;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::timeout::TimeoutLayer;

use crate::auth::JwtKeys;
use crate::error::{ApiError, problem};

/// The edge's settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EdgeConfig {
    /// Largest request body accepted, in bytes.
    pub body_limit_bytes: usize,
    /// Origins allowed to call the API from a browser; empty = no CORS headers at all.
    pub cors_allowed_origins: Vec<String>,
    /// Whole-request deadline; longer than the longest `Prefer: wait`.
    pub request_timeout_seconds: u64,
    /// Cap on `Prefer: wait=N`.
    pub max_wait_seconds: u64,
    pub idempotency_ttl_hours: u32,
    pub token_ttl_minutes: u32,
    pub token_issuer: String,
    /// Threads that hash and verify passwords (each hash: ~19 MiB, tens of ms).
    pub password_threads: usize,
    /// Password requests allowed to wait for a thread; beyond that the edge answers 503.
    pub password_queue: usize,
    /// Requests handled at once (a `Prefer: wait` request holds its place while it waits); beyond
    /// that the edge answers 503 at once instead of queueing, so an overload cannot build up latency
    /// and memory without bound.
    pub max_in_flight: usize,
}

impl EdgeConfig {
    /// Refuses settings that cannot work together.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.max_wait_seconds + 2 < self.request_timeout_seconds,
            "edge.max_wait_seconds ({}) must be at least 3 s below edge.request_timeout_seconds ({})",
            self.max_wait_seconds,
            self.request_timeout_seconds
        );
        anyhow::ensure!(self.max_in_flight > 0 && self.password_threads > 0, "edge limits must be positive");
        Ok(())
    }
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            body_limit_bytes: 16 * 1024,
            cors_allowed_origins: Vec::new(),
            request_timeout_seconds: 15,
            max_wait_seconds: 10,
            idempotency_ttl_hours: 24,
            token_ttl_minutes: 60,
            token_issuer: "ridehail".into(),
            password_threads: 2,
            password_queue: 256,
            max_in_flight: 256,
        }
    }
}

/// Everything a handler needs. One `Arc` inside: axum clones the state for every request, and one
/// reference count is cheaper than the dozen of the parts.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Shared>);

/// The parts of [`AppState`], reached through `Deref` (`state.backend`, `state.keys`, …).
#[derive(Debug)]
pub struct Shared {
    pub backend: Backend,
    pub keys: Arc<JwtKeys>,
    pub config: Arc<EdgeConfig>,
    pub passwords: password::PasswordPool,
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    pub fn new(backend: Backend, keys: JwtKeys, config: EdgeConfig) -> Self {
        let passwords = password::PasswordPool::new(config.password_threads, config.password_queue);
        Self(Arc::new(Shared { backend, keys: Arc::new(keys), config: Arc::new(config), passwords }))
    }
}

pub fn router(state: AppState) -> Router {
    use routes::*;
    let config = state.config.clone();
    let api = Router::new()
        .route("/v1/users", post(users::register))
        .route("/v1/sessions", post(sessions::login))
        .route("/v1/me", get(users::me).patch(users::update_me))
        .route("/v1/rides", post(rides::request).get(rides::list))
        .route("/v1/rides/{id}", get(rides::get))
        .route("/v1/rides/{id}/history", get(rides::history))
        .route("/v1/rides/{id}/cancel", post(rides::cancel))
        .route("/v1/rides/{id}/rating", post(rides::rate))
        .route("/v1/rides/{id}/accept", post(rides::accept))
        .route("/v1/rides/{id}/decline", post(rides::decline))
        .route("/v1/rides/{id}/arrive", post(rides::arrive))
        .route("/v1/rides/{id}/start", post(rides::start))
        .route("/v1/rides/{id}/complete", post(rides::complete))
        .route("/v1/drivers/me/availability", put(drivers::set_availability))
        .route("/v1/drivers/me/location", put(drivers::set_location))
        .route("/v1/commands/{id}", get(commands::get))
        .fallback(|| async { ApiError::NotFound("no such route") })
        .method_not_allowed_fallback(|| async {
            problem(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "Method not allowed", None, vec![])
        })
        .with_state(state.clone());
    // Health checks are never shed: an overloaded edge is alive, and restarting it would drop the
    // requests it is answering.
    let health = Router::new()
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .with_state(state);
    // One semaphore for the whole API (router layers are applied per route).
    let in_flight = Arc::new(tokio::sync::Semaphore::new(config.max_in_flight.max(1)));
    api.layer(axum::middleware::from_fn_with_state(in_flight, shed_load))
        .merge(health)
        .layer(axum::middleware::from_fn(extract::correlation_layer))
        .layer(DefaultBodyLimit::max(config.body_limit_bytes))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_secs(config.request_timeout_seconds),
        ))
        .layer(cors(&config.cors_allowed_origins))
        .layer(CatchPanicLayer::custom(|_| {
            problem(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error", None, vec![])
        }))
}

/// Admits a request if fewer than `max_in_flight` are being handled, else answers 503 at once.
async fn shed_load(
    axum::extract::State(in_flight): axum::extract::State<Arc<tokio::sync::Semaphore>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let Ok(_permit) = in_flight.try_acquire_owned() else {
        let mut response = problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "Overloaded",
            Some("too many requests in flight; retry shortly".into()),
            vec![],
        );
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    };
    next.run(request).await
}

fn cors(origins: &[String]) -> CorsLayer {
    let allowed: Vec<HeaderValue> = origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(allowed))
        .allow_methods([Method::GET, Method::POST, Method::PUT, Method::PATCH])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::HeaderName::from_static("idempotency-key"),
            header::HeaderName::from_static("prefer"),
            header::HeaderName::from_static("x-correlation-id"),
        ])
        .expose_headers([header::LOCATION, header::HeaderName::from_static("x-correlation-id")])
        .max_age(Duration::from_secs(600))
}

/// Serves until `shutdown`, then stops accepting and lets requests in flight finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(async move { shutdown.cancelled().await }).await?;
    Ok(())
}
