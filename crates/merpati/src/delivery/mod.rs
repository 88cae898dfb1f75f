//! Delivery: the worker that takes due deliveries from the store, sends each as one attempt
//! and records the outcome and the next step.
//!
//! The worker never polls: it sleeps until the earliest due delivery or until ingest wakes
//! it. A claimed delivery is leased (its due time pushed past the attempt's timeout), so
//! a crash mid-attempt leaves it due again rather than lost. No database connection is held
//! while a request is under way: claim, send, record are three separate steps.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::config::DeliveryConfig;
use crate::endpoints::BodyFormat;
use crate::store::{SharedStore, StoreResult};

pub mod guard;
pub mod retry;
pub mod send;

use retry::{next_step, NextStep};

/// A delivery ready for its next attempt, with everything the attempt needs.
#[derive(Debug, Clone)]
pub struct DueDelivery {
    pub delivery_id: i64,
    /// The number of this attempt (1 for the first).
    pub attempt: i64,
    pub event_id: String,
    pub payload: String,
    pub endpoint: Target,
}

#[derive(Debug, Clone)]
pub struct Target {
    pub id: String,
    pub url: String,
    pub format: BodyFormat,
    pub secret_in_body: bool,
    pub headers: BTreeMap<String, String>,
    /// Live secrets, newest first.
    pub secrets: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub delivery_id: i64,
    pub attempt: i64,
    pub started_at: i64,
    pub duration_ms: i64,
    pub status_code: Option<u16>,
    pub error_kind: Option<String>,
    pub error: Option<String>,
    pub response_body: Option<String>,
    pub next: NextStep,
}

#[async_trait::async_trait]
pub trait DeliveryStore: Send + Sync {
    /// Takes up to `limit` deliveries due at `now` and leases them until `lease_until`.
    async fn claim_due(
        &self,
        now: i64,
        limit: usize,
        lease_until: i64,
    ) -> StoreResult<Vec<DueDelivery>>;
    /// When the earliest pending delivery is due, if any.
    async fn next_due_at(&self) -> StoreResult<Option<i64>>;
    /// Records the attempt, the delivery's next step and the endpoint's health: a success
    /// clears its failing streak; a 410, or failing without a success for `disable_after_ms`,
    /// disables it (holding its pending deliveries) and tells the account's other endpoints
    /// with `endpoint.disabled`. Returns how many deliveries that made due.
    async fn record_attempt(
        &self,
        record: AttemptRecord,
        disable_after_ms: i64,
    ) -> StoreResult<usize>;
    /// At start: leases held by a previous run of this node are void. Returns how many.
    async fn release_claims(&self, now: i64) -> StoreResult<usize>;
}

/// Wakes the worker when new deliveries are due now.
#[derive(Clone, Default)]
pub struct DeliveryWaker(Arc<Notify>);

impl DeliveryWaker {
    pub fn wake(&self) {
        self.0.notify_one();
    }
}

const CLAIM_BATCH: usize = 256;

pub struct Worker {
    pub store: SharedStore,
    pub config: DeliveryConfig,
    pub clock: SharedClock,
    pub waker: DeliveryWaker,
    pub shutdown: CancellationToken,
}

