//! The backend's own error, and what it means to callers.
//!
//! Statements fail with rusqlite's error; the product's rules and the checks a write makes
//! fail with the domain's `StoreError`. Inside the backend both travel as a [`DbError`], so
//! that `?` works on either; at the boundary it becomes a `StoreError` that names what
//! happened, with nothing of SQLite in its type.

use merpati_domain::StoreError;
use rusqlite::ffi::ErrorCode;

#[derive(Debug)]
pub(crate) enum DbError {
    Sqlite(rusqlite::Error),
    Store(StoreError),
}

pub(crate) type DbResult<T> = Result<T, DbError>;

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> Self {
        DbError::Sqlite(e)
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
            DbError::Sqlite(e) => sqlite_error(&e),
        }
    }
}

/// What a failed statement means to the caller: a database that is busy or out of space
/// may take the request later; anything else is the store's own fault.
pub(crate) fn sqlite_error(e: &rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            StoreError::Unavailable(format!("the database is busy: {e}"))
        }
        Some(ErrorCode::DiskFull) => StoreError::Unavailable(format!("the disk is full: {e}")),
        _ => StoreError::Internal(format!("sqlite: {e}")),
    }
}

/// True when the error is a UNIQUE or PRIMARY KEY violation.
pub(crate) fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
                || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
    )
}

/// The store is closed (or closing): nothing more is taken.
pub(crate) fn closed() -> StoreError {
    StoreError::Unavailable("the database is closed".into())
}
