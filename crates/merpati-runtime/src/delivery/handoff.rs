//! How ingest hands fresh deliveries straight to the worker: they are inserted already
//! leased, in the transaction that stores their event, and passed in memory once it
//! commits, so a fresh delivery costs neither a claim (a write) nor a read of its payload.
//! The worker's room bounds what it holds: one permit per delivery it may hold, shared by
//! ingest and the worker's claims. With no room, deliveries are stored due and the worker
//! claims them from the store as it catches up.

use std::sync::Arc;
use std::time::Duration;

use merpati_domain::delivery::{DueDelivery, Reservation};
use merpati_domain::ids::EndpointId;
use tokio::sync::{mpsc, Notify, Semaphore};

use super::DeliveryConfig;

/// Claims cover what is under way and a queue behind it, so that a completion finds the
/// next delivery in memory rather than in the store.
pub(crate) const CLAIM_BATCH: usize = 256;

/// Wakes the worker when new deliveries are due now.
#[derive(Clone, Default)]
pub struct DeliveryWaker(Arc<Notify>);

impl DeliveryWaker {
    pub fn wake(&self) {
        self.0.notify_one();
    }

    pub(crate) async fn woken(&self) {
        self.0.notified().await
    }
}

/// Ingest's end of the handoff, and the API's way to tell the worker an endpoint is gone.
#[derive(Clone)]
pub struct Handoff {
    room: Arc<Semaphore>,
    to_worker: mpsc::UnboundedSender<Vec<DueDelivery>>,
    /// Endpoints deleted, whose lanes the worker forgets.
    deleted: mpsc::UnboundedSender<EndpointId>,
    /// How long a delivery handed over stays leased to this run of the worker.
    lease: Duration,
}

/// The worker's end of the handoff.
pub struct Inbox {
    pub(crate) room: Arc<Semaphore>,
    pub(crate) from_ingest: mpsc::UnboundedReceiver<Vec<DueDelivery>>,
    pub(crate) deleted: mpsc::UnboundedReceiver<EndpointId>,
}

/// A handoff for a worker holding at most `max_in_flight` plus a claim's worth of
/// deliveries.
pub fn handoff(config: &DeliveryConfig) -> (Handoff, Inbox) {
    let room = Arc::new(Semaphore::new(claim_budget(config)));
    let (to_worker, from_ingest) = mpsc::unbounded_channel();
    let (deleted_tx, deleted) = mpsc::unbounded_channel();
    (
        Handoff {
            room: room.clone(),
            to_worker,
            deleted: deleted_tx,
            lease: lease(config),
        },
        Inbox {
            room,
            from_ingest,
            deleted,
        },
    )
}

pub(crate) fn claim_budget(config: &DeliveryConfig) -> usize {
    config.max_in_flight + CLAIM_BATCH
}

/// A claim outlives the longest attempt.
pub(crate) fn lease(config: &DeliveryConfig) -> Duration {
    config.timeout + Duration::from_secs(30)
}

impl Handoff {
    /// Room to take during one write made at `now`.
    pub fn reserve(&self, now: i64) -> Box<dyn Reservation> {
        Box::new(Reserved {
            room: self.room.clone(),
            taken: 0,
            to_worker: self.to_worker.clone(),
            deliveries: Vec::new(),
            lease_until: now + self.lease.as_millis() as i64,
        })
    }

    /// Tells the worker an endpoint is gone (its deliveries with it), so that it forgets
    /// the endpoint's lane: one whose breaker is open would otherwise wait for an outcome
    /// that never comes, and stay in memory.
    pub fn endpoint_deleted(&self, endpoint: EndpointId) {
        // A worker gone (shut down) has no lanes to forget.
        let _ = self.deleted.send(endpoint);
    }
}

/// Room taken in the worker during one write, with the deliveries it is for: sent once the
/// write commits, given back if it does not.
struct Reserved {
    room: Arc<Semaphore>,
    taken: usize,
    to_worker: mpsc::UnboundedSender<Vec<DueDelivery>>,
    deliveries: Vec<DueDelivery>,
    lease_until: i64,
}

impl Reservation for Reserved {
    fn take_room(&mut self) -> bool {
        match self.room.try_acquire() {
            Ok(permit) => {
                permit.forget();
                self.taken += 1;
                true
            }
            Err(_) => false,
        }
    }

    fn lease_until(&self) -> i64 {
        self.lease_until
    }

    fn push(&mut self, delivery: DueDelivery) {
        self.deliveries.push(delivery);
    }

