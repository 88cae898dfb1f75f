//! What every storage trait shares: the error, in the caller's terms whatever the backend,
//! and a page of a list.

/// What went wrong, in the terms of the caller, whatever the backend.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The request contradicts what is stored (an id taken, a resource still in use).
    #[error("{0}")]
    Conflict(String),
    /// The row changed since it was read: a conditional update did not apply.
    #[error("the {0} was changed since it was read")]
    Stale(&'static str),
    /// The account already has as many of these as its limit allows.
    #[error("{0}")]
    LimitReached(String),
    /// The request names something that is not there or not allowed (a 422 to the API).
    #[error("{0}")]
    Invalid(String),
    /// The store cannot take the request now (closed, busy, out of space); it may later.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// The store's connection was lost while a write committed: it may have been made or
    /// not. Read what it would have written before relying on either.
    #[error("the store did not answer the commit, which may have been made: {0}")]
    Unanswered(String),
    /// A fault of the store itself (unreadable data, a failed commit, a task that died).
    #[error("internal storage error: {0}")]
    Internal(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// One page of a list: the items after `after` (exclusive), at most `limit`.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub after: Option<String>,
    pub limit: usize,
}

/// What an account owns that other rows name by id, for the rules that check a name is
/// the account's own (the backend answers whether it is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owned {
    Business,
    Channel,
    Device,
    Notifier,
}
