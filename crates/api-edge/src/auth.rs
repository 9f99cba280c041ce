//! Bearer tokens: JWTs carrying the user id and role, signed by one key and verified by any key of a
//! key ring, so keys rotate without logging everyone out.
//!
//! - Signing: Ed25519 (`EdDSA`, the default; public keys at `/.well-known/jwks.json` so other
//!   services verify tokens without a secret) or a shared HS256 secret.
//! - Every token names its key (`kid`); a token whose `kid` is unknown, or whose `alg` is not its
//!   key's, is refused (no algorithm confusion, no `none`).
//! - Claims: `sub`, `role`, `iss`, `aud`, `iat`, `nbf`, `exp`. Time claims are checked against the
//!   clock given to [`JwtKeys::verify`], with a small leeway; a token living longer than the
//!   configured maximum, or issued in the future, is refused.

use std::collections::HashMap;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use ed25519_dalek::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, OctetKeyPairParameters,
    OctetKeyPairType, PublicKeyUse, ThumbprintHash,
};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, decode_header, encode};
use ridehail_events::{Role, UserId};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::error::ApiError;

/// Shortest HS256 secret accepted: 256 bits.
pub const MIN_SECRET_BYTES: usize = 32;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Claims {
    sub: String,
    role: TokenRole,
    iss: String,
    aud: String,
    iat: i64,
    nbf: i64,
    exp: i64,
}

/// Whom a token is for: a rider or a driver (issued at login), or an operator (issued by
/// `ridehail admin token` only: no login ever yields one, since users are riders or drivers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum TokenRole {
    Rider,
    Driver,
    Admin,
}

impl From<Role> for TokenRole {
    fn from(role: Role) -> Self {
        match role {
            Role::Rider => Self::Rider,
            Role::Driver => Self::Driver,
        }
    }
}

/// An operator, authenticated by an admin token (the admin endpoints' caller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    /// The name the token was issued to, for the audit log.
    pub name: String,
}

/// What the edge is given to sign and verify with (loaded from files or the environment by the
/// binary; see docs/operations.md).
#[derive(Default)]
pub struct KeyMaterial {
    /// An Ed25519 private key (PKCS#8 PEM). Takes precedence over `secret` for signing.
    pub signing_key_pem: Option<SecretString>,
    /// A shared HS256 secret (at least [`MIN_SECRET_BYTES`]).
    pub secret: Option<SecretString>,
    /// Public keys of earlier signing keys still accepted (a JWKS document).
    pub previous_public_keys: Option<String>,
    /// Earlier HS256 secrets still accepted.
    pub previous_secrets: Vec<SecretString>,
}

impl std::fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyMaterial")
            .field("signing_key_pem", &self.signing_key_pem.is_some())
            .field("secret", &self.secret.is_some())
            .field("previous_secrets", &self.previous_secrets.len())
            .finish_non_exhaustive()
    }
}

/// What a token must say, and for how long it lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenPolicy {
    pub issuer: String,
    pub audience: String,
    pub ttl: chrono::Duration,
    /// Tokens whose `exp - iat` is longer than this are refused, whoever signed them.
    pub max_lifetime: chrono::Duration,
    /// Clock skew tolerated on `nbf`, `iat` and `exp`.
    pub leeway: chrono::Duration,
}

impl Default for TokenPolicy {
    fn default() -> Self {
        Self {
            issuer: "ridehail".into(),
            audience: "ridehail-api".into(),
            ttl: chrono::Duration::minutes(60),
            max_lifetime: chrono::Duration::hours(24),
            leeway: chrono::Duration::seconds(5),
        }
    }
}

/// A new Ed25519 private key as PKCS#8 PEM (`ridehail keys generate`, development defaults).
pub fn generate_signing_key() -> anyhow::Result<SecretString> {
    let key = ed25519_dalek::SigningKey::from_bytes(&rand_bytes());
    let pem = key.to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)?;
    Ok(SecretString::from(pem.to_string()))
}

fn rand_bytes() -> [u8; 32] {
    use argon2::password_hash::rand_core::{OsRng, RngCore as _};
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    bytes
}

