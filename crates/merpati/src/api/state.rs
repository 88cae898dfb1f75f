//! What every route can reach: the store, the runtime's handles, the settings.

use std::sync::Arc;

use merpati_domain::clock::SharedClock;
use merpati_domain::presence::LeaseSettings;
use merpati_domain::SharedStore;
use merpati_runtime::bus::Bus;
use merpati_runtime::delivery::{DeliveryWaker, Handoff, Pauses};
use merpati_runtime::jobs::JobQueue;
use merpati_runtime::presence::PresenceHandle;

use super::token_cache::TokenCache;
use crate::config::Config;

#[derive(Clone)]
pub struct AppState {
    pub store: SharedStore,
    pub config: Arc<Config>,
    pub clock: SharedClock,
    pub admin_token_hash: Arc<Vec<u8>>,
    /// Tells the delivery worker that new deliveries are due.
    pub delivery: DeliveryWaker,
    /// Hands fresh deliveries to the delivery worker.
    pub handoff: Handoff,
    /// Endpoints their circuit breaker has paused, as the worker last saw them.
    pub pauses: Pauses,
    pub presence: PresenceHandle,
    pub lease: LeaseSettings,
    /// Committed changes, for whoever watches.
    pub bus: Bus,
    /// Tasks the shutdown waits for (device links), and the signal to stop.
    pub tasks: tokio_util::task::TaskTracker,
    pub shutdown: tokio_util::sync::CancellationToken,
    pub jobs: JobQueue,
    /// Recently resolved device tokens.
    pub device_tokens: TokenCache,
    /// Wakes the pruner: an endpoint or account was deleted, its rows are to go.
    pub purge: Arc<tokio::sync::Notify>,
    /// The alert runner: woken when rules, windows or incidents change.
    pub alerts: merpati_runtime::alerts::AlertHandle,
    /// What each connector took in since the start.
    pub connector_stats: merpati_runtime::connectors::ConnectorStats,
    /// Tells the engine poller that connectors changed.
    pub connectors_changed: Arc<tokio::sync::Notify>,
    /// What `/metrics` shows; the API counts what it takes in.
    pub metrics: Arc<merpati_runtime::metrics::Metrics>,
    /// Each account's and device's events a second.
    pub rates: Arc<merpati_runtime::limits::RateLimiter>,
    /// This node's id among the nodes of the database, and the slots it holds.
    pub ownership: Arc<merpati_runtime::cluster::Ownership>,
}

impl AppState {
    /// The limits that apply to `account`: its own, else the server's defaults.
    pub async fn limits_of(
        &self,
        account: &merpati_domain::ids::AccountId,
    ) -> super::ApiResult<merpati_domain::limits::Limits> {
        let own = self.store.get_account(account.clone()).await?.limits;
        Ok(self.config.limits.for_account(&own))
    }
}
