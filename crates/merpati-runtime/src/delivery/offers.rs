//! Deliveries the worker reads rather than claims: a read writes nothing and waits for no
//! write. Other nodes offer it deliveries of its slots: they stored them leased to it for a
//! short offer (`merpati_domain::slots::OFFER_MS`) and sent them, carried whole when the
//! store could (then only their endpoints' targets are read, and those the store may keep),
//! or named by their ids. And a write of this
//! node whose commit went unanswered leaves the deliveries it leased to the worker to read
//! back: they are found only if the write was stored. The worker reads them one read at a
//! time, in room it takes for them. What it has no room for waits for room, and what the
//! store could not be asked for is asked again a second later, while their lease lasts
//! long enough to read them well within it; past that it leaves them: their lease runs
//! out and it claims them as any due delivery.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use merpati_domain::delivery::DueDelivery;
use merpati_domain::endpoint::Target;
use merpati_domain::ids::{DeliveryId, EndpointId};
use merpati_domain::slots::{Offered, OFFER_MS};
use merpati_domain::{SharedStore, StoreResult};
use tokio::sync::Semaphore;

use super::handoff::take_room;

type Read<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A delivery is read only this long before its lease runs out, or it is left to claims.
const READ_MARGIN_MS: i64 = OFFER_MS / 2;

/// Whether a delivery leased until `until` is still worth reading at `now`: well within
/// its lease; later it is left to claims.
fn worth_reading(now: i64, until: i64) -> bool {
    now < until - READ_MARGIN_MS
}

/// After a read the store could not answer, the next waits this long.
const RETRY_AFTER_MS: i64 = 1000;

/// Deliveries to read rather than claim.
#[derive(Debug, PartialEq, Eq)]
pub struct ToRead {
    pub deliveries: Vec<Offered>,
    /// When their lease runs out, if known; an offer heard of now runs out within
    /// [`OFFER_MS`].
    pub leased_until: Option<i64>,
}

impl ToRead {
    /// Deliveries another node offered this one.
    pub fn offered(deliveries: Vec<Offered>) -> ToRead {
        ToRead {
            deliveries,
            leased_until: None,
        }
    }
}

/// A delivery to read, and when its lease runs out.
type Heard = (Offered, i64);

/// What a read found, what it was for, and how much room it was given.
pub(super) struct OffersRead {
    pub(super) now: i64,
    pub(super) room: usize,
    pub(super) asked: Vec<Heard>,
    pub(super) read: StoreResult<Vec<DueDelivery>>,
}

/// The deliveries to read and not read yet, and the read under way.
#[derive(Default)]
pub(super) struct Offers {
    /// In the order heard.
    heard: Vec<Heard>,
    reading: Option<Read<OffersRead>>,
    /// No read starts before this, after one the store could not answer.
    retry_at: Option<i64>,
}

impl Offers {
    pub(super) fn heard(&mut self, to_read: ToRead, now: i64) {
        let until = to_read.leased_until.unwrap_or(now + OFFER_MS);
        self.heard.extend(to_read.deliveries.into_iter().map(|d| {
            // The offer's own end, if it says, and it is sooner (another node's clock).
            let until = d.carried.as_ref().map_or(until, |c| c.until.min(until));
            (d, until)
        }));
    }

    pub(super) fn reading(&self) -> bool {
        self.reading.is_some()
    }

    /// When the next read may start, after one the store could not answer.
    pub(super) fn retry_at(&self) -> Option<i64> {
        self.retry_at.filter(|_| !self.heard.is_empty())
    }

