//! argon2id password hashing, off the async threads (each hash costs tens of milliseconds by design).

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use secrecy::{ExposeSecret, SecretString};

/// OWASP's argon2id baseline: 19 MiB, 2 passes, 1 lane.
fn hasher() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

pub async fn hash(password: SecretString) -> anyhow::Result<String> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        hasher()
            .hash_password(password.expose_secret().as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| anyhow::anyhow!("hashing failed: {e}"))
    })
    .await?
}

/// Checks `password` against a PHC string. With `None` it still spends the time of one check, so a
/// login for an unknown address takes as long as one with a wrong password.
pub async fn verify(password: SecretString, stored: Option<String>) -> anyhow::Result<bool> {
    tokio::task::spawn_blocking(move || {
        let dummy;
        let phc = match &stored {
            Some(phc) => phc.as_str(),
            None => {
                dummy = hasher()
                    .hash_password(b"timing-equaliser", &SaltString::generate(&mut OsRng))
                    .map(|h| h.to_string())
                    .unwrap_or_default();
                dummy.as_str()
            }
        };
        let parsed = PasswordHash::new(phc).map_err(|e| anyhow::anyhow!("stored hash is malformed: {e}"))?;
        let ok = hasher().verify_password(password.expose_secret().as_bytes(), &parsed).is_ok();
        Ok(ok && stored.is_some())
    })
    .await?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_are_argon2id_and_verify_only_the_right_password() {
        let phc = hash(SecretString::from("correct horse battery".to_owned())).await.unwrap();
        assert!(phc.starts_with("$argon2id$"));
        assert!(!phc.contains("correct horse"));
        assert!(verify(SecretString::from("correct horse battery".to_owned()), Some(phc.clone())).await.unwrap());
        assert!(!verify(SecretString::from("wrong horse battery".to_owned()), Some(phc)).await.unwrap());
        assert!(!verify(SecretString::from("anything at all".to_owned()), None).await.unwrap());
    }
}
