//! How ingest hands fresh deliveries straight to the worker: they are inserted already
//! leased, in the transaction that stores their event, and passed in memory once it
//! commits, so a fresh delivery costs neither a claim (a write) nor a read of its payload.
//! The worker's room bounds what it holds: one permit per delivery it may hold, shared by
//! ingest and the worker's claims. With no room, deliveries are stored due and the worker
//! claims them from the store as it catches up. Deliveries of slots another node holds are
//! stored leased to that node for a short offer (`merpati_domain::slots::OFFER_MS`), and
//! sent to it once the write commits ([`OwnersToWake`]), with what their first attempt
//! needs when the store can carry it: it takes them rather than claims them
//! ([`Handoff::offered`]), and claims them only if it never does.

use std::sync::Arc;
use std::time::Duration;

use std::collections::BTreeMap;

use merpati_domain::delivery::{DueDelivery, Reservation};
use merpati_domain::ids::EndpointId;
use merpati_domain::slots::{slot_of, Offer, Offered, Slot, OFFER_MS};
use merpati_domain::SharedStore;
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use super::offers::ToRead;
use super::DeliveryConfig;
use crate::cluster::Ownership;

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
    ownership: Arc<Ownership>,
    /// Deliveries writes here offered to the owners of other nodes' slots.
    elsewhere: mpsc::UnboundedSender<Offers>,
    /// Deliveries to read rather than claim: offered by other nodes, or leased by writes
    /// whose commit went unanswered.
    to_read: mpsc::UnboundedSender<ToRead>,
}

/// Deliveries offered, by slot.
type Offers = BTreeMap<Slot, Vec<Offered>>;

/// Tells the owners of slots held elsewhere of the deliveries writes here offered them:
/// one notification at a time, with every offer made since the last.
pub struct OwnersToWake {
    offers: mpsc::UnboundedReceiver<Offers>,
}

impl OwnersToWake {
    /// Runs until shutdown.
    pub async fn run(mut self, store: SharedStore, shutdown: CancellationToken) {
        let mut batch = Vec::new();
        loop {
            let got = tokio::select! {
                () = shutdown.cancelled() => return,
                n = self.offers.recv_many(&mut batch, 1024) => n,
            };
            if got == 0 {
                return;
            }
            let mut offers = Offers::new();
            for made in batch.drain(..) {
                for (slot, ids) in made {
                    offers.entry(slot).or_default().extend(ids);
                }
            }
            let offers = offers
                .into_iter()
                .map(|(slot, deliveries)| Offer { slot, deliveries })
                .collect();
            if let Err(e) = store.offer_to_owners(offers).await {
                // The owners claim the deliveries once their offer runs out.
                tracing::debug!(error = %e, "could not offer deliveries to their owners");
            }
        }
    }
}

/// The worker's end of the handoff.
pub struct Inbox {
    pub(crate) room: Arc<Semaphore>,
    pub(crate) from_ingest: mpsc::UnboundedReceiver<Vec<DueDelivery>>,
    pub(crate) deleted: mpsc::UnboundedReceiver<EndpointId>,
    /// Deliveries to read rather than claim.
    pub(crate) to_read: mpsc::UnboundedReceiver<ToRead>,
}

/// A handoff for a worker holding at most `max_in_flight` plus a claim's worth of
/// deliveries, of the slots `ownership` holds.
pub fn handoff(
    config: &DeliveryConfig,
    ownership: Arc<Ownership>,
) -> (Handoff, Inbox, OwnersToWake) {
    let room = Arc::new(Semaphore::new(claim_budget(config)));
    let (to_worker, from_ingest) = mpsc::unbounded_channel();
    let (deleted_tx, deleted) = mpsc::unbounded_channel();
    let (elsewhere, offers) = mpsc::unbounded_channel();
    let (to_read_tx, to_read) = mpsc::unbounded_channel();
    (
        Handoff {
            room: room.clone(),
            to_worker,
            deleted: deleted_tx,
            lease: lease(config),
            ownership,
            elsewhere,
            to_read: to_read_tx,
        },
        Inbox {
            room,
            from_ingest,
            deleted,
            to_read,
        },
        OwnersToWake { offers },
    )
}

pub(crate) fn claim_budget(config: &DeliveryConfig) -> usize {
    config.max_in_flight + CLAIM_BATCH
}