/// The public JWK of an Ed25519 private key (PKCS#8 PEM), with its RFC 7638 thumbprint as `kid`.
pub fn public_jwk(signing_key_pem: &SecretString) -> anyhow::Result<Jwk> {
    let key = ed25519_dalek::SigningKey::from_pkcs8_pem(signing_key_pem.expose_secret())
        .map_err(|e| anyhow::anyhow!("the JWT signing key is not an Ed25519 PKCS#8 PEM key: {e}"))?;
    ed25519_jwk(key.verifying_key().as_bytes())
}

fn ed25519_jwk(public: &[u8; 32]) -> anyhow::Result<Jwk> {
    let mut jwk = Jwk {
        common: CommonParameters {
            public_key_use: Some(PublicKeyUse::Signature),
            key_algorithm: Some(KeyAlgorithm::EdDSA),
            ..CommonParameters::default()
        },
        algorithm: AlgorithmParameters::OctetKeyPair(OctetKeyPairParameters {
            key_type: OctetKeyPairType::OctetKeyPair,
            curve: EllipticCurve::Ed25519,
            x: URL_SAFE_NO_PAD.encode(public),
        }),
    };
    jwk.common.key_id = Some(jwk.thumbprint(ThumbprintHash::SHA256)?);
    Ok(jwk)
}

struct Signer {
    kid: String,
    algorithm: Algorithm,
    key: EncodingKey,
}

struct Verifier {
    algorithm: Algorithm,
    key: DecodingKey,
}

/// Signs with one key, verifies with every key of the ring. No secret appears in `Debug`.
pub struct JwtKeys {
    signer: Signer,
    verifiers: HashMap<String, Verifier>,
    /// The public keys (EdDSA ones) for `/.well-known/jwks.json`.
    jwks: JwkSet,
    policy: TokenPolicy,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut kids: Vec<&String> = self.verifiers.keys().collect();
        kids.sort();
        f.debug_struct("JwtKeys")
            .field("signing_kid", &self.signer.kid)
            .field("verifying_kids", &kids)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// The `kid` of an HS256 secret: a hash that names it without revealing it.
fn secret_kid(secret: &[u8]) -> String {
    let digest = Sha256::digest(secret);
    format!("hs256-{}", digest.iter().take(8).map(|b| format!("{b:02x}")).collect::<String>())
}

fn hmac_verifier(secret: &SecretString) -> anyhow::Result<(String, Verifier)> {
    let bytes = secret.expose_secret().as_bytes();
    anyhow::ensure!(bytes.len() >= MIN_SECRET_BYTES, "the JWT secret must be at least {MIN_SECRET_BYTES} bytes");
    Ok((secret_kid(bytes), Verifier { algorithm: Algorithm::HS256, key: DecodingKey::from_secret(bytes) }))
}

impl JwtKeys {
    pub fn new(material: &KeyMaterial, policy: TokenPolicy) -> anyhow::Result<Self> {
        anyhow::ensure!(policy.ttl <= policy.max_lifetime, "the token lifetime exceeds the maximum lifetime");
        let mut verifiers = HashMap::new();
        let mut jwks = JwkSet { keys: Vec::new() };
        let signer = match (&material.signing_key_pem, &material.secret) {
            (Some(pem), _) => {
                let key = ed25519_dalek::SigningKey::from_pkcs8_pem(pem.expose_secret())
                    .map_err(|e| anyhow::anyhow!("the JWT signing key is not an Ed25519 PKCS#8 PEM key: {e}"))?;
                let public = key.verifying_key();
                let jwk = ed25519_jwk(public.as_bytes())?;
                let kid = jwk.common.key_id.clone().unwrap_or_default();
                verifiers.insert(
                    kid.clone(),
                    Verifier { algorithm: Algorithm::EdDSA, key: DecodingKey::from_ed_der(public.as_bytes()) },
                );
                jwks.keys.push(jwk);
                let der = key.to_pkcs8_der()?;
                Signer { kid, algorithm: Algorithm::EdDSA, key: EncodingKey::from_ed_der(der.as_bytes()) }
            }
            (None, Some(secret)) => {
                let (kid, verifier) = hmac_verifier(secret)?;
                verifiers.insert(kid.clone(), verifier);
                Signer {
                    kid,
                    algorithm: Algorithm::HS256,
                    key: EncodingKey::from_secret(secret.expose_secret().as_bytes()),
                }
            }
            (None, None) => anyhow::bail!("no JWT signing key or secret"),
        };
        if let Some(document) = &material.previous_public_keys {
            let set: JwkSet = serde_json::from_str(document)
                .map_err(|e| anyhow::anyhow!("the previous JWT public keys are not a JWKS document: {e}"))?;
            for jwk in set.keys {
                let AlgorithmParameters::OctetKeyPair(okp) = &jwk.algorithm else {
                    anyhow::bail!("only Ed25519 keys are accepted among the previous JWT public keys");
                };
                let raw = URL_SAFE_NO_PAD.decode(&okp.x).unwrap_or_default();
                let raw: [u8; 32] =
                    raw.try_into().map_err(|_| anyhow::anyhow!("an Ed25519 JWK's x is not 32 bytes"))?;
                let jwk = ed25519_jwk(&raw)?;
                let kid = jwk.common.key_id.clone().unwrap_or_default();
                verifiers.insert(kid, Verifier { algorithm: Algorithm::EdDSA, key: DecodingKey::from_ed_der(&raw) });
                if !jwks.keys.contains(&jwk) {
                    jwks.keys.push(jwk);
                }
            }
        }
        for secret in &material.previous_secrets {
            let (kid, verifier) = hmac_verifier(secret)?;
            verifiers.entry(kid).or_insert(verifier);
        }
        Ok(Self { signer, verifiers, jwks, policy })
    }

