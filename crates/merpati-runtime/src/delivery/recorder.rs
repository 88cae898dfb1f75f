//! The recorder: writes attempt records as they come, many to a transaction (under load
//! the deliveries finishing while one batch commits make the next batch), then tells the
//! bus what the records did, and wakes the worker for what they made due.

use std::sync::Arc;

use merpati_domain::clock::SharedClock;
use merpati_domain::delivery::{AttemptRecord, Recorded};
use merpati_domain::ids::DeliveryId;
use merpati_domain::retry::NextStep;
use merpati_domain::SharedStore;
use tokio::sync::mpsc;

use super::DeliveryWaker;
use crate::bus::{Bus, Change, DeliveryChange, DeliveryOutcome, EndpointState, StoredEvent};
use crate::cluster::Ownership;
use crate::metrics::{AttemptOutcome, Metrics};

/// Records written in one transaction at most. Under a backlog the attempts ending while a
/// batch commits (20 ms and more behind ingest's writes) outnumber 256, and at 256 the
/// records queued up until the attempts waited to hand theirs over.
pub(crate) const RECORD_BATCH: usize = 1024;

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
        match self
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
                recorded.made_due
            }
            // One bad record (its delivery deleted meanwhile, say) must not cost the others.
            // A batch whose commit went unanswered is sent again too: a record made before
            // changes nothing.
            Err(_) if records.len() > 1 => {
                let mut made_due = 0;
                for record in records.iter() {
                    let alone = Arc::new(vec![record.clone()]);
                    match self
                        .store
                        .record_attempts(fence.clone(), alone.clone(), self.disable_after_ms)
                        .await
                    {
                        Ok(recorded) => {
                            self.publish(&alone, &recorded);
                            made_due += recorded.made_due;
                        }
                        Err(e) => not_recorded(record, &e),
                    }
                }
                made_due
            }
            Err(e) => {
                not_recorded(&records[0], &e);
                0
            }
        }
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

/// The lease runs out and the delivery is attempted again: at least once, not lost.
fn not_recorded(record: &AttemptRecord, e: &merpati_domain::StoreError) {
    tracing::error!(error = %e, delivery = %record.delivery_id, "could not record an attempt");
}
