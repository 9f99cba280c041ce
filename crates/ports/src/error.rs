//! The one error type of the store ports.

/// Why a call to a store port failed.
///
/// The split matters to callers: an unavailable dependency is waited out (the call may well work in
/// a moment), corrupt data is not (retrying reads the same bytes).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The dependency failed, refused or did not answer in time.
    #[error("{0:#}")]
    Unavailable(anyhow::Error),
    /// What is stored cannot be decoded (or what was given cannot be encoded).
    #[error("corrupt data: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Wraps any error of an adapter's client as [`StoreError::Unavailable`].
    pub fn unavailable(error: impl Into<anyhow::Error>) -> Self {
        Self::Unavailable(error.into())
    }

    pub fn corrupt(what: impl std::fmt::Display) -> Self {
        Self::Corrupt(what.to_string())
    }
}

impl From<anyhow::Error> for StoreError {
    fn from(error: anyhow::Error) -> Self {
        Self::Unavailable(error)
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(error: serde_json::Error) -> Self {
        Self::Corrupt(error.to_string())
    }
}

pub type StoreResult<T> = Result<T, StoreError>;
