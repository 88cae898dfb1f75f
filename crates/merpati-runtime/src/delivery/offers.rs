//! Deliveries other nodes offered this one: they stored them leased to it for a short
//! offer (`merpati_domain::slots::OFFER_MS`) and sent their ids. The worker reads them, one
//! read at a time, in room it takes for them, rather than claims them: a read writes
//! nothing and waits for no write. What it has no room for waits for room while its offer
//! lasts; what it heard of too long ago to read well within the offer it leaves: their
//! offer runs out and it claims them as any due delivery.

use std::future::Future;
use std::pin::Pin;

use merpati_domain::delivery::DueDelivery;
use merpati_domain::ids::DeliveryId;
use merpati_domain::slots::OFFER_MS;
use merpati_domain::StoreResult;
use tokio::sync::Semaphore;

use super::handoff::take_room;

type Read<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Offers heard longer ago than this are left to claims.
const READ_WITHIN_MS: i64 = OFFER_MS / 2;

/// What a read of offered deliveries found, and how much room it was given.
pub(super) struct OffersRead {
    pub(super) now: i64,
    pub(super) room: usize,
    pub(super) read: StoreResult<Vec<DueDelivery>>,
}

/// The offers heard and not read yet, and the read under way.
#[derive(Default)]
pub(super) struct Offers {
    /// Each delivery offered, and when it was heard of.
    heard: Vec<(DeliveryId, i64)>,
    reading: Option<Read<OffersRead>>,
}

/// What became of the offers heard when a read started.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Left {
    /// Every one is being read (or there were none).
    Nothing,
    /// Some were heard of too long ago: they are due, to claim, once their offer runs out.
    DueAfterOffer,
}

impl Offers {
    pub(super) fn heard(&mut self, deliveries: Vec<DeliveryId>, now: i64) {
        self.heard.extend(deliveries.into_iter().map(|d| (d, now)));
    }

    pub(super) fn reading(&self) -> bool {
        self.reading.is_some()
    }

    /// Starts a read (`read`) of what was heard, in as much room as is free, unless one
    /// is under way; what finds no room waits for the next read, and what was heard of too
    /// long ago is let go.
    pub(super) fn read(
        &mut self,
        room: &Semaphore,
        now: i64,
        read: impl FnOnce(Vec<DeliveryId>) -> Read<StoreResult<Vec<DueDelivery>>>,
    ) -> Left {
        if self.reading.is_some() || self.heard.is_empty() {
            return Left::Nothing;
        }
        let heard = self.heard.len();
        self.heard.retain(|(_, at)| now - at < READ_WITHIN_MS);
        let left = if self.heard.len() < heard {
            Left::DueAfterOffer
        } else {
            Left::Nothing
        };
        let taken = take_room(room, self.heard.len());
        let ids: Vec<DeliveryId> = self.heard.drain(..taken).map(|(d, _)| d).collect();
        if !ids.is_empty() {
            let reading = read(ids);
            self.reading = Some(Box::pin(async move {
                OffersRead {
                    now,
                    room: taken,
                    read: reading.await,
                }
            }));
        }
        left
    }

    /// Waits for the read under way; call only while [`Offers::reading`].
    pub(super) async fn done(&mut self) -> OffersRead {
        let read = self.reading.as_mut().expect("a read under way").await;
        self.reading = None;
        read
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn never(_: Vec<DeliveryId>) -> Read<StoreResult<Vec<DueDelivery>>> {
        Box::pin(std::future::pending())
    }

    #[test]
    fn offers_are_read_one_read_at_a_time_and_what_finds_no_room_waits_for_room() {
        let room = Semaphore::new(2);
        let mut offers = Offers::default();
        assert_eq!(offers.read(&room, 0, never), Left::Nothing, "none heard");
        assert!(!offers.reading());
        offers.heard(vec![DeliveryId(1), DeliveryId(2), DeliveryId(3)], 0);
        let mut asked = Vec::new();
        let left = offers.read(&room, 0, |ids| {
            asked = ids;
            never(Vec::new())
        });
        assert_eq!(left, Left::Nothing, "the one with no room waits");
        assert_eq!(
            asked,
            [DeliveryId(1), DeliveryId(2)],
            "in the room there was"
        );
        assert!(offers.reading());
        assert_eq!(room.available_permits(), 0);
        offers.heard(vec![DeliveryId(4)], 10);
        assert_eq!(
            offers.read(&room, 10, never),
            Left::Nothing,
            "one read at a time"
        );
        assert!(
            offers.heard == [(DeliveryId(3), 0), (DeliveryId(4), 10)],
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
        assert_eq!(asked, [DeliveryId(3)]);
        // No room until its offer has nearly run out: it is left to claims.
        offers.reading = None;
        room.add_permits(1);
        let left = offers.read(&room, 10 + READ_WITHIN_MS, |_| {
            panic!("nothing left worth reading")
        });
        assert_eq!(left, Left::DueAfterOffer);
        assert!(offers.heard.is_empty());
        assert_eq!(room.available_permits(), 1, "no room taken");
    }

    #[test]
    fn offers_heard_too_long_ago_are_left_to_claims() {
        let room = Semaphore::new(10);
        let mut offers = Offers::default();
        offers.heard(vec![DeliveryId(1)], 0);
        offers.heard(vec![DeliveryId(2)], 100);
        let mut asked = Vec::new();
        let left = offers.read(&room, READ_WITHIN_MS, |ids| {
            asked = ids;
            never(Vec::new())
        });
        assert_eq!(left, Left::DueAfterOffer);
        assert_eq!(asked, [DeliveryId(2)], "only the one heard of lately");
        assert_eq!(room.available_permits(), 9, "room for that one only");
    }
}
