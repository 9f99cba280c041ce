//! Bearer tokens: HS256 JWTs carrying the user id and role, with expiry.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, encode};
use ridehail_events::Role;
use ridehail_events::UserId;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::error::ApiError;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Claims {
    sub: String,
    role: Role,
    iss: String,
    iat: i64,
    exp: i64,
}

/// Signs and checks tokens. The secret never appears in `Debug`.
#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
    ttl: chrono::Duration,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKeys").field("issuer", &self.issuer).field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

/// Shortest secret accepted: 256 bits for HS256.
pub const MIN_SECRET_BYTES: usize = 32;

impl JwtKeys {
    pub fn new(secret: &SecretString, issuer: &str, ttl: chrono::Duration) -> anyhow::Result<Self> {
        let bytes = secret.expose_secret().as_bytes();
        anyhow::ensure!(bytes.len() >= MIN_SECRET_BYTES, "the JWT secret must be at least {MIN_SECRET_BYTES} bytes");
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[issuer]);
        validation.set_required_spec_claims(&["exp", "sub", "iss"]);
        validation.leeway = 5;
        Ok(Self {
            encoding: EncodingKey::from_secret(bytes),
            decoding: DecodingKey::from_secret(bytes),
            validation,
            issuer: issuer.to_owned(),
            ttl,
        })
    }

    /// A token for the user, valid from `now` for the configured time to live.
    pub fn issue(&self, user_id: UserId, role: Role, now: DateTime<Utc>) -> anyhow::Result<(String, i64)> {
        let claims = Claims {
            sub: user_id.to_string(),
            role,
            iss: self.issuer.clone(),
            iat: now.timestamp(),
            exp: (now + self.ttl).timestamp(),
        };
        let token = encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)?;
        Ok((token, self.ttl.num_seconds()))
    }

    pub fn verify(&self, token: &str) -> Result<AuthUser, ApiError> {
        let data = decode::<Claims>(token, &self.decoding, &self.validation).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => ApiError::Unauthenticated("the token expired"),
            _ => ApiError::Unauthenticated("the token is invalid"),
        })?;
        let user_id = data.claims.sub.parse().map_err(|_| ApiError::Unauthenticated("the token is invalid"))?;
        Ok(AuthUser { user_id, role: data.claims.role })
    }
}

/// The authenticated caller. Extracting it fails with 401 when the token is missing or bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthUser {
    pub user_id: UserId,
    pub role: Role,
}

impl AuthUser {
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.role == role {
            Ok(())
        } else {
            Err(ApiError::Forbidden(match role {
                Role::Driver => "only drivers can do this",
                Role::Rider => "only riders can do this",
            }))
        }
    }
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let header = parts.headers.get(AUTHORIZATION).ok_or(ApiError::Unauthenticated("a bearer token is required"))?;
        let value = header.to_str().map_err(|_| ApiError::Unauthenticated("the authorization header is malformed"))?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or(ApiError::Unauthenticated("the authorization scheme must be Bearer"))?;
        state.keys.verify(token.trim())
    }
}

/// Like [`AuthUser`] but absent instead of failing when no token is sent.
#[derive(Debug, Clone, Copy)]
pub struct MaybeAuthUser(pub Option<AuthUser>);

impl FromRequestParts<AppState> for MaybeAuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        if parts.headers.contains_key(AUTHORIZATION) {
            AuthUser::from_request_parts(parts, state).await.map(|u| Self(Some(u)))
        } else {
            Ok(Self(None))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(secret: &str) -> JwtKeys {
        JwtKeys::new(&SecretString::from(secret.to_owned()), "ridehail", chrono::Duration::minutes(15)).unwrap()
    }

    #[test]
    fn a_token_round_trips_and_carries_the_role() {
        let k = keys("0123456789abcdef0123456789abcdef");
        let user = UserId::new();
        let (token, ttl) = k.issue(user, Role::Driver, Utc::now()).unwrap();
        assert_eq!(ttl, 900);
        assert_eq!(k.verify(&token).unwrap(), AuthUser { user_id: user, role: Role::Driver });
    }

    #[test]
    fn expired_tampered_and_foreign_tokens_are_refused() {
        let k = keys("0123456789abcdef0123456789abcdef");
        let (old, _) = k.issue(UserId::new(), Role::Rider, Utc::now() - chrono::Duration::hours(1)).unwrap();
        assert!(matches!(k.verify(&old), Err(ApiError::Unauthenticated("the token expired"))));
        let (token, _) = k.issue(UserId::new(), Role::Rider, Utc::now()).unwrap();
        let mut tampered = token.clone();
        tampered.pop();
        tampered.push(if token.ends_with('A') { 'B' } else { 'A' });
        assert!(k.verify(&tampered).is_err());
        let other = keys("another-secret-another-secret-123");
        assert!(other.verify(&token).is_err());
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(
            JwtKeys::new(&SecretString::from("short".to_owned()), "ridehail", chrono::Duration::minutes(1)).is_err()
        );
    }
}
