//! The recorder: writes attempt records as they come, many to a transaction (under load
//! the deliveries finishing while one batch commits make the next batch), then tells the
//! bus what the records did, and wakes the worker for what they made due. A batch the
//! store could not take (it was unavailable, or its commit went unanswered) is sent again,
//! pausing longer each time, while its deliveries' leases last: a record sent twice changes
//! nothing, and one given up on makes its delivery go out again.

use std::sync::Arc;
use std::time::Duration;

use merpati_domain::clock::SharedClock;
use merpati_domain::delivery::{AttemptRecord, Recorded};
use merpati_domain::ids::DeliveryId;
use merpati_domain::retry::NextStep;
use merpati_domain::slots::Fence;
use merpati_domain::{SharedStore, StoreError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::DeliveryWaker;
use crate::bus::{Bus, Change, DeliveryChange, DeliveryOutcome, EndpointState, StoredEvent};
use crate::cluster::Ownership;
use crate::metrics::{AttemptOutcome, Metrics, RecordsRefused};

/// Records written in one transaction at most. Under a backlog the attempts ending while a
/// batch commits (20 ms and more behind ingest's writes) outnumber 256, and at 256 the
/// records queued up until the attempts waited to hand theirs over.
pub(crate) const RECORD_BATCH: usize = 1024;

/// The first pause before a batch the store could not take is sent again; each pause
/// after doubles, up to `LONGEST_PAUSE`.
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const LONGEST_PAUSE: Duration = Duration::from_secs(2);

pub(crate) struct Recorder {
    pub(crate) store: SharedStore,
    pub(crate) waker: DeliveryWaker,
    pub(crate) clock: SharedClock,
    pub(crate) bus: Bus,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) disable_after_ms: i64,
    pub(crate) records: mpsc::Receiver<AttemptRecord>,
    /// Told of each record written (or given up on): a slot is given back only once its
    /// attempts are recorded.
    pub(crate) ownership: Arc<Ownership>,
    /// Told the deliveries of each batch once it is written (or given up on).
    pub(crate) recorded: mpsc::UnboundedSender<Vec<DeliveryId>>,
    /// How long a batch is sent again after the store first could not take it: what is
    /// left of its deliveries' leases once their attempts are over.
    pub(crate) keep_trying: Duration,
    /// Once the node shuts down, a batch is not sent again.
    pub(crate) shutdown: CancellationToken,
}

impl Recorder {
    /// Runs until every sender of records is gone (the worker and its attempts).
    pub(crate) async fn run(mut self) {
        let mut batch = Vec::with_capacity(RECORD_BATCH);
        while self.records.recv_many(&mut batch, RECORD_BATCH).await > 0 {
            let records = Arc::new(std::mem::take(&mut batch));
            let made_due = self.record(records.clone()).await;
            for r in records.iter() {
                self.ownership.attempt_recorded(&r.endpoint.id);
            }
            // A worker gone (shut down) needs no telling.
            let _ = self
                .recorded
                .send(records.iter().map(|r| r.delivery_id).collect());
            // A retry already due by the time it is written was perhaps looked for too
            // early.
            let now = self.clock.now_ms();
            let retry_due = records
                .iter()
                .any(|r| matches!(r.next, NextStep::RetryAt(at) if at <= now));
            if made_due > 0 || retry_due {
                self.waker.wake();
            }
        }
    }

    /// Writes a batch; returns how many deliveries it made due.
    async fn record(&self, records: Arc<Vec<AttemptRecord>>) -> usize {
        let fence = self.ownership.fence();
        // The leases of the batch's deliveries, and so the sending again, end together.
        let give_up_at = tokio::time::Instant::now() + self.keep_trying;
        match self.send(&fence, records.clone(), give_up_at).await {
            Ok(made_due) => made_due,
            // One bad record (its delivery deleted meanwhile, say) must not cost the others.
            Err(e) if records.len() > 1 && !transient(&e) => {
                let mut made_due = 0;
                for record in records.iter() {
                    let alone = Arc::new(vec![record.clone()]);
                    match self.send(&fence, alone, give_up_at).await {
                        Ok(n) => made_due += n,
                        Err(e) => self.not_recorded(record, &e),
                    }
                }
                made_due
            }
            Err(e) => {
                for record in records.iter() {
                    self.not_recorded(record, &e);
                }
                0
            }
        }
    }

