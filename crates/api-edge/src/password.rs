//! argon2id password hashing on a small dedicated pool of threads.
//!
//! Each hash costs ~19 MiB and tens of milliseconds by design. A fixed pool bounds both: at most
//! `threads` hashes run at once (so a burst of sign-ups or logins cannot take every core, and excess
//! work queues or is refused with 503), and the memory each thread's allocator keeps for reuse stays
//! bounded to `threads` x 19 MiB instead of growing with every thread that ever hashed.

use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use secrecy::{ExposeSecret, SecretString};

/// OWASP's argon2id baseline: 19 MiB, 2 passes, 1 lane.
fn argon2() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

type Job = Box<dyn FnOnce() + Send>;

/// Why a hashing request was not served.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("password hashing is saturated")]
    Busy,
    #[error("password hashing failed: {0}")]
    Failed(String),
}

#[derive(Debug, Clone)]
pub struct PasswordPool {
    jobs: SyncSender<Job>,
}

impl PasswordPool {
    /// Starts `threads` hashing threads with room for `queue` waiting requests.
    pub fn new(threads: usize, queue: usize) -> Self {
        let (jobs, receiver) = sync_channel::<Job>(queue);
        let receiver = std::sync::Arc::new(std::sync::Mutex::new(receiver));
        for i in 0..threads.max(1) {
            let receiver = receiver.clone();
            let spawned = std::thread::Builder::new().name(format!("password-{i}")).spawn(move || {
                loop {
                    let job = match receiver.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                }
            });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "could not start a password hashing thread");
            }
        }
        Self { jobs }
    }

    async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Result<T, PoolError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(work());
        });
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(PoolError::Busy),
            Err(TrySendError::Disconnected(_)) => return Err(PoolError::Failed("pool stopped".into())),
        }
        rx.await.map_err(|_| PoolError::Failed("hashing thread died".into()))
    }

    /// An argon2id PHC string for `password`.
    pub async fn hash(&self, password: SecretString) -> Result<String, PoolError> {
        self.run(move || {
            let salt = SaltString::generate(&mut OsRng);
            argon2()
                .hash_password(password.expose_secret().as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| PoolError::Failed(e.to_string()))
        })
        .await?
    }

    /// Checks `password` against a PHC string. With `None` it still spends the time of one check, so a
    /// login for an unknown address takes as long as one with a wrong password.
    pub async fn verify(&self, password: SecretString, stored: Option<String>) -> Result<bool, PoolError> {
        self.run(move || {
            let known = stored.is_some();
            let phc = match stored {
                Some(phc) => phc,
                None => argon2()
                    .hash_password(b"timing-equaliser", &SaltString::generate(&mut OsRng))
                    .map(|h| h.to_string())
                    .map_err(|e| PoolError::Failed(e.to_string()))?,
            };
            let parsed =
                PasswordHash::new(&phc).map_err(|e| PoolError::Failed(format!("stored hash is malformed: {e}")))?;
            Ok(argon2().verify_password(password.expose_secret().as_bytes(), &parsed).is_ok() && known)
        })
        .await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    #[tokio::test]
    async fn hashes_are_argon2id_and_verify_only_the_right_password() {
        let pool = PasswordPool::new(1, 4);
        let phc = pool.hash(secret("correct horse battery")).await.unwrap();
        assert!(phc.starts_with("$argon2id$"));
        assert!(!phc.contains("correct horse"));
        assert!(pool.verify(secret("correct horse battery"), Some(phc.clone())).await.unwrap());
        assert!(!pool.verify(secret("wrong horse battery"), Some(phc)).await.unwrap());
        assert!(!pool.verify(secret("anything at all"), None).await.unwrap());
    }

    #[tokio::test]
    async fn a_full_queue_is_refused_rather_than_growing() {
        let pool = PasswordPool::new(1, 1);
        let attempts = (0..6).map(|_| pool.hash(secret("correct horse battery")));
        let results = futures::future::join_all(attempts).await;
        assert!(results.iter().any(|r| matches!(r, Err(PoolError::Busy))), "some must be refused");
        assert!(results.iter().any(|r| r.is_ok()), "some must be served");
    }
}
