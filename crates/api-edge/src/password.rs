//! argon2id password hashing on a small dedicated pool of threads.
//!
//! Each hash costs ~19 MiB and tens of milliseconds by design. A fixed pool bounds both: at most
//! `threads` hashes run at once (a burst of sign-ups or logins cannot take every core; beyond the
//! queue the edge answers 503), and each thread reuses one working buffer, so hashing holds
//! `threads` x 19 MiB however many passwords it has seen.

use std::cell::RefCell;
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{ARGON2ID_IDENT, Algorithm, Argon2, Block, Params, Version};
use secrecy::{ExposeSecret, SecretString};

/// OWASP's argon2id baseline: 19 MiB, 2 passes, 1 lane.
fn argon2() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

thread_local! {
    /// Each hashing thread keeps its argon2 working memory instead of allocating ~19 MiB per hash:
    /// repeated large allocations fragment the allocator's arenas and inflate the process's memory.
    static BLOCKS: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

fn compute(argon: &Argon2<'_>, password: &[u8], salt: &[u8], out: &mut [u8]) -> Result<(), PoolError> {
    BLOCKS.with(|blocks| {
        let mut blocks = blocks.borrow_mut();
        let needed = argon.params().block_count();
        if blocks.len() != needed {
            blocks.resize(needed, Block::default());
        }
        argon
            .hash_password_into_with_memory(password, salt, out, &mut blocks[..])
            .map_err(|e| PoolError::Failed(e.to_string()))
    })
}

fn failed(e: impl std::fmt::Display) -> PoolError {
    PoolError::Failed(e.to_string())
}

/// A new argon2id PHC string for `password`.
fn hash_now(password: &[u8]) -> Result<String, PoolError> {
    let argon = argon2();
    let salt = SaltString::generate(&mut OsRng);
    let mut salt_buf = [0u8; 64];
    let salt_bytes = salt.decode_b64(&mut salt_buf).map_err(failed)?;
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    compute(&argon, password, salt_bytes, &mut out)?;
    let phc = PasswordHash {
        algorithm: ARGON2ID_IDENT,
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(argon.params()).map_err(failed)?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).map_err(failed)?),
    };
    Ok(phc.to_string())
}

/// Whether `password` matches the argon2id PHC string (constant-time comparison).
fn verify_now(password: &[u8], phc: &str) -> Result<bool, PoolError> {
    let parsed = PasswordHash::new(phc).map_err(|e| failed(format!("stored hash is malformed: {e}")))?;
    if parsed.algorithm != ARGON2ID_IDENT {
        return Err(failed("stored hash is not argon2id"));
    }
    let params = Params::try_from(&parsed).map_err(failed)?;
    let version = parsed.version.map(Version::try_from).transpose().map_err(failed)?.unwrap_or_default();
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return Err(failed("stored hash lacks salt or output"));
    };
    let mut salt_buf = [0u8; 64];
    let salt_bytes = salt.decode_b64(&mut salt_buf).map_err(failed)?;
    let mut out = vec![0u8; expected.len()];
    compute(&Argon2::new(Algorithm::Argon2id, version, params), password, salt_bytes, &mut out)?;
    Ok(Output::new(&out).map_err(failed)? == expected)
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
        self.run(move || hash_now(password.expose_secret().as_bytes())).await?
    }

    /// Checks `password` against a PHC string. With `None` it still spends the time of one hash, so a
    /// login for an unknown address takes as long as one with a wrong password.
    pub async fn verify(&self, password: SecretString, stored: Option<String>) -> Result<bool, PoolError> {
        self.run(move || match stored {
            Some(phc) => verify_now(password.expose_secret().as_bytes(), &phc),
            None => hash_now(b"timing-equaliser").map(|_| false),
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

    #[test]
    fn hashes_verify_with_the_reference_implementation_both_ways() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let ours = hash_now(b"correct horse battery").unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(argon2().verify_password(b"correct horse battery", &parsed).is_ok());
        assert!(argon2().verify_password(b"wrong", &parsed).is_err());
        let theirs =
            argon2().hash_password(b"correct horse battery", &SaltString::generate(&mut OsRng)).unwrap().to_string();
        assert!(verify_now(b"correct horse battery", &theirs).unwrap());
        assert!(!verify_now(b"correct horse battery!", &theirs).unwrap());
        assert!(verify_now(b"x", "$argon2i$v=19$m=16,t=2,p=1$c2FsdHNhbHQ$aGFzaA").is_err(), "only argon2id");
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
