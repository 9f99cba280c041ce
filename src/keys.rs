//! Where the edge's keys come from: the environment, or files named by `*_FILE` variables (the way
//! Kubernetes Secrets and Vault Agent deliver them). Production refuses to start without them, and
//! refuses the ones development generated.
//!
//! | variable (or `…_FILE`) | what |
//! |---|---|
//! | `RIDEHAIL_JWT_PRIVATE_KEY` | Ed25519 private key, PKCS#8 PEM: signs tokens (EdDSA) |
//! | `RIDEHAIL_JWT_SECRET` | HS256 secret (≥ 32 bytes), used when no private key is given |
//! | `RIDEHAIL_JWT_PREVIOUS_PUBLIC_KEYS` | JWKS of earlier Ed25519 keys still accepted (rotation) |
//! | `RIDEHAIL_JWT_PREVIOUS_SECRETS` | earlier HS256 secrets still accepted, one per line |
//! | `RIDEHAIL_HASH_KEY` | key (≥ 32 bytes) of the keyed hashes in audit lines and idempotency |
//!
//! In development only, a missing signing key or hash key is generated once in the data directory
//! (`dev-jwt-key.pem`, `dev-hash-key`, mode 0600) so tokens survive restarts.

use std::path::Path;

use anyhow::Context as _;
use api_edge::auth::KeyMaterial;
use ridehail_runtime::secrets::from_env_or_file;
use secrecy::{ExposeSecret as _, SecretString};

use crate::settings::write_private;

const DEV_JWT_KEY: &str = "dev-jwt-key.pem";
const DEV_HASH_KEY: &str = "dev-hash-key";
/// Shortest hash key accepted.
pub const MIN_HASH_KEY_BYTES: usize = 32;

pub fn token_keys(development: bool, data_dir: &Path) -> anyhow::Result<KeyMaterial> {
    let mut material = KeyMaterial {
        signing_key_pem: from_env_or_file("RIDEHAIL_JWT_PRIVATE_KEY")?,
        secret: from_env_or_file("RIDEHAIL_JWT_SECRET")?,
        previous_public_keys: from_env_or_file("RIDEHAIL_JWT_PREVIOUS_PUBLIC_KEYS")?
            .map(|s| s.expose_secret().to_owned()),
        previous_secrets: from_env_or_file("RIDEHAIL_JWT_PREVIOUS_SECRETS")?
            .map(|all| {
                all.expose_secret()
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(|l| SecretString::from(l.to_owned()))
                    .collect()
            })
            .unwrap_or_default(),
    };
    let configured = material.signing_key_pem.is_some() || material.secret.is_some();
    if !development {
        anyhow::ensure!(
            configured,
            "RIDEHAIL_JWT_PRIVATE_KEY(_FILE) or RIDEHAIL_JWT_SECRET(_FILE) must be set in production"
        );
        if let Some(given) = &material.signing_key_pem {
            refuse_development_copy(data_dir, DEV_JWT_KEY, given, "RIDEHAIL_JWT_PRIVATE_KEY")?;
        }
        return Ok(material);
    }
    if !configured {
        material.signing_key_pem = Some(generated(data_dir, DEV_JWT_KEY, || {
            Ok(api_edge::auth::generate_signing_key()?.expose_secret().to_owned())
        })?);
    }
    Ok(material)
}

pub fn hash_key(development: bool, data_dir: &Path) -> anyhow::Result<SecretString> {
    let key = match from_env_or_file("RIDEHAIL_HASH_KEY")? {
        Some(key) => {
            if !development {
                refuse_development_copy(data_dir, DEV_HASH_KEY, &key, "RIDEHAIL_HASH_KEY")?;
            }
            key
        }
        None if development => generated(data_dir, DEV_HASH_KEY, || {
            use rand::Rng as _;
            Ok(rand::rng().sample_iter(rand::distr::Alphanumeric).take(48).map(char::from).collect())
        })?,
        None => anyhow::bail!("RIDEHAIL_HASH_KEY or RIDEHAIL_HASH_KEY_FILE must be set in production"),
    };
    anyhow::ensure!(
        key.expose_secret().len() >= MIN_HASH_KEY_BYTES,
        "RIDEHAIL_HASH_KEY must be at least {MIN_HASH_KEY_BYTES} bytes"
    );
    Ok(key)
}

/// The contents of `data_dir/name`, created (0600) by `make` the first time.
fn generated(
    data_dir: &Path,
    name: &str,
    make: impl FnOnce() -> anyhow::Result<String>,
) -> anyhow::Result<SecretString> {
    std::fs::create_dir_all(data_dir)?;
    let path = data_dir.join(name);
    if let Ok(existing) = std::fs::read_to_string(&path) {
        return Ok(SecretString::from(existing.trim().to_owned()));
    }
    let value = make()?;
    write_private(&path, &value).with_context(|| format!("writing {}", path.display()))?;
    Ok(SecretString::from(value))
}

/// Production must not run on a key that development generated (copied from a data directory).
fn refuse_development_copy(data_dir: &Path, name: &str, given: &SecretString, variable: &str) -> anyhow::Result<()> {
    let dev = std::fs::read_to_string(data_dir.join(name)).ok();
    anyhow::ensure!(
        dev.is_none_or(|dev| dev.trim() != given.expose_secret().trim()),
        "{variable} is the development key generated in the data directory: give production its own"
    );
    Ok(())
}

/// `ridehail keys generate --out FILE`: a new Ed25519 signing key in `FILE` (0600, never
/// overwritten), and its public key on stdout as a JWKS (with its `kid`), ready for
/// `RIDEHAIL_JWT_PREVIOUS_PUBLIC_KEYS` once the key is rotated out.
pub fn generate(out: &Path) -> anyhow::Result<String> {
    let pem = api_edge::auth::generate_signing_key()?;
    write_private(out, pem.expose_secret()).with_context(|| format!("writing {}", out.display()))?;
    let jwk = api_edge::auth::public_jwk(&pem)?;
    Ok(serde_json::to_string(&serde_json::json!({ "keys": [jwk] }))?)
}