    /// The public verification keys, for `/.well-known/jwks.json` (empty with HS256 only).
    pub fn jwks(&self) -> &JwkSet {
        &self.jwks
    }

    /// The `kid` new tokens carry.
    pub fn signing_kid(&self) -> &str {
        &self.signer.kid
    }

    /// A token for the user, valid from `now` for the configured time to live.
    pub fn issue(&self, user_id: UserId, role: Role, now: DateTime<Utc>) -> anyhow::Result<(String, i64)> {
        self.sign(user_id.to_string(), role.into(), now)
    }

    /// An operator's token for the admin endpoints, named `name` (for the audit log), valid from
    /// `now` for the configured time to live.
    pub fn issue_admin(&self, name: &str, now: DateTime<Utc>) -> anyhow::Result<(String, i64)> {
        anyhow::ensure!(!name.trim().is_empty(), "an operator token needs a name");
        self.sign(format!("operator:{}", name.trim()), TokenRole::Admin, now)
    }

    fn sign(&self, sub: String, role: TokenRole, now: DateTime<Utc>) -> anyhow::Result<(String, i64)> {
        let claims = Claims {
            sub,
            role,
            iss: self.policy.issuer.clone(),
            aud: self.policy.audience.clone(),
            iat: now.timestamp(),
            nbf: now.timestamp(),
            exp: (now + self.policy.ttl).timestamp(),
        };
        let mut header = Header::new(self.signer.algorithm);
        header.kid = Some(self.signer.kid.clone());
        let token = encode(&header, &claims, &self.signer.key)?;
        Ok((token, self.policy.ttl.num_seconds()))
    }

    /// The caller a token names, if it is signed by a key of the ring, for this audience and issuer,
    /// and valid at `now`.
    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<AuthUser, ApiError> {
        let claims = self.claims(token, now)?;
        let role = match claims.role {
            TokenRole::Rider => Role::Rider,
            TokenRole::Driver => Role::Driver,
            TokenRole::Admin => return Err(ApiError::Unauthenticated("an operator token is for the admin endpoints")),
        };
        let user_id = claims.sub.parse().map_err(|_| ApiError::Unauthenticated("the token is invalid"))?;
        Ok(AuthUser { user_id, role })
    }

    /// The operator an admin token names; a rider's or driver's token is refused (403).
    pub fn verify_admin(&self, token: &str, now: DateTime<Utc>) -> Result<Operator, ApiError> {
        let claims = self.claims(token, now)?;
        match (claims.role, claims.sub.strip_prefix("operator:")) {
            (TokenRole::Admin, Some(name)) => Ok(Operator { name: name.to_owned() }),
            (TokenRole::Admin, None) => Err(ApiError::Unauthenticated("the token is invalid")),
            _ => Err(ApiError::Forbidden("only operators can do this")),
        }
    }

