//! The backend's own error, and what it means to callers.
//!
//! Statements fail with the driver's error; the product's rules and the checks a write
//! makes fail with the domain's `StoreError`. Inside the backend both travel as a
//! [`DbError`], so that `?` works on either; at the boundary it becomes a `StoreError` that
//! names what happened, with nothing of PostgreSQL in its type.

use merpati_domain::StoreError;
use postgres::error::SqlState;

#[derive(Debug)]
pub(crate) enum DbError {
    Postgres(postgres::Error),
    Store(StoreError),
}

pub(crate) type DbResult<T> = Result<T, DbError>;

impl From<postgres::Error> for DbError {
    fn from(e: postgres::Error) -> Self {
        DbError::Postgres(e)
    }
}

impl From<StoreError> for DbError {
    fn from(e: StoreError) -> Self {
        DbError::Store(e)
    }
}

impl From<DbError> for StoreError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Store(e) => e,
            DbError::Postgres(e) => postgres_error(&e),
        }
    }
}

/// What a failed statement means to the caller: a server that is gone, restarting, out of
/// space or that chose this transaction to break a deadlock may take the request later;
/// anything else is the store's own fault.
pub(crate) fn postgres_error(e: &postgres::Error) -> StoreError {
    if is_broken(e) {
        return StoreError::Unavailable(format!("the database is unreachable: {e}"));
    }
    let retryable = [
        SqlState::T_R_SERIALIZATION_FAILURE,
        SqlState::T_R_DEADLOCK_DETECTED,
        SqlState::DISK_FULL,
        SqlState::INSUFFICIENT_RESOURCES,
        SqlState::OUT_OF_MEMORY,
        SqlState::TOO_MANY_CONNECTIONS,
        SqlState::ADMIN_SHUTDOWN,
        SqlState::CRASH_SHUTDOWN,
        SqlState::CANNOT_CONNECT_NOW,
        SqlState::LOCK_NOT_AVAILABLE,
        SqlState::QUERY_CANCELED,
    ];
    match e.code() {
        Some(code) if retryable.contains(code) => {
            StoreError::Unavailable(format!("the database cannot take it now: {}", describe(e)))
        }
        _ => StoreError::Internal(format!("postgres: {}", describe(e))),
    }
}

/// The server's message with its detail, which the driver's `Display` leaves out.
fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{}: {} ({detail})", db.code().code(), db.message()),
            None => format!("{}: {}", db.code().code(), db.message()),
        },
        None => e.to_string(),
    }
}

/// True when the error is a UNIQUE or PRIMARY KEY violation.
pub(crate) fn is_unique_violation(e: &DbError) -> bool {
    matches!(e, DbError::Postgres(p) if p.code() == Some(&SqlState::UNIQUE_VIOLATION))
}

/// True when a statement gave up waiting for a lock (`lock_timeout`).
pub(crate) fn is_lock_timeout(e: &DbError) -> bool {
    matches!(e, DbError::Postgres(p) if p.code() == Some(&SqlState::LOCK_NOT_AVAILABLE))
}

/// True when the statement's connection was lost before the server answered it (closed,
/// or the server ending the session): a commit under way may have been made.
pub(crate) fn connection_lost(e: &DbError) -> bool {
    let DbError::Postgres(e) = e else {
        return false;
    };
    is_broken(e)
        || e.code()
            .is_some_and(|c| *c == SqlState::ADMIN_SHUTDOWN || *c == SqlState::CRASH_SHUTDOWN)
}

/// True when the connection the error came on cannot be used again.
pub(crate) fn is_broken(e: &postgres::Error) -> bool {
    use std::error::Error;
    e.is_closed() || e.source().is_some_and(|s| s.is::<std::io::Error>())
}

/// The store is closed (or closing): nothing more is taken.
pub(crate) fn closed() -> StoreError {
    StoreError::Unavailable("the database is closed".into())
}
