//! api-edge: Ridehail's HTTP edge. It authenticates (JWT), validates, and publishes commands,
//! answering `202 Accepted` with ids to follow; queries are served from the read models.
//!
//! - [`router`] builds the whole `Router` from an [`AppState`] (tests drive it with `oneshot`);
//!   [`serve`] runs it on a listener until shutdown.
//! - [`submit`]: the single command-submission path (idempotency keys, status, publish, `Prefer: wait`).
//! - [`error`]: the one error type, mapped to `application/problem+json` in one place.
//! - [`auth`], [`password`], [`extract`]: tokens, argon2id, request parsing.
//! - [`routes`]: one file per resource; [`views`]: what a caller may read and how it is rendered.

pub mod admin;
pub mod auth;
pub mod error;
pub mod extract;
pub mod limits;
pub mod live;
pub mod openapi;
pub mod password;
pub mod routes;
pub mod server;
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
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::timeout::TimeoutLayer;

use crate::auth::JwtKeys;
use crate::error::{ApiError, problem};

pub use limits::LimitsConfig;
pub use server::TlsConfig;

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
    /// Lifetime of the tokens this edge issues.
    pub token_ttl_minutes: u32,
    /// Tokens living longer than this (`exp - iat`) are refused, whoever signed them.
    pub token_max_lifetime_minutes: u32,
    pub token_issuer: String,
    /// The `aud` every token must carry.
    pub token_audience: String,
    /// Threads that hash the passwords of sign-ups (each hash: ~19 MiB, tens of ms). Logins have
    /// their own threads, so a flood of logins cannot starve sign-ups, nor the other way round.
    pub signup_password_threads: usize,
    /// Threads that verify the passwords of logins.
    pub login_password_threads: usize,
    /// Password requests allowed to wait for a thread, per pool; beyond that the edge answers 503.
    pub password_queue: usize,
    /// Per-client limits (rates per address and per user, login lock-outs).
    pub limits: LimitsConfig,
    /// A connection must send a request's headers within this long (also the limit on an idle
    /// keep-alive connection), in seconds.
    pub header_read_timeout_seconds: u64,
    /// A request's body must arrive within this long, in seconds, before the request takes a place
    /// among those in flight: a client trickling bodies holds only its connection.
    pub body_read_timeout_seconds: u64,
    /// Connections open at once; beyond that new ones wait in the listen backlog.
    pub max_connections: usize,
    /// HTTPS: certificate chain and key (PEM files), reloaded when they change.
    pub tls: Option<TlsConfig>,
    /// Requests handled at once (a `Prefer: wait` request holds its place while it waits); beyond
    /// that the edge answers 503 at once instead of queueing, so an overload cannot build up latency
    /// and memory without bound.
    pub max_in_flight: usize,
    /// Live-update streams (`/v1/rides/{id}/updates`) one user may hold open on one edge.
    pub max_streams_per_user: usize,
    /// A stream with no wake-up looks at its ride again after this long, in seconds.
    pub live_recheck_seconds: u64,
    /// A comment line on every open stream this often, in seconds.
    pub live_heartbeat_seconds: u64,
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
        anyhow::ensure!(
            self.max_in_flight > 0
                && self.signup_password_threads > 0
                && self.login_password_threads > 0
                && self.max_connections > 0
                && self.header_read_timeout_seconds > 0
                && self.body_read_timeout_seconds > 0,
            "edge limits must be positive"
        );
        anyhow::ensure!(
            self.body_read_timeout_seconds < self.request_timeout_seconds,
            "edge.body_read_timeout_seconds must be below edge.request_timeout_seconds"
        );
        self.limits.validate()?;
        for origin in &self.cors_allowed_origins {
            anyhow::ensure!(
                origin != "*",
                "edge.cors_allowed_origins cannot be \"*\": list the origins allowed to call the API with credentials"
            );
            let valid = HeaderValue::from_str(origin).is_ok()
                && (origin.starts_with("https://") || origin.starts_with("http://"))
                && !origin.ends_with('/');
            anyhow::ensure!(valid, "edge.cors_allowed_origins: {origin:?} is not an origin (scheme://host[:port])");
        }
        anyhow::ensure!(
            self.token_ttl_minutes > 0 && self.token_ttl_minutes <= self.token_max_lifetime_minutes,
            "edge.token_ttl_minutes must be between 1 and edge.token_max_lifetime_minutes"
        );
        Ok(())
    }

    /// What tokens must say and how long they live.
    pub fn token_policy(&self) -> auth::TokenPolicy {
        auth::TokenPolicy {
            issuer: self.token_issuer.clone(),
            audience: self.token_audience.clone(),
            ttl: chrono::Duration::minutes(i64::from(self.token_ttl_minutes)),
            max_lifetime: chrono::Duration::minutes(i64::from(self.token_max_lifetime_minutes)),
            ..auth::TokenPolicy::default()
        }
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
            token_max_lifetime_minutes: 24 * 60,
            token_issuer: "ridehail".into(),
            token_audience: "ridehail-api".into(),
            signup_password_threads: 1,
            login_password_threads: 1,
            password_queue: 128,
            limits: LimitsConfig::default(),
            header_read_timeout_seconds: 10,
            body_read_timeout_seconds: 5,
            max_connections: 1024,
            tls: None,
            max_in_flight: 256,
            max_streams_per_user: 4,
            live_recheck_seconds: 5,
            live_heartbeat_seconds: 15,
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
    /// Hashes sign-ups' passwords.
    pub signup_passwords: password::PasswordPool,
    /// Verifies logins' passwords (a pool of its own: logins cannot starve sign-ups).
    pub login_passwords: password::PasswordPool,
    /// Key of the keyed hashes that stand in for personal data (audit lines, sign-up idempotency).
    pub hash_key: secrecy::SecretString,
    /// Wakes the live-update streams of the rides that change.
    pub live: Arc<live::RideFeed>,
    /// Cancelled when the edge shuts down: open streams end (clients reconnect with their ids).
    pub shutdown: tokio_util::sync::CancellationToken,
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    pub fn new(backend: Backend, keys: JwtKeys, config: EdgeConfig, hash_key: secrecy::SecretString) -> Self {
        let signup_passwords = password::PasswordPool::new(config.signup_password_threads, config.password_queue);
        let login_passwords = password::PasswordPool::new(config.login_password_threads, config.password_queue);
        Self(Arc::new(Shared {
            backend,
            keys: Arc::new(keys),
            config: Arc::new(config),
            signup_passwords,
            login_passwords,
            hash_key,
            live: Arc::default(),
            shutdown: tokio_util::sync::CancellationToken::new(),
        }))
    }

    /// A keyed hash (HMAC-SHA-256, hex) of `value`: names personal data (an e-mail in an audit
    /// line, a sign-up's idempotency scope) without revealing it to whoever lacks the key.
    pub fn keyed_hash(&self, value: &str) -> String {
        use hmac::Mac as _;
        use secrecy::ExposeSecret as _;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(self.hash_key.expose_secret().as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(value.as_bytes());
        mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
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
        .route("/v1/rides/{id}/updates", get(live::updates))
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
        .route("/admin/dead-letters", get(dead_letters::list))
        .route("/admin/dead-letters/{id}", get(dead_letters::get))
        .route("/admin/dead-letters/redrive", post(dead_letters::redrive))
        .route("/admin/dead-letters/purge", post(dead_letters::purge))
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
        .route("/metrics", get(admin::metrics))
        .route("/.well-known/jwks.json", get(health::jwks))
        .with_state(state.clone())
        .merge(
            utoipa_swagger_ui::SwaggerUi::new("/docs")
                .external_url_unchecked("/openapi.json", openapi::document().clone()),
        );
    // One semaphore for the whole API (router layers are applied per route). Outermost first: the
    // body is read under its own deadline, then the client's rates are counted, and only then does
    // the request take a place among those in flight.
    let in_flight = Arc::new(tokio::sync::Semaphore::new(config.max_in_flight.max(1)));
    let hsts =
        config.tls.as_ref().filter(|t| t.hsts_max_age_seconds > 0).and_then(|t| {
            HeaderValue::from_str(&format!("max-age={}; includeSubDomains", t.hsts_max_age_seconds)).ok()
        });
    let app = api
        .layer(axum::middleware::from_fn_with_state(in_flight, shed_load))
        .layer(axum::middleware::from_fn_with_state(state, limits::rate_limit))
        .layer(axum::middleware::from_fn_with_state(config.clone(), read_body))
        .merge(health)
        .layer(axum::middleware::from_fn(extract::correlation_layer))
        .layer(DefaultBodyLimit::max(config.body_limit_bytes))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_secs(config.request_timeout_seconds),
        ))
        .layer(cors(&config.cors_allowed_origins));
    let app = match hsts {
        Some(value) => app.layer(tower_http::set_header::SetResponseHeaderLayer::overriding(
            header::STRICT_TRANSPORT_SECURITY,
            value,
        )),
        None => app,
    };
    app.layer(CatchPanicLayer::custom(|_| {
        problem(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error", None, vec![])
    }))
}

/// Reads the whole body (at most `body_limit_bytes`) within `body_read_timeout_seconds`, before the
/// request goes on: a client trickling a body holds its connection, never a place in flight.
async fn read_body(
    axum::extract::State(config): axum::extract::State<Arc<EdgeConfig>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let (parts, body) = request.into_parts();
    let deadline = Duration::from_secs(config.body_read_timeout_seconds);
    match tokio::time::timeout(deadline, axum::body::to_bytes(body, config.body_limit_bytes)).await {
        Err(_) => ApiError::BodyTimeout.into_response(),
        Ok(Err(_)) => ApiError::BodyTooLarge.into_response(),
        Ok(Ok(bytes)) => next.run(axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes))).await,
    }
}

/// Admits a request if fewer than `max_in_flight` are being handled, else answers 503 at once.
async fn shed_load(
    axum::extract::State(in_flight): axum::extract::State<Arc<tokio::sync::Semaphore>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let Ok(_permit) = in_flight.try_acquire_owned() else {
        ridehail_runtime::metrics::http_shed("overloaded");
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

pub use server::serve;
