//! `POST /v1/sessions`: log in with e-mail and password, get a bearer token.
//!
//! Guessing is throttled: failures are counted per account (by a keyed hash of the address, never
//! the address) and per client address, and past a few of them each further failure locks the key
//! out for longer (`429` + `Retry-After`, before any password is checked). Each failure and each
//! lock-out is an audit line (target `audit`) naming the account by that hash, the user id when the
//! account exists, and the client by a hash of its address.

use axum::Json;
use axum::extract::State;
use ridehail_events::ids::normalise_email;
use ridehail_events::{Role, UserId};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::error::ApiError;
use crate::extract::ValidJson;
use crate::limits::ClientIp;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
}

/// Log in: a bearer token for the other operations.
#[utoipa::path(post, path = "/v1/sessions", tag = "users", operation_id = "login", security(()),
    request_body(content = ref("#/components/schemas/LoginRequest"), content_type = "application/json"),
    responses(
        (status = 200, description = "Logged in.", body = ref("#/components/schemas/Session")),
        (status = 401, description = "`invalid_credentials`: the e-mail or the password is wrong."),
        (status = 429, description = "`login_locked`: too many failed logins for this account or client; retry after `Retry-After` seconds."),
        (status = 503, description = "`unavailable`: also when the password checking queue is full."),
    ))]
pub async fn login(
    State(state): State<AppState>,
    client: Option<axum::Extension<ClientIp>>,
    ValidJson(req): ValidJson<LoginRequest>,
) -> Result<Json<Session>, ApiError> {
    let limits = &state.config.limits;
    let account = state.keyed_hash(&normalise_email(&req.email));
    let client = client.map(|c| c.0).unwrap_or(ClientIp(None));
    let client_hash = state.keyed_hash(&client.key());
    let (account_key, client_key) = (format!("login-account:{account}"), format!("login-client:{}", client.key()));
    let limiter = &state.backend.limiter;
    let locked = match tokio::try_join!(limiter.locked_for(&account_key), limiter.locked_for(&client_key)) {
        Ok((a, c)) => a.max(c),
        Err(e) => {
            tracing::warn!(error = %e, "login lock-outs unavailable; checking the password anyway");
            None
        }
    };
    if let Some(retry_after) = locked {
        tracing::warn!(target: "audit", event = "login_refused_locked_out", account, client = client_hash);
        return Err(ApiError::TooManyRequests { code: "login_locked", retry_after });
    }
    if req.password.len() > 1024 {
        return Err(ApiError::InvalidCredentials);
    }
    let credentials = state.backend.users.credentials_by_email(&normalise_email(&req.email)).await?;
    let stored = credentials.as_ref().map(|c| c.password_hash.0.clone());
    if !state.login_passwords.verify(SecretString::from(req.password), stored).await? {
        let user_id = credentials.as_ref().map(|c| c.user_id.to_string());
        tracing::warn!(target: "audit", event = "login_failed", account, user_id, client = client_hash);
        let failures = tokio::join!(
            limiter.record_failure(&account_key, &limits.login_failures_per_account),
            limiter.record_failure(&client_key, &limits.login_failures_per_ip),
        );
        for (scope, failure) in [("account", failures.0), ("client", failures.1)] {
            match failure {
                Ok(Some(lockout)) => tracing::warn!(
                    target: "audit",
                    event = "login_lockout",
                    scope,
                    account,
                    client = client_hash,
                    seconds = lockout.as_secs()
                ),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "could not count a failed login"),
            }
        }
        return Err(ApiError::InvalidCredentials);
    }
    let credentials = credentials.ok_or(ApiError::InvalidCredentials)?;
    if let Err(e) = limiter.clear_failures(&account_key).await {
        tracing::warn!(error = %e, "could not clear the failed logins of an account");
    }
    let (token, expires_in) = state.keys.issue(credentials.user_id, credentials.role, state.backend.clock.now())?;
    Ok(Json(Session {
        access_token: token,
        token_type: TokenType::Bearer,
        expires_in,
        user_id: credentials.user_id,
        role: credentials.role,
    }))
}

/// A bearer token for `Authorization: Bearer …` (RFC 6750).
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Session {
    pub access_token: String,
    pub token_type: TokenType,
    /// Seconds until the token expires.
    #[schemars(range(min = 1))]
    pub expires_in: i64,
    pub user_id: UserId,
    pub role: Role,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub enum TokenType {
    Bearer,
}
