//! Background deletion, a small chunk per transaction so that ingest never waits long
//! behind it:
//! - retention: events older than `retention.max_age`, with their deliveries, attempts and
//!   dedup records. An event whose deliveries are not all final (pending, or held for a
//!   disabled endpoint) is kept: at-least-once outranks retention. Incidents resolved
//!   before then go too, with their timelines and notifications; open ones stay.
//! - deleted endpoints: their deliveries and attempts, then the endpoints themselves;
//! - deleted accounts: their events (with what hangs off them), then the accounts, once
//!   their endpoints are gone.
//!
//! A deletion marks what it deletes and wakes the pruner; a purge that a restart interrupted
//! is taken up again at the next start.

use std::sync::Arc;
use std::time::Duration;

use merpati_domain::clock::SharedClock;
use merpati_domain::retention::cutoff;
use merpati_domain::{SharedStore, StoreResult};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::cluster::Ownership;

#[derive(Debug, Clone)]
pub struct RetentionConfig {
    /// Events (with their deliveries and attempts) older than this are deleted.
    pub max_age: Duration,
    /// How often the pruner looks.
    pub interval: Duration,
    /// Audit entries older than this are deleted.
    pub audit_max_age: Duration,
    /// How much of the log one part holds, in a log kept in parts (PostgreSQL's): events
    /// go between `max_age` and `max_age` + this (+ `interval`) after they were created.
    pub part_span: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            max_age: Duration::from_secs(30 * 24 * 3600),
            interval: Duration::from_secs(600),
            audit_max_age: Duration::from_secs(90 * 24 * 3600),
            part_span: Duration::from_secs(24 * 3600),
        }
    }
}

/// Events deleted per transaction.
const CHUNK: usize = 500;
/// A deleted endpoint's deliveries deleted per transaction.
const ENDPOINT_CHUNK: usize = 1000;
/// A deleted account's events deleted per transaction (with any deliveries left to them).
const ACCOUNT_CHUNK: usize = 500;
/// The pause between chunks, for other writes to go in between.
const BREATHER: Duration = Duration::from_millis(10);

pub struct Pruner {
    pub store: SharedStore,
    pub clock: SharedClock,
    pub config: RetentionConfig,
    /// Notified when there is something to delete now (an endpoint or account was deleted).
    pub wake: Arc<Notify>,
    /// Only the leading node prunes.
    pub ownership: Arc<Ownership>,
    pub shutdown: CancellationToken,
}

impl Pruner {
    pub async fn run(self) {
        loop {
            // A deletion on another node is pruned at the leader's next look. A node that
            // does not lead (yet) looks again in a second: the leader may be gone, or its
            // own lease not yet sure.
            let leads = self.ownership.leads();
            if leads {
                self.purge_deleted().await;
                self.prune().await;
            }
            let next = if leads {
                self.config.interval
            } else {
                Duration::from_secs(1)
            };
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(next) => {}
            }
        }
    }

    /// One pass: moves a log kept in parts onto its next part when due, then deletes in
    /// chunks until nothing old is left (or shutdown).
    pub async fn prune(&self) -> usize {
        let now = self.clock.now_ms();
        if let Err(e) = self.store.turn_event_log(now, self.config.part_span).await {
            tracing::error!(error = %e, "the event log could not move onto its next part");
        }
        let before = cutoff(now, self.config.max_age);
        let total = self
            .in_chunks(CHUNK, |n| self.store.prune_events(before, n))
            .await;
        if total > 0 {
            tracing::info!(rows = total, "pruned old events");
        }
        let alerts = self
            .in_chunks(CHUNK, |n| self.store.prune_alerts(before, n))
            .await;
        if alerts > 0 {
            tracing::info!(
                rows = alerts,
                "pruned resolved incidents and old notifications"
            );
        }
        let audit_before = cutoff(self.clock.now_ms(), self.config.audit_max_age);
        let audit = self
            .in_chunks(CHUNK, |n| self.store.prune_audit(audit_before, n))
            .await;
        if audit > 0 {
            tracing::info!(entries = audit, "pruned old audit entries");
        }
        total
    }

    /// Every deleted endpoint's rows, then every deleted account's, chunk by chunk (or until
    /// shutdown): the accounts' endpoints are gone by the time their accounts can go.
    pub async fn purge_deleted(&self) {
        let endpoints = self
            .in_chunks(ENDPOINT_CHUNK, |n| self.store.purge_deleted_endpoint(n))
            .await;
        if endpoints > 0 {
            tracing::info!(rows = endpoints, "purged deleted endpoints");
        }
        let accounts = self
            .in_chunks(ACCOUNT_CHUNK, |n| self.store.purge_deleted_account(n))
            .await;
        if accounts > 0 {
            tracing::info!(rows = accounts, "purged deleted accounts");
        }
    }

    /// Runs `chunk` until it deletes nothing more, with a breather between chunks; returns
    /// how many rows went.
    async fn in_chunks<F, Fut>(&self, size: usize, chunk: F) -> usize
    where
        F: Fn(usize) -> Fut,
        Fut: std::future::Future<Output = StoreResult<usize>>,
    {
        let mut total = 0;
        while !self.shutdown.is_cancelled() {
            match chunk(size).await {
                Ok(0) => break,
                Ok(n) => {
                    total += n;
                    tokio::time::sleep(BREATHER).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "background deletion failed");
                    break;
                }
            }
        }
        total
    }
}
