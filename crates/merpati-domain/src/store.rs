//! Storage behind one interface: every feature's trait together.
//!
//! Each feature declares the storage calls it needs as a trait of its own
//! ([`crate::account::AccountStore`], …); [`Store`] is all of them together, and a backend
//! implements every one. A backend runs statements and calls the rules of this crate; it
//! decides nothing of its own. Which backend serves is picked at run time, so one binary and
//! one contract suite serve every backend.

use std::sync::Arc;

use crate::account::AccountStore;
use crate::alert::AlertStore;
use crate::connector::ConnectorStore;
use crate::delivery::DeliveryStore;
use crate::device::DeviceStore;
use crate::endpoint::EndpointStore;
use crate::endpoint_stats::EndpointStatsStore;
use crate::event::EventStore;
use crate::ingest::IngestStore;
use crate::job::JobStore;
use crate::presence::PresenceStore;
use crate::storage::StoreResult;

/// Every feature's storage calls, and what the server needs of the backend itself.
#[async_trait::async_trait]
pub trait Store:
    AccountStore
    + DeviceStore
    + EndpointStore
    + EndpointStatsStore
    + EventStore
    + IngestStore
    + DeliveryStore
    + PresenceStore
    + JobStore
    + AlertStore
    + ConnectorStore
    + crate::audit::AuditStore
    + crate::cluster::ClusterStore
    + crate::slots::SlotStore
{
    /// A cheap round trip, for readiness checks.
    async fn ping(&self) -> StoreResult<()>;

    /// The version of the schema the database is at.
    async fn schema_version(&self) -> StoreResult<i64>;

    /// What the metrics count at a scrape: a few aggregate queries, never a row per thing.
    async fn counts(&self) -> StoreResult<Counts>;

    /// Gives back the memory the backend caches (pages it can read again), once a burst is
    /// over.
    async fn shrink_caches(&self) -> StoreResult<()>;

    /// Finishes every write under way and closes the database.
    async fn close(&self);
}

pub type SharedStore = Arc<dyn Store>;

/// Aggregates for the metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    pub deliveries_pending: i64,
    pub deliveries_held: i64,
    /// (announced status: `connected`, `disconnected`, `unknown`; engine; devices)
    pub devices: Vec<(&'static str, String, i64)>,
    pub incidents_open: i64,
    pub incidents_acknowledged: i64,
    /// How long commits took, from the first statement to durable.
    pub commits: Histogram,
}

/// A histogram's state: each bucket's upper bound (seconds) and what fell in it (not
/// cumulative; the last bound is infinity), the sum and the count.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    pub buckets: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
}