/// How long a claim outlives the longest attempt: time left to record it.
pub(crate) const LEASE_MARGIN: Duration = Duration::from_secs(30);

/// A claim outlives the longest attempt.
pub(crate) fn lease(config: &DeliveryConfig) -> Duration {
    config.timeout + LEASE_MARGIN
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
            offer_until: now + OFFER_MS,
            ownership: self.ownership.clone(),
            elsewhere: Offers::new(),
            wake_elsewhere: self.elsewhere.clone(),
            to_read: self.to_read.clone(),
        })
    }

    /// Tells the worker an endpoint is gone (its deliveries with it), so that it forgets
    /// the endpoint's lane: one whose breaker is open would otherwise wait for an outcome
    /// that never comes, and stay in memory.
    pub fn endpoint_deleted(&self, endpoint: EndpointId) {
        // A worker gone (shut down) has no lanes to forget.
        let _ = self.deleted.send(endpoint);
    }

    /// Deliveries another node offered this one, of its active slots: the worker takes
    /// them, room permitting.
    pub fn offered(&self, deliveries: Vec<Offered>) {
        if !deliveries.is_empty() {
            let _ = self.to_read.send(ToRead::offered(deliveries));
        }
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
    offer_until: i64,
    ownership: Arc<Ownership>,
    /// Deliveries this write offered to the owners of other nodes' slots.
    elsewhere: Offers,
    wake_elsewhere: mpsc::UnboundedSender<Offers>,
    to_read: mpsc::UnboundedSender<ToRead>,
}

impl Reserved {
    /// Names what the write offered to its slots' owners, who find it only if it is
    /// stored.
    fn offer_elsewhere(&mut self) {
        if !self.elsewhere.is_empty() {
            let _ = self
                .wake_elsewhere
                .send(std::mem::take(&mut self.elsewhere));
        }
    }
}

impl Reservation for Reserved {
    fn take_room(&mut self, endpoint: &EndpointId) -> bool {
        if !self.ownership.takes(endpoint) {
            return false;
        }
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

    fn offer_until(&mut self, endpoint: &EndpointId) -> Option<i64> {
        (!self.ownership.takes(endpoint)).then_some(self.offer_until)
    }

    fn offered(&mut self, endpoint: &EndpointId, delivery: Offered) {
        self.elsewhere
            .entry(slot_of(endpoint))
            .or_default()
            .push(delivery);
    }

    fn push(&mut self, delivery: DueDelivery) {
        self.deliveries.push(delivery);
    }

    fn hand_over(mut self: Box<Self>) {
        self.taken = 0;
        self.offer_elsewhere();
        let deliveries = std::mem::take(&mut self.deliveries);
        if !deliveries.is_empty() {
            // A worker gone (shut down) leaves them leased; the next start releases them.
            let _ = self.to_worker.send(deliveries);
        }
    }

    fn unanswered(mut self: Box<Self>) {
        // The write may not be stored: the owners read what was offered, and find it only
        // if it was, rather than take what an offer carries.
        for offered in self.elsewhere.values_mut().flatten() {
            offered.carried = None;
        }
        self.offer_elsewhere();
        let deliveries: Vec<Offered> = self
            .deliveries
            .drain(..)
            .map(|d| Offered::named(d.delivery_id))
            .collect();
        if !deliveries.is_empty() {
            let _ = self.to_read.send(ToRead {
                deliveries,
                leased_until: Some(self.lease_until),
            });
        }
        // The room taken goes back as the reservation drops: a read takes its own.
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

    pub(crate) fn sole() -> Arc<Ownership> {
        Arc::new(Ownership::sole("node_test"))
    }

    pub(crate) fn config(max_in_flight: usize) -> DeliveryConfig {
        DeliveryConfig {
            max_in_flight,
            ..DeliveryConfig::default()
        }
    }

    /// An offer carrying its delivery to `endpoint`.
    pub(crate) fn carrying(id: i64, endpoint: &EndpointId) -> Offered {
        Offered {
            id: DeliveryId(id),
            carried: Some(merpati_domain::slots::Carried {
                event_id: format!("evt_{id}").into(),
                payload: "{}".into(),
                endpoint_id: endpoint.clone(),
                until: 5_000 + OFFER_MS,
                endpoints_seen: 1,
            }),
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
                breaker: None,
                rate_limit: None,
            }),
        }
    }

