//! What a store operation can refuse, apart from the backend failing.

/// A store error: either a business rule the storage enforces, or the backend failing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("the balance does not cover the price")]
    InsufficientCredits,
    #[error("the idempotency key was used with a different request")]
    IdempotencyConflict,
    #[error("no such record")]
    NotFound,
    /// The database cannot be reached or asked the caller to try again (connection lost,
    /// failover, serialization failure): a retry may succeed.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    #[error("storage failure: {0}")]
    Backend(String),
}

pub type StoreResult<T> = Result<T, StoreError>;