    fn claims(&self, token: &str, now: DateTime<Utc>) -> Result<Claims, ApiError> {
        const INVALID: ApiError = ApiError::Unauthenticated("the token is invalid");
        let header = decode_header(token).map_err(|_| INVALID)?;
        let verifier = header.kid.as_deref().and_then(|kid| self.verifiers.get(kid)).ok_or(INVALID)?;
        if header.alg != verifier.algorithm {
            return Err(INVALID);
        }
        let mut validation = Validation::new(verifier.algorithm);
        validation.set_issuer(&[&self.policy.issuer]);
        validation.set_audience(&[&self.policy.audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "aud", "iss", "sub"]);
        // Time claims are checked below against the clock we are given.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        let claims = decode::<Claims>(token, &verifier.key, &validation).map_err(|_| INVALID)?.claims;
        let (now, leeway) = (now.timestamp(), self.policy.leeway.num_seconds());
        if claims.exp + leeway <= now {
            return Err(ApiError::Unauthenticated("the token expired"));
        }
        if claims.nbf - leeway > now || claims.iat - leeway > now {
            return Err(ApiError::Unauthenticated("the token is not valid yet"));
        }
        if claims.exp - claims.iat > self.policy.max_lifetime.num_seconds() || claims.exp < claims.iat {
            return Err(INVALID);
        }
        Ok(claims)
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

/// The token of an `Authorization: Bearer …` header (the scheme in any case, RFC 7235).
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

/// The caller of a request, verified once per request and kept in its extensions (the rate limiter
/// and the handlers both need it).
pub fn caller(parts: &mut Parts, state: &AppState) -> Option<Result<AuthUser, ApiError>> {
    if let Some(known) = parts.extensions.get::<Verified>() {
        return Some(known.0.map_err(ApiError::Unauthenticated));
    }
    let header = parts.headers.get(AUTHORIZATION)?;
    let verified = match header.to_str().ok().and_then(bearer_token) {
        Some(token) => state.keys.verify(token, state.backend.clock.now()).map_err(|e| match e {
            ApiError::Unauthenticated(why) => why,
            _ => "the token is invalid",
        }),
        None => Err("the authorization scheme must be Bearer"),
    };
    parts.extensions.insert(Verified(verified));
    Some(verified.map_err(ApiError::Unauthenticated))
}

/// The outcome of verifying a request's token, cached in its extensions.
#[derive(Debug, Clone, Copy)]
struct Verified(Result<AuthUser, &'static str>);

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        caller(parts, state).unwrap_or(Err(ApiError::Unauthenticated("a bearer token is required")))
    }
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let header = parts.headers.get(AUTHORIZATION).ok_or(ApiError::Unauthenticated("a bearer token is required"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(bearer_token)
            .ok_or(ApiError::Unauthenticated("the authorization scheme must be Bearer"))?;
        state.keys.verify_admin(token, state.backend.clock.now())
    }
}

/// Like [`AuthUser`] but absent instead of failing when no token is sent.
#[derive(Debug, Clone, Copy)]
pub struct MaybeAuthUser(pub Option<AuthUser>);

impl FromRequestParts<AppState> for MaybeAuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        caller(parts, state).transpose().map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs(secret: &str) -> KeyMaterial {
        KeyMaterial { secret: Some(SecretString::from(secret.to_owned())), ..KeyMaterial::default() }
    }

    fn ed(pem: &SecretString) -> KeyMaterial {
        KeyMaterial { signing_key_pem: Some(pem.clone()), ..KeyMaterial::default() }
    }

    fn policy() -> TokenPolicy {
        TokenPolicy { ttl: chrono::Duration::minutes(15), ..TokenPolicy::default() }
    }

    #[test]
    fn a_token_round_trips_and_carries_the_role() {
        for material in [hs("0123456789abcdef0123456789abcdef"), ed(&generate_signing_key().unwrap())] {
            let k = JwtKeys::new(&material, policy()).unwrap();
            let user = UserId::new();
            let (token, ttl) = k.issue(user, Role::Driver, Utc::now()).unwrap();
            assert_eq!(ttl, 900);
            assert_eq!(k.verify(&token, Utc::now()).unwrap(), AuthUser { user_id: user, role: Role::Driver });
            assert_eq!(decode_header(&token).unwrap().kid.as_deref(), Some(k.signing_kid()));
        }
    }

    #[test]
    fn operator_tokens_open_the_admin_endpoints_only_and_user_tokens_never_do() {
        let k = JwtKeys::new(&ed(&generate_signing_key().unwrap()), policy()).unwrap();
        let now = Utc::now();
        let (admin, _) = k.issue_admin("ana-oncall", now).unwrap();
        assert_eq!(k.verify_admin(&admin, now).unwrap(), Operator { name: "ana-oncall".into() });
        assert!(matches!(k.verify(&admin, now), Err(ApiError::Unauthenticated(_))), "not a user's token");
        for role in [Role::Rider, Role::Driver] {
            let (token, _) = k.issue(UserId::new(), role, now).unwrap();
            assert!(matches!(k.verify_admin(&token, now), Err(ApiError::Forbidden(_))), "{role:?}");
        }
        let later = now + chrono::Duration::minutes(16);
        assert!(matches!(k.verify_admin(&admin, later), Err(ApiError::Unauthenticated(_))), "expires like any");
        assert!(k.issue_admin(" ", now).is_err(), "a name is required");
    }

    #[test]
    fn expired_not_yet_valid_tampered_and_foreign_tokens_are_refused() {
        let k = JwtKeys::new(&ed(&generate_signing_key().unwrap()), policy()).unwrap();
        let now = Utc::now();
        let (token, _) = k.issue(UserId::new(), Role::Rider, now).unwrap();
        let later = now + chrono::Duration::minutes(16);
        assert!(matches!(k.verify(&token, later), Err(ApiError::Unauthenticated("the token expired"))));
        let earlier = now - chrono::Duration::minutes(1);
        assert!(matches!(k.verify(&token, earlier), Err(ApiError::Unauthenticated("the token is not valid yet"))));
        let mut tampered = token.clone();
        tampered.pop();
        tampered.push(if token.ends_with('A') { 'B' } else { 'A' });
        assert!(k.verify(&tampered, now).is_err());
        let other = JwtKeys::new(&ed(&generate_signing_key().unwrap()), policy()).unwrap();
        assert!(other.verify(&token, now).is_err(), "another key (unknown kid)");
    }

    #[test]
    fn another_audience_or_issuer_is_refused() {
        let material = hs("0123456789abcdef0123456789abcdef");
        let theirs = JwtKeys::new(&material, TokenPolicy { audience: "billing".into(), ..policy() }).unwrap();
        let ours = JwtKeys::new(&material, policy()).unwrap();
        let (token, _) = theirs.issue(UserId::new(), Role::Rider, Utc::now()).unwrap();
        assert!(ours.verify(&token, Utc::now()).is_err());
        let other_issuer = JwtKeys::new(&material, TokenPolicy { issuer: "someone".into(), ..policy() }).unwrap();
        let (token, _) = other_issuer.issue(UserId::new(), Role::Rider, Utc::now()).unwrap();
        assert!(ours.verify(&token, Utc::now()).is_err());
    }

    #[test]
    fn a_token_living_longer_than_the_maximum_is_refused_even_when_well_signed() {
        let material = hs("0123456789abcdef0123456789abcdef");
        let long =
            TokenPolicy { ttl: chrono::Duration::days(30), max_lifetime: chrono::Duration::days(30), ..policy() };
        let (token, _) = JwtKeys::new(&material, long).unwrap().issue(UserId::new(), Role::Rider, Utc::now()).unwrap();
        assert!(JwtKeys::new(&material, policy()).unwrap().verify(&token, Utc::now()).is_err());
    }

    #[test]
    fn rotated_keys_keep_verifying_until_they_are_dropped() {
        let old = generate_signing_key().unwrap();
        let before = JwtKeys::new(&ed(&old), policy()).unwrap();
        let (token, _) = before.issue(UserId::new(), Role::Rider, Utc::now()).unwrap();
        let previous = serde_json::to_string(before.jwks()).unwrap();
        let new = generate_signing_key().unwrap();
        let after = JwtKeys::new(&KeyMaterial { previous_public_keys: Some(previous), ..ed(&new) }, policy()).unwrap();
        assert!(after.verify(&token, Utc::now()).is_ok(), "the previous key still verifies");
        assert_eq!(after.jwks().keys.len(), 2);
        let (fresh, _) = after.issue(UserId::new(), Role::Rider, Utc::now()).unwrap();
        assert_ne!(decode_header(&fresh).unwrap().kid, decode_header(&token).unwrap().kid);
        let dropped = JwtKeys::new(&ed(&new), policy()).unwrap();
        assert!(dropped.verify(&token, Utc::now()).is_err(), "a key no longer in the ring verifies nothing");
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(JwtKeys::new(&hs("short"), policy()).is_err());
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
    }
}