    /// Sends a batch, and again, pausing longer each time, while the store cannot take it
    /// and it is before `give_up_at`; returns how many deliveries it made due, or the
    /// store's last refusal.
    async fn send(
        &self,
        fence: &Arc<Fence>,
        records: Arc<Vec<AttemptRecord>>,
        give_up_at: tokio::time::Instant,
    ) -> Result<usize, StoreError> {
        let mut pause = FIRST_PAUSE;
        loop {
            let e = match self
                .store
                .record_attempts(fence.clone(), records.clone(), self.disable_after_ms)
                .await
            {
                Ok(recorded) => {
                    if recorded.fenced_out > 0 {
                        tracing::info!(
                            records = recorded.fenced_out,
                            "attempts not recorded: their slot is another node's now, which \
                             attempts them again"
                        );
                    }
                    self.publish(&records, &recorded);
                    return Ok(recorded.made_due);
                }
                Err(e) => e,
            };
            let left = give_up_at.saturating_duration_since(tokio::time::Instant::now());
            if !send_again(&e, pause, left) || self.shutdown.is_cancelled() {
                return Err(e);
            }
            tracing::warn!(error = %e, records = records.len(), retry_in = ?pause,
                "could not record attempts; sending them again");
            self.metrics
                .records_refused(RecordsRefused::SentAgain, records.len());
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = self.shutdown.cancelled() => {}
            }
            pause = (pause * 2).min(LONGEST_PAUSE);
        }
    }

    /// The lease runs out and the delivery is attempted again: at least once, not lost.
    fn not_recorded(&self, record: &AttemptRecord, e: &StoreError) {
        tracing::error!(error = %e, delivery = %record.delivery_id, "could not record an attempt");
        self.metrics.records_refused(RecordsRefused::GivenUp, 1);
    }

    fn publish(&self, records: &[AttemptRecord], recorded: &Recorded) {
        for r in records {
            let outcome = match r.next {
                NextStep::Succeeded => AttemptOutcome::Succeeded,
                NextStep::Failed => AttemptOutcome::Failed,
                NextStep::RetryAt(_) => AttemptOutcome::Retrying,
            };
            self.metrics.attempt(outcome, r.duration_ms);
        }
        for _ in &recorded.disabled {
            self.metrics.event("endpoint.disabled");
        }
        if !self.bus.is_watched() {
            return;
        }
        for r in records {
            let outcome = match r.next {
                NextStep::Succeeded => DeliveryOutcome::Succeeded,
                NextStep::Failed => DeliveryOutcome::Failed,
                NextStep::RetryAt(at) => DeliveryOutcome::Retrying(at),
            };
            self.bus.publish(Change::Delivery(Arc::new(DeliveryChange {
                account: r.endpoint.account_id.clone(),
                endpoint: r.endpoint.id.clone(),
                delivery: r.delivery_id,
                attempt: r.attempt,
                outcome,
                status_code: r.status_code,
                duration_ms: r.duration_ms,
            })));
        }
        for disabled in &recorded.disabled {
            self.bus.publish(Change::Endpoint {
                account: disabled.account_id.clone(),
                endpoint: disabled.endpoint_id.clone(),
                state: EndpointState::Disabled(disabled.reason),
            });
            self.bus.publish(Change::EventsStored {
                account: disabled.account_id.clone(),
                events: Arc::new([StoredEvent {
                    id: disabled.notice.clone(),
                    event_type: "endpoint.disabled",
                    device: None,
                }]),
            });
        }
    }
}

/// Whether the store may take later what it could not take now: it was unavailable, or
/// did not answer the commit (which a record sent again cannot make twice).
fn transient(e: &StoreError) -> bool {
    matches!(e, StoreError::Unavailable(_) | StoreError::Unanswered(_))
}

/// Whether a batch the store refused with `e` is sent again after `pause`, with `left` of
/// the time its leases leave for it; otherwise it is given up.
fn send_again(e: &StoreError, pause: Duration, left: Duration) -> bool {
    transient(e) && pause <= left
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_that_cannot_take_a_batch_now_is_asked_again_while_the_leases_last() {
        let down = StoreError::Unavailable("connection refused".into());
        let unanswered = StoreError::Unanswered("connection lost".into());
        let pause = Duration::from_millis(400);
        assert!(send_again(&down, pause, Duration::from_secs(30)));
        assert!(send_again(&unanswered, pause, Duration::from_secs(1)));
        assert!(send_again(&down, pause, pause));
        // A pause that would end past the leases is not taken.
        assert!(!send_again(&down, pause, Duration::from_millis(300)));
        assert!(!send_again(&down, pause, Duration::ZERO));
    }

    #[test]
    fn a_batch_the_store_refuses_for_what_it_holds_is_not_sent_again_as_it_was() {
        let pause = Duration::from_millis(100);
        for refused in [
            StoreError::NotFound("delivery"),
            StoreError::Conflict("taken".into()),
            StoreError::Invalid("bad".into()),
            StoreError::Internal("corrupt".into()),
        ] {
            assert!(
                !send_again(&refused, pause, Duration::from_secs(30)),
                "{refused}"
            );
            assert!(!transient(&refused));
        }
    }
}
