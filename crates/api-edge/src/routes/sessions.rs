//! `POST /v1/sessions`: log in with e-mail and password, get a bearer token.

use axum::Json;
use axum::extract::State;
use ridehail_events::ids::normalise_email;
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::ApiError;
use crate::extract::ValidJson;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
}

pub async fn login(
    State(state): State<AppState>,
    ValidJson(req): ValidJson<LoginRequest>,
) -> Result<Json<Value>, ApiError> {
    if req.password.len() > 1024 {
        return Err(ApiError::InvalidCredentials);
    }
    let credentials = state.backend.users.credentials_by_email(&normalise_email(&req.email)).await?;
    let stored = credentials.as_ref().map(|c| c.password_hash.0.clone());
    if !state.passwords.verify(SecretString::from(req.password), stored).await? {
        return Err(ApiError::InvalidCredentials);
    }
    let credentials = credentials.ok_or(ApiError::InvalidCredentials)?;
    let (token, expires_in) = state.keys.issue(credentials.user_id, credentials.role, state.backend.clock.now())?;
    Ok(Json(json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": expires_in,
        "user_id": credentials.user_id,
        "role": credentials.role,
    })))
}