impl Worker {
    /// Runs until shutdown, then waits for the attempts under way (bounded by the timeout).
    pub async fn run(self) {
        let guard = guard::Guard::new(self.config.allowed_networks.clone());
        let resolver = guard::GuardedResolver::new(guard.clone(), self.config.resolve.clone());
        let client = send::client(self.config.timeout, resolver);
        let lease = self.config.timeout + Duration::from_secs(30);
        match self.store.release_claims(self.clock.now_ms()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deliveries = n, "resuming deliveries interrupted by a stop"),
            Err(e) => tracing::error!(error = %e, "could not release old claims"),
        }
        let min_claim = (self.config.max_in_flight / 4).clamp(1, CLAIM_BATCH);
        let mut in_flight: JoinSet<()> = JoinSet::new();
        // A claim whose lease ran out while its attempt is still under way (the clock
        // stepped) must not start a second attempt beside the first.
        let mut running: HashMap<tokio::task::Id, i64> = HashMap::new();
        let mut busy: HashSet<i64> = HashSet::new();
        loop {
            if self.shutdown.is_cancelled() {
                break;
            }
            let room = self.config.max_in_flight.saturating_sub(in_flight.len());
            // Claim in batches: with the pipe full, claiming one delivery per completion
            // would cost a write transaction per delivery.
            let worth_claiming = room >= min_claim || in_flight.is_empty();
            let mut more_due = false;
            if room > 0 && worth_claiming {
                let want = room.min(CLAIM_BATCH);
                let now = self.clock.now_ms();
                match self
                    .store
                    .claim_due(now, want, now + lease.as_millis() as i64)
                    .await
                {
                    Ok(jobs) => {
                        more_due = jobs.len() == want;
                        for job in jobs {
                            if !busy.insert(job.delivery_id) {
                                continue;
                            }
                            let id = job.delivery_id;
                            let task = in_flight.spawn(deliver(
                                self.store.clone(),
                                client.clone(),
                                guard.clone(),
                                self.waker.clone(),
                                self.clock.clone(),
                                self.config.clone(),
                                job,
                            ));
                            running.insert(task.id(), id);
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "could not claim deliveries"),
                }
            }
            if more_due && in_flight.len() < self.config.max_in_flight {
                continue;
            }
            let wake_at = if !worth_claiming || in_flight.len() >= self.config.max_in_flight {
                None
            } else {
                match self.store.next_due_at().await {
                    Ok(at) => at,
                    Err(e) => {
                        tracing::error!(error = %e, "could not read the next due time");
                        Some(self.clock.now_ms() + 1000)
                    }
                }
            };
            let sleep = wake_at.map(|at| {
                let wait = (at - self.clock.now_ms()).max(0) as u64;
                tokio::time::sleep(Duration::from_millis(wait))
            });
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = self.waker.0.notified() => {}
                Some(done) = in_flight.join_next_with_id(), if !in_flight.is_empty() => {
                    let task = match done {
                        Ok((task, ())) => task,
                        Err(e) => {
                            tracing::error!(error = %e, "delivery task failed");
                            e.id()
                        }
                    };
                    if let Some(id) = running.remove(&task) {
                        busy.remove(&id);
                    }
                }
                _ = async { sleep.expect("guarded").await }, if sleep.is_some() => {}
            }
        }
        // Attempts under way finish (each is bounded by the timeout) and are recorded; one
        // that does not is left leased, and is retried after the next start.
        let grace = self.config.timeout + Duration::from_secs(1);
        let _ = tokio::time::timeout(grace, async {
            while in_flight.join_next().await.is_some() {}
        })
        .await;
        in_flight.shutdown().await;
    }
}

/// One attempt and its record: the unit of work of the worker.
async fn deliver(
    store: SharedStore,
    client: reqwest::Client,
    guard: guard::Guard,
    waker: DeliveryWaker,
    clock: SharedClock,
    config: DeliveryConfig,
    job: DueDelivery,
) {
    let started = clock.now_ms();
    let report = send::attempt(&client, &guard, &job, config.timeout, started).await;
    let next = next_step(
        job.attempt,
        &report.result,
        report.retry_after,
        &config.retry_schedule,
        clock.now_ms(),
        rand::random::<f64>(),
    );
    tracing::debug!(
        delivery = job.delivery_id,
        endpoint = %job.endpoint.id,
        attempt = job.attempt,
        status = ?report.status_code,
        error = ?report.error_kind,
        ?next,
        "attempt"
    );
    let record = AttemptRecord {
        delivery_id: job.delivery_id,
        attempt: job.attempt,
        started_at: report.started_at,
        duration_ms: report.duration_ms,
        status_code: report.status_code,
        error_kind: report.error_kind.map(str::to_owned),
        error: report.error,
        response_body: report.response_body,
        next,
    };
    let disable_after = config.disable_after.as_millis() as i64;
    match store.record_attempt(record, disable_after).await {
        Ok(0) => {}
        Ok(_) => waker.wake(),
        // The lease runs out and the delivery is attempted again: at least once, not lost.
        Err(e) => {
            tracing::error!(error = %e, delivery = job.delivery_id, "could not record an attempt")
        }
    }
}