    /// Starts a read (`read`) of what was heard, in as much room as is free, unless one is
    /// under way or the store failed a read less than a second ago; what finds no room
    /// waits for the next read. What is too near the end of its lease to read is let go:
    /// returns when the last of it is due, to claim.
    pub(super) fn read(
        &mut self,
        room: &Semaphore,
        now: i64,
        read: impl FnOnce(Vec<Offered>) -> Read<StoreResult<Vec<DueDelivery>>>,
    ) -> Option<i64> {
        let mut due_at = None;
        self.heard.retain(|&(_, until)| {
            let keep = worth_reading(now, until);
            if !keep {
                due_at = due_at.max(Some(until));
            }
            keep
        });
        if self.reading.is_some() || self.retry_at.is_some_and(|at| now < at) {
            return due_at;
        }
        self.retry_at = None;
        let taken = take_room(room, self.heard.len());
        if taken > 0 {
            let asked: Vec<Heard> = self.heard.drain(..taken).collect();
            let reading = read(asked.iter().map(|(d, _)| d.clone()).collect());
            self.reading = Some(Box::pin(async move {
                OffersRead {
                    now,
                    room: taken,
                    asked,
                    read: reading.await,
                }
            }));
        }
        due_at
    }

    /// Waits for the read under way; call only while [`Offers::reading`].
    pub(super) async fn done(&mut self) -> OffersRead {
        let read = self.reading.as_mut().expect("a read under way").await;
        self.reading = None;
        read
    }

    /// The store could not answer a read made at `now`: what it asked for is read first,
    /// a second later.
    pub(super) fn read_failed(&mut self, asked: Vec<Heard>, now: i64) {
        self.heard.splice(..0, asked);
        self.retry_at = Some(now + RETRY_AFTER_MS);
    }
}

/// The deliveries of offers the worker takes, in the order asked: each offer that carried
/// its delivery with its endpoint's target (none when the endpoint is gone or disabled),
/// the others as the store reads them (those still offered).
pub(super) async fn take_offered(
    store: SharedStore,
    asked: Vec<Offered>,
    now: i64,
) -> StoreResult<Vec<DueDelivery>> {
    let wanted: Vec<(EndpointId, i64)> = asked
        .iter()
        .filter_map(|o| o.carried.as_ref())
        .map(|c| (c.endpoint_id.clone(), c.endpoints_seen))
        .collect();
    let named: Vec<DeliveryId> = asked
        .iter()
        .filter(|o| o.carried.is_none())
        .map(|o| o.id)
        .collect();
    let (targets, read) = tokio::join!(
        async {
            if wanted.is_empty() {
                return Ok(HashMap::new());
            }
            store.offered_targets(wanted, now).await
        },
        async {
            if named.is_empty() {
                return Ok(Vec::new());
            }
            store.read_offered(named, now).await
        },
    );
    Ok(in_order(asked, &targets?, read?))
}

/// The offers asked, in their order, as their first attempts need them.
fn in_order(
    asked: Vec<Offered>,
    targets: &HashMap<EndpointId, Arc<Target>>,
    read: Vec<DueDelivery>,
) -> Vec<DueDelivery> {
    let mut read: HashMap<DeliveryId, DueDelivery> =
        read.into_iter().map(|d| (d.delivery_id, d)).collect();
    asked
        .into_iter()
        .filter_map(|offered| match offered.carried {
            // An offer carries a fresh delivery: nothing was attempted of it.
            Some(c) => targets.get(&c.endpoint_id).map(|target| DueDelivery {
                delivery_id: offered.id,
                attempt: 1,
                event_id: c.event_id,
                payload: c.payload,
                endpoint: target.clone(),
            }),
            None => read.remove(&offered.id),
        })
        .collect()
}

/// A claim whose commit went unanswered: what it asked for, when, and until when it
/// leased what it took, if it was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct UnansweredClaim {
    pub(super) claimed_at: i64,
    pub(super) lease_until: i64,
    pub(super) want: usize,
}

/// Claims whose commit went unanswered, to read back in their order while their lease
/// lasts long enough to read them well within it (`DeliveryStore::read_claimed`).
#[derive(Debug, Default)]
pub(super) struct UnansweredClaims(VecDeque<UnansweredClaim>);

impl UnansweredClaims {
    pub(super) fn add(&mut self, claim: UnansweredClaim) {
        self.0.push_back(claim);
    }

    /// The next claim to read back at `now`, and when the last of those let go (too near
    /// the end of their lease) is due, to claim.
    pub(super) fn next(&mut self, now: i64) -> (Option<UnansweredClaim>, Option<i64>) {
        let mut due_at = None;
        while let Some(claim) = self.0.pop_front() {
            if worth_reading(now, claim.lease_until) {
                return (Some(claim), due_at);
            }
            due_at = due_at.max(Some(claim.lease_until));
        }
        (None, due_at)
    }

