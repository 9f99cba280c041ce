//! Liveness (the process answers) and readiness (every dependency answers).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::AppState;

/// The public keys tokens are verified with (JWKS, RFC 7517), for services that check Ridehail's
/// tokens themselves.
pub async fn jwks(State(state): State<AppState>) -> impl axum::response::IntoResponse {
    ([(axum::http::header::CACHE_CONTROL, "public, max-age=300")], Json(state.keys.jwks().clone()))
}

pub async fn live() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    readiness(&state.backend).await
}

/// Every dependency checked (through its breaker): `200` when all answer, else `503` naming them.
pub async fn readiness(backend: &ridehail_ports::Backend) -> (StatusCode, Json<Value>) {
    let checks = backend.check().await;
    for failed in checks.iter().filter(|c| !c.ok) {
        tracing::warn!(dependency = failed.name, error = failed.error.as_deref().unwrap_or(""), "not ready");
    }
    let ok = checks.iter().all(|c| c.ok);
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({ "status": if ok { "ok" } else { "unavailable" }, "checks": checks })))
}