    fn hand_over(mut self: Box<Self>) {
        self.taken = 0;
        let deliveries = std::mem::take(&mut self.deliveries);
        if !deliveries.is_empty() {
            // A worker gone (shut down) leaves them leased; the next start releases them.
            let _ = self.to_worker.send(deliveries);
        }
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        self.room.add_permits(self.taken);
    }
}

/// Takes up to `want` of the room free now, and says how much. Ingest takes room at the same
/// time: whatever it took since the room was last looked at, it hands over itself.
pub(crate) fn take_room(room: &Semaphore, want: usize) -> usize {
    loop {
        let free = room.available_permits().min(want);
        if free == 0 {
            return 0;
        }
        // Fails only when someone took room in between; it is looked at again.
        if let Ok(taken) = room.try_acquire_many(free as u32) {
            taken.forget();
            return free;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use merpati_domain::endpoint::{BodyFormat, Target};
    use merpati_domain::ids::DeliveryId;

    use super::*;

    pub(crate) fn config(max_in_flight: usize) -> DeliveryConfig {
        DeliveryConfig {
            max_in_flight,
            ..DeliveryConfig::default()
        }
    }

    pub(crate) fn due(id: i64) -> DueDelivery {
        DueDelivery {
            delivery_id: DeliveryId(id),
            attempt: 1,
            event_id: format!("evt_{id}").into(),
            payload: "{}".into(),
            endpoint: Arc::new(Target {
                id: "ep".into(),
                account_id: "a".into(),
                url: "http://example.com".into(),
                format: BodyFormat::Json,
                secret_in_body: false,
                headers: BTreeMap::new(),
                secrets: Vec::new(),
                max_concurrency: None,
                ordered: false,
                rate_limit: None,
            }),
        }
    }

    #[test]
    fn room_taken_by_a_write_that_does_not_commit_comes_back() {
        let (handoff, inbox) = handoff(&config(4));
        let budget = claim_budget(&config(4));
        let mut reserved = handoff.reserve(0);
        assert!(reserved.take_room());
        reserved.push(due(1));
        // Taken but the write failed before the delivery was pushed: still given back.
        assert!(reserved.take_room());
        assert_eq!(inbox.room.available_permits(), budget - 2);
        drop(reserved);
        assert_eq!(inbox.room.available_permits(), budget);
    }

    #[test]
    fn the_worker_takes_what_room_is_left_while_ingest_takes_room_too() {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
        let room = Arc::new(Semaphore::new(0));
        let (by_ingest, by_worker, done) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let ingest = {
            let (room, taken, done) = (room.clone(), by_ingest.clone(), done.clone());
            std::thread::spawn(move || {
                while !done.load(SeqCst) {
                    if let Ok(p) = room.try_acquire() {
                        p.forget();
                        taken.fetch_add(1, SeqCst);
                    }
                }
            })
        };
        let worker = {
            let (room, taken, done) = (room.clone(), by_worker.clone(), done.clone());
            std::thread::spawn(move || {
                while !done.load(SeqCst) {
                    taken.fetch_add(take_room(&room, 64), SeqCst);
                }
            })
        };
        // Room comes back a little at a time, as attempts are recorded.
        let given = 1_000_000;
        for _ in 0..given / 4 {
            room.add_permits(4);
        }
        done.store(true, SeqCst);
        ingest.join().unwrap();
        worker.join().expect("the worker never fails to take room");
        let left = room.available_permits();
        assert_eq!(
            by_ingest.load(SeqCst) + by_worker.load(SeqCst) + left,
            given
        );

        assert_eq!(take_room(&room, left + 10), left, "no more than is free");
        assert_eq!(take_room(&room, 10), 0);
    }

    #[test]
    fn room_sent_with_its_deliveries_belongs_to_the_worker() {
        let (handoff, mut inbox) = handoff(&config(0));
        let mut reserved = handoff.reserve(1_000);
        assert_eq!(
            reserved.lease_until(),
            1_000 + lease(&config(0)).as_millis() as i64
        );
        for id in 0..CLAIM_BATCH as i64 {
            assert!(reserved.take_room());
            reserved.push(due(id));
        }
        // No room left: the next delivery is stored due instead.
        assert!(!reserved.take_room());
        reserved.hand_over();
        assert_eq!(inbox.room.available_permits(), 0);
        let handed = inbox.from_ingest.try_recv().expect("sent");
        assert_eq!(handed.len(), CLAIM_BATCH);
        assert_eq!(handed[0].delivery_id, DeliveryId(0));
    }
}
