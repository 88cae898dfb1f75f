//! Storage behind one interface.
//!
//! Each feature declares the storage calls it needs as a trait of its own
//! ([`crate::account::AccountStore`], …); [`Store`] is all of them together, and a backend
//! implements every one. A backend runs statements and calls the rules of this crate; it
//! decides nothing of its own. Which backend serves is picked at run time, so one binary and
//! one contract suite serve every backend.

use std::sync::Arc;

use crate::account::AccountStore;
use crate::delivery::DeliveryStore;
use crate::device::DeviceStore;
use crate::endpoint::EndpointStore;
use crate::event::EventStore;
use crate::ingest::IngestStore;
use crate::job::JobStore;
use crate::presence::PresenceStore;

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
    /// The request names something that is not there or not allowed (a 422 to the API).
    #[error("{0}")]
    Invalid(String),
    /// The store cannot take the request now (closed, busy, out of space); it may later.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// A fault of the store itself (unreadable data, a failed commit, a task that died).
    #[error("internal storage error: {0}")]
    Internal(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Every feature's storage calls, and what the server needs of the backend itself.
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

/// One page of a list: the items after `after` (exclusive), at most `limit`.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub after: Option<String>,
    pub limit: usize,
}
