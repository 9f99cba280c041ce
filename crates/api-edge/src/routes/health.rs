//! Liveness (the process answers) and readiness (every dependency answers).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use ridehail_ports::DependencyHealth;
use serde::Serialize;

use crate::AppState;

/// The public keys tokens are verified with (JWKS, RFC 7517), for services that check Ridehail's
/// tokens themselves.
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "operations", operation_id = "getJwks", security(()),
    responses((status = 200, description = "The public keys (Ed25519, RFC 8037) of the tokens in use.", body = ref("#/components/schemas/Jwks"))))]
pub async fn jwks(State(state): State<AppState>) -> impl axum::response::IntoResponse {
    ([(axum::http::header::CACHE_CONTROL, "public, max-age=300")], Json(state.keys.jwks().clone()))
}

/// The answer of `/health/live`.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Liveness {
    pub status: HealthState,
}

/// The answer of `/health/ready`: each dependency, checked through its circuit breaker.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Readiness {
    pub status: HealthState,
    pub checks: Vec<DependencyHealth>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    Ok,
    Unavailable,
}

/// The process answers (it is not stuck).
#[utoipa::path(get, path = "/health/live", tag = "operations", operation_id = "live", security(()),
    responses((status = 200, description = "Alive.", body = ref("#/components/schemas/Liveness"))))]
pub async fn live() -> Json<Liveness> {
    Json(Liveness { status: HealthState::Ok })
}

/// Every dependency answers.
#[utoipa::path(get, path = "/health/ready", tag = "operations", operation_id = "ready", security(()),
    responses(
        (status = 200, description = "Ready.", body = ref("#/components/schemas/Readiness")),
        (status = 503, description = "Not ready: `checks` says which dependency fails.", body = ref("#/components/schemas/Readiness")),
    ))]
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    readiness(&state.backend).await
}

/// Every dependency checked (through its breaker): `200` when all answer, else `503` naming them.
pub async fn readiness(backend: &ridehail_ports::Backend) -> (StatusCode, Json<Readiness>) {
    let checks = backend.check().await;
    for failed in checks.iter().filter(|c| !c.ok) {
        tracing::warn!(dependency = failed.name, error = failed.error.as_deref().unwrap_or(""), "not ready");
    }
    let ok = checks.iter().all(|c| c.ok);
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(Readiness { status: if ok { HealthState::Ok } else { HealthState::Unavailable }, checks }))
}