    #[test]
    fn room_taken_by_a_write_that_does_not_commit_comes_back() {
        let (handoff, inbox, _) = handoff(&config(4), sole());
        let budget = claim_budget(&config(4));
        let mut reserved = handoff.reserve(0);
        assert!(reserved.take_room(&"ep".into()));
        reserved.push(due(1));
        // Taken but the write failed before the delivery was pushed: still given back.
        assert!(reserved.take_room(&"ep".into()));
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
    fn deliveries_of_slots_held_elsewhere_are_offered_to_their_owner_once_committed() {
        let ownership = Arc::new(Ownership::new("node_test"));
        let (handoff, inbox, mut owners) = handoff(&config(4), ownership);
        let budget = claim_budget(&config(4));
        let ep = EndpointId::from("ep_elsewhere");
        let mut reserved = handoff.reserve(5_000);
        assert!(!reserved.take_room(&ep), "not this node's slot");
        assert_eq!(reserved.offer_until(&ep), Some(5_000 + OFFER_MS));
        reserved.offered(&ep, Offered::named(DeliveryId(1)));
        assert_eq!(inbox.room.available_permits(), budget, "no room taken");
        drop(reserved);
        assert!(
            owners.offers.try_recv().is_err(),
            "not committed: nothing offered"
        );
        let mut reserved = handoff.reserve(5_000);
        assert!(!reserved.take_room(&ep));
        reserved.offered(&ep, carrying(2, &ep));
        reserved.offered(&ep, Offered::named(DeliveryId(3)));
        reserved.hand_over();
        assert_eq!(
            owners.offers.try_recv().expect("sent"),
            Offers::from([(
                slot_of(&ep),
                vec![carrying(2, &ep), Offered::named(DeliveryId(3))]
            )])
        );
    }

    #[test]
    fn a_write_whose_commit_went_unanswered_gives_its_room_back_and_its_deliveries_to_read() {
        let (handoff, mut inbox, mut owners) = handoff(&config(4), sole());
        let budget = claim_budget(&config(4));
        let mut reserved = handoff.reserve(1_000);
        assert!(reserved.take_room(&"ep".into()));
        reserved.push(due(1));
        let elsewhere = EndpointId::from("ep_elsewhere");
        reserved.offered(&elsewhere, carrying(2, &elsewhere));
        reserved.unanswered();
        assert_eq!(inbox.room.available_permits(), budget, "room given back");
        assert!(inbox.from_ingest.try_recv().is_err(), "nothing handed over");
        assert_eq!(
            inbox.to_read.try_recv().expect("to read"),
            ToRead {
                deliveries: vec![Offered::named(DeliveryId(1))],
                leased_until: Some(1_000 + lease(&config(4)).as_millis() as i64),
            }
        );
        assert_eq!(
            owners.offers.try_recv().expect("offered"),
            Offers::from([(slot_of(&elsewhere), vec![Offered::named(DeliveryId(2))])]),
            "named only: the owner finds it only if it was stored"
        );
    }

    #[test]
    fn deliveries_of_this_nodes_slots_are_not_offered_when_there_is_no_room() {
        let (handoff, _inbox, _) = handoff(&config(0), sole());
        let mut reserved = handoff.reserve(0);
        for _ in 0..CLAIM_BATCH {
            assert!(reserved.take_room(&"ep".into()));
        }
        assert!(!reserved.take_room(&"ep".into()));
        assert_eq!(reserved.offer_until(&"ep".into()), None, "stored due");
    }

    #[test]
    fn room_sent_with_its_deliveries_belongs_to_the_worker() {
        let (handoff, mut inbox, _) = handoff(&config(0), sole());
        let mut reserved = handoff.reserve(1_000);
        assert_eq!(
            reserved.lease_until(),
            1_000 + lease(&config(0)).as_millis() as i64
        );
        for id in 0..CLAIM_BATCH as i64 {
            assert!(reserved.take_room(&"ep".into()));
            reserved.push(due(id));
        }
        // No room left: the next delivery is stored due instead.
        assert!(!reserved.take_room(&"ep".into()));
        reserved.hand_over();
        assert_eq!(inbox.room.available_permits(), 0);
        let handed = inbox.from_ingest.try_recv().expect("sent");
        assert_eq!(handed.len(), CLAIM_BATCH);
        assert_eq!(handed[0].delivery_id, DeliveryId(0));
    }
}
