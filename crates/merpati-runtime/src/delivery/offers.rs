//! Deliveries other nodes offered this one: they stored them leased to it for a short
//! offer (`merpati_domain::slots::OFFER_MS`) and sent their ids. The worker reads them, one
//! read at a time, in room it takes for them, rather than claims them: a read writes
//! nothing and waits for no write. What it has no room for it leaves: their offer runs
//! out and it claims them as any due delivery.

use std::future::Future;
use std::pin::Pin;

use merpati_domain::delivery::DueDelivery;
use merpati_domain::ids::DeliveryId;
use merpati_domain::StoreResult;
use tokio::sync::Semaphore;

use super::handoff::take_room;

type Read<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What a read of offered deliveries found, and how much room it was given.
pub(super) struct OffersRead {
    pub(super) now: i64,
    pub(super) room: usize,
    pub(super) read: StoreResult<Vec<DueDelivery>>,
}

/// The offers heard and not read yet, and the read under way.
#[derive(Default)]
pub(super) struct Offers {
    heard: Vec<DeliveryId>,
    reading: Option<Read<OffersRead>>,
}

/// What became of the offers heard when a read started.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Left {
    /// Every one is being read (or there were none).
    Nothing,
    /// Some found no room: they are due, to claim, once their offer runs out.
    DueAfterOffer,
}

impl Offers {
    pub(super) fn heard(&mut self, deliveries: Vec<DeliveryId>) {
        self.heard.extend(deliveries);
    }

    pub(super) fn reading(&self) -> bool {
        self.reading.is_some()
    }

    /// Starts a read (`read`) of what was heard, in as much room as is free, unless one
    /// is under way; what finds no room is let go.
    pub(super) fn read(
        &mut self,
        room: &Semaphore,
        now: i64,
        read: impl FnOnce(Vec<DeliveryId>) -> Read<StoreResult<Vec<DueDelivery>>>,
    ) -> Left {
        if self.reading.is_some() || self.heard.is_empty() {
            return Left::Nothing;
        }
        let taken = take_room(room, self.heard.len());
        let left = if taken < self.heard.len() {
            Left::DueAfterOffer
        } else {
            Left::Nothing
        };
        let mut ids = std::mem::take(&mut self.heard);
        ids.truncate(taken);
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
    fn offers_are_read_one_read_at_a_time_and_what_finds_no_room_is_left_to_claims() {
        let room = Semaphore::new(2);
        let mut offers = Offers::default();
        assert_eq!(offers.read(&room, 0, never), Left::Nothing, "none heard");
        assert!(!offers.reading());
        offers.heard(vec![DeliveryId(1), DeliveryId(2), DeliveryId(3)]);
        let mut asked = Vec::new();
        let left = offers.read(&room, 0, |ids| {
            asked = ids;
            never(Vec::new())
        });
        assert_eq!(left, Left::DueAfterOffer);
        assert_eq!(
            asked,
            [DeliveryId(1), DeliveryId(2)],
            "in the room there was"
        );
        assert!(offers.reading());
        assert_eq!(room.available_permits(), 0);
        offers.heard(vec![DeliveryId(4)]);
        assert_eq!(
            offers.read(&room, 0, never),
            Left::Nothing,
            "one read at a time"
        );
        assert!(offers.heard == [DeliveryId(4)], "kept for the next read");
    }
}
