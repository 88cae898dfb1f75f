//! One attempt and its record: the unit of work of the worker, run as a task of its own
//! with what every attempt shares.

use std::sync::Arc;

use merpati_domain::clock::SharedClock;
use merpati_domain::delivery::{AttemptRecord, DueDelivery};
use merpati_domain::endpoint::mail_recipients;
use merpati_domain::retry::{next_step, NextStep};
use tokio::sync::mpsc;

use super::breaker::Health;
use super::lanes::Finished;
use super::prepared::Prepared;
use super::{guard, mail, send, DeliveryConfig};
use crate::mail::Mailer;

/// What every attempt shares.
pub(super) struct Sender {
    pub(super) client: send::Client,
    pub(super) guard: guard::Guard,
    pub(super) mailer: Option<Mailer>,
    pub(super) records: mpsc::Sender<AttemptRecord>,
    pub(super) clock: SharedClock,
    pub(super) config: DeliveryConfig,
}

impl Sender {
    /// The same sender with a client of its own; the old client's connections close as the
    /// last attempt holding it ends.
    pub(super) fn with_new_client(&self, resolver: guard::GuardedResolver) -> Sender {
        Sender {
            client: send::client(self.config.timeout, resolver),
            guard: self.guard.clone(),
            mailer: self.mailer.clone(),
            records: self.records.clone(),
            clock: self.clock.clone(),
            config: self.config.clone(),
        }
    }
}

/// One attempt and its record: the unit of work of the worker.
pub(super) async fn deliver(
    sender: Arc<Sender>,
    job: DueDelivery,
    prepared: Arc<Prepared>,
    lane_started_at: i64,
) -> Finished {
    let Sender {
        client,
        guard,
        mailer,
        records,
        clock,
        config,
    } = &*sender;
    let started = clock.now_ms();
    let report = match mail_recipients(&job.endpoint.url) {
        Some(to) => mail::attempt(mailer.as_ref(), &job, to, config.timeout, started).await,
        None => send::attempt(client, guard, &job, &prepared, config.timeout, started).await,
    };
    let next = next_step(
        job.attempt,
        &report.result,
        report.retry_after,
        &config.retry_schedule,
        clock.now_ms(),
        rand::random::<f64>(),
    );
    tracing::debug!(
        delivery = %job.delivery_id,
        endpoint = %job.endpoint.id,
        attempt = job.attempt,
        status = ?report.status_code,
        error = ?report.error_kind,
        ?next,
        "attempt"
    );
    let record = AttemptRecord {
        delivery_id: job.delivery_id,
        endpoint: job.endpoint.clone(),
        attempt: job.attempt,
        started_at: report.started_at,
        duration_ms: report.duration_ms,
        status_code: report.status_code,
        error_kind: report.error_kind.map(str::to_owned),
        error: report.error,
        response_body: report.response_body,
        next,
    };
    let health = Health::of(&report.result);
    // The recorder stops only after the worker, so it takes every record.
    let _ = records.send(record).await;
    Finished {
        delivery_id: job.delivery_id,
        account_id: job.endpoint.account_id.clone(),
        endpoint_id: job.endpoint.id.clone(),
        started_at: lane_started_at,
        health,
        took_ms: report.duration_ms,
        retry_at: match next {
            NextStep::RetryAt(at) => Some(at),
            _ => None,
        },
        recorded_attempt: Some((job.attempt, job.event_id)),
    }
}
