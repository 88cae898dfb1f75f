//! Storage behind one interface.
//!
//! Each feature module declares the storage calls it needs as a trait of its own
//! ([`crate::accounts::AccountStore`], …); [`Store`] is all of them together, and a backend
//! implements every one. The backend is picked from the configuration at run time
//! ([`open`]), so one binary and one test suite serve every backend.

use std::sync::Arc;

use crate::accounts::AccountStore;
use crate::config::Config;
use crate::delivery::DeliveryStore;
use crate::devices::DeviceStore;
use crate::endpoints::EndpointStore;
use crate::events::EventStore;
use crate::ingest::IngestStore;
use crate::jobs::JobStore;
use crate::presence::PresenceStore;

pub mod sqlite;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    /// The request names something that is not there or not allowed (a 422 to the API).
    #[error("{0}")]
    Invalid(String),
    #[error("the database is closed")]
    Closed,
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("stored data is not readable: {0}")]
    Corrupt(String),
    #[error("migration {version} failed: {message}")]
    Migration { version: i64, message: String },
}

pub type StoreResult<T> = Result<T, StoreError>;

#[async_trait::async_trait]
pub trait Store:
    AccountStore
    + DeviceStore
    + EndpointStore
    + EventStore
    + IngestStore
    + DeliveryStore
    + PresenceStore
    + JobStore
{
    /// A cheap round trip, for readiness checks.
    async fn ping(&self) -> StoreResult<()>;

    /// Gives back the memory the backend caches (pages it can read again), once a burst is
    /// over.
    async fn shrink_caches(&self) -> StoreResult<()>;

    /// Finishes every write under way and closes the database.
    async fn close(&self);
}

pub type SharedStore = Arc<dyn Store>;

/// Opens (and migrates) the backend the configuration names.
pub async fn open(config: &Config) -> anyhow::Result<SharedStore> {
    let path = config.sqlite_path()?;
    let store = sqlite::SqliteStore::open(&path, &config.database).await?;
    Ok(Arc::new(store))
}

/// One page of a list: the items after `after` (exclusive), at most `limit`.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub after: Option<String>,
    pub limit: usize,
}