    /// A claim not read back after all (the store could not answer): it goes first next.
    pub(super) fn again(&mut self, claim: UnansweredClaim) {
        self.0.push_front(claim);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(id: i64) -> Offered {
        Offered::named(DeliveryId(id))
    }

    fn never(_: Vec<Offered>) -> Read<StoreResult<Vec<DueDelivery>>> {
        Box::pin(std::future::pending())
    }

    fn offered(ids: &[i64]) -> ToRead {
        ToRead::offered(ids.iter().map(|&i| named(i)).collect())
    }

    #[test]
    fn offers_are_read_one_read_at_a_time_and_what_finds_no_room_waits_for_room() {
        let room = Semaphore::new(2);
        let mut offers = Offers::default();
        assert_eq!(offers.read(&room, 0, never), None, "none heard");
        assert!(!offers.reading());
        offers.heard(offered(&[1, 2, 3]), 0);
        let mut asked = Vec::new();
        let left = offers.read(&room, 0, |ids| {
            asked = ids;
            never(Vec::new())
        });
        assert_eq!(left, None, "the one with no room waits");
        assert_eq!(asked, [named(1), named(2)], "in the room there was");
        assert!(offers.reading());
        assert_eq!(room.available_permits(), 0);
        offers.heard(offered(&[4]), 10);
        assert_eq!(offers.read(&room, 10, never), None, "one read at a time");
        assert!(
            offers.heard == [(named(3), OFFER_MS), (named(4), 10 + OFFER_MS)],
            "kept for the next read, in order"
        );
        // The read returned, and an attempt ended: the first to wait goes first.
        offers.reading = None;
        room.add_permits(1);
        let mut asked = Vec::new();
        offers.read(&room, 20, |ids| {
            asked = ids;
            never(Vec::new())
        });
        assert_eq!(asked, [named(3)]);
        // No room until its offer has nearly run out: it is left to claims.
        offers.reading = None;
        room.add_permits(1);
        let left = offers.read(&room, 10 + OFFER_MS - READ_MARGIN_MS, |_| {
            panic!("nothing left worth reading")
        });
        assert_eq!(left, Some(10 + OFFER_MS), "due once its offer runs out");
        assert!(offers.heard.is_empty());
        assert_eq!(room.available_permits(), 1, "no room taken");
    }

    #[test]
    fn offers_heard_too_long_ago_are_left_to_claims() {
        let room = Semaphore::new(10);
        let mut offers = Offers::default();
        offers.heard(offered(&[1]), 0);
        offers.heard(offered(&[2]), 100);
        let mut asked = Vec::new();
        let left = offers.read(&room, OFFER_MS - READ_MARGIN_MS, |ids| {
            asked = ids;
            never(Vec::new())
        });
        assert_eq!(left, Some(OFFER_MS));
        assert_eq!(asked, [named(2)], "only the one heard of lately");
        assert_eq!(room.available_permits(), 9, "room for that one only");
    }

    /// Deliveries leased to this node by a write whose commit went unanswered are read for
    /// as long as their lease allows, through a store that cannot answer for a while.
    #[test]
    fn what_the_store_could_not_be_asked_for_is_asked_again_a_second_later_while_its_lease_lasts() {
        let room = Semaphore::new(10);
        let mut offers = Offers::default();
        let lease = 33_000;
        offers.heard(
            ToRead {
                deliveries: vec![named(7), named(8)],
                leased_until: Some(lease),
            },
            0,
        );
        let mut asked = Vec::new();
        offers.read(&room, 0, |ids| {
            asked = ids;
            never(Vec::new())
        });
        assert_eq!(asked, [named(7), named(8)]);
        // The store is down: the read fails, and what it asked for waits a second.
        let failed = std::mem::take(&mut offers.reading);
        drop(failed);
        room.add_permits(2);
        offers.read_failed(vec![(named(7), lease), (named(8), lease)], 5);
        offers.heard(offered(&[9]), 6);
        assert_eq!(offers.retry_at(), Some(1_005));
        assert_eq!(
            offers.read(&room, 100, |_| panic!("not before a second")),
            None
        );
        assert_eq!(room.available_permits(), 10);
        // The offer heard meanwhile ran out waiting; the two leased long are read.
        let mut asked = Vec::new();
        let left = offers.read(&room, 1_005, |ids| {
            asked = ids;
            never(Vec::new())
        });
        assert_eq!(left, Some(6 + OFFER_MS));
        assert_eq!(asked, [named(7), named(8)], "in their order");
        assert_eq!(offers.retry_at(), None);
        // Failing until their lease is nearly out, they are left to claims then.
        offers.reading = None;
        room.add_permits(2);
        offers.read_failed(vec![(named(7), lease), (named(8), lease)], lease - 600);
        let left = offers.read(&room, lease - READ_MARGIN_MS, |_| panic!("too late"));
        assert_eq!(left, Some(lease));
        assert_eq!(offers.retry_at(), None, "nothing left to read");
    }

    /// An offer that carried its delivery needs only its endpoint's target, and is dropped
    /// without one (the endpoint is gone); one named only is what the store read of it.
    /// Either way, in the order asked.
    #[test]
    fn carried_offers_take_their_targets_and_named_ones_what_was_read_in_the_order_asked() {
        use crate::delivery::handoff::tests::{carrying, due};
        let (ep, gone) = (EndpointId::from("ep"), EndpointId::from("ep_gone"));
        let target = due(0).endpoint;
        let targets = HashMap::from([(ep.clone(), target.clone())]);
        let asked = vec![
            named(1),
            carrying(2, &ep),
            carrying(3, &gone),
            named(4),
            named(5),
        ];
        // The store read 4 and 1 (in its own order), and not 5: no longer offered.
        let mut read_4 = due(4);
        read_4.attempt = 3;
        let took = in_order(asked, &targets, vec![read_4, due(1)]);
        assert_eq!(
            took.iter().map(|d| d.delivery_id.0).collect::<Vec<_>>(),
            [1, 2, 4]
        );
        let carried = &took[1];
        assert_eq!(carried.attempt, 1, "a fresh delivery");
        assert_eq!(carried.event_id.as_str(), "evt_2");
        assert!(Arc::ptr_eq(&carried.endpoint, &target));
        assert_eq!(took[2].attempt, 3, "as read");
    }

    /// An offer that says when it runs out is let go by then, even if heard of just now.
    #[test]
    fn an_offer_heard_late_runs_out_when_it_says() {
        use crate::delivery::handoff::tests::carrying;
        let room = Semaphore::new(10);
        let mut offers = Offers::default();
        // Carried offers run out at 5,000 + OFFER_MS.
        let ep = EndpointId::from("ep");
        offers.heard(ToRead::offered(vec![carrying(1, &ep)]), 5_000 + 200);
        let left = offers.read(&room, 5_000 + OFFER_MS - READ_MARGIN_MS, |_| {
            panic!("too near its end to take")
        });
        assert_eq!(left, Some(5_000 + OFFER_MS));
    }

    #[test]
    fn unanswered_claims_are_read_back_in_order_while_their_lease_lasts() {
        let mut claims = UnansweredClaims::default();
        assert_eq!(claims.next(0), (None, None));
        let claim = |claimed_at| UnansweredClaim {
            claimed_at,
            lease_until: claimed_at + 33_000,
            want: 256,
        };
        claims.add(claim(0));
        claims.add(claim(10));
        assert_eq!(claims.next(100), (Some(claim(0)), None));
        claims.again(claim(0));
        assert_eq!(claims.next(1_100), (Some(claim(0)), None), "first again");
        claims.again(claim(0));
        // The first's lease is nearly out: it is left to claims once it is.
        assert_eq!(
            claims.next(33_000 - READ_MARGIN_MS),
            (Some(claim(10)), Some(33_000))
        );
        claims.again(claim(10));
        assert_eq!(claims.next(33_010), (None, Some(33_010)));
        assert_eq!(claims.next(0), (None, None), "none left");
    }
}
