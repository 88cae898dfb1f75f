//! How the nodes of one database share its endpoints. Endpoints are hashed into a fixed
//! number of slots; each slot has one owner at a time, and only the owner claims, attempts
//! and records its endpoints' deliveries, so that an endpoint's limits, breaker and device
//! queues are exact in the owner's memory. Ownership is a lease with an epoch: a node that
//! takes a slot raises its epoch, and every write of an owner names the epochs it holds
//! (its [`Fence`]), so that a node that lost a slot changes nothing of it.
//!
//! Which node should own a slot is a rendezvous hash over the live nodes: each slot goes to
//! the node that weighs most for it, so a node joining takes about 1/N of the slots, and
//! one leaving gives only its own away.

use std::collections::BTreeMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::ids::{DeliveryId, EndpointId, EventId};

/// How many slots the endpoints are hashed into: far more than nodes, so that each node's
/// share is even, and few enough that a node's whole fence is a short list.
pub const SLOTS: u16 = 64;

/// A slot's number, `0..SLOTS`.
pub type Slot = u16;

/// The slot an endpoint is in: the first byte of the SHA-256 of its id, modulo [`SLOTS`]
/// (which divides 256, so every slot is as likely). PostgreSQL computes the same in SQL
/// (`get_byte(sha256(…), 0) % 64`) to fill the column of endpoints made before slots.
pub fn slot_of(endpoint: &EndpointId) -> Slot {
    let digest = Sha256::digest(endpoint.as_str().as_bytes());
    u16::from(digest[0]) % SLOTS
}

/// How much `node` weighs for `slot`: the highest weight takes it.
fn weight(node: &str, slot: Slot) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(node.as_bytes());
    h.update([0]);
    h.update(slot.to_be_bytes());
    h.finalize().into()
}

/// The node each slot should have, among `nodes` (their ids); none when there are none.
pub fn assign<'a>(nodes: &[&'a str]) -> Vec<Option<&'a str>> {
    (0..SLOTS)
        .map(|slot| {
            nodes
                .iter()
                .copied()
                .max_by(|a, b| weight(a, slot).cmp(&weight(b, slot)).then(a.cmp(b)))
        })
        .collect()
}

/// The slots `node` should own among `nodes`.
pub fn wanted_by(node: &str, nodes: &[&str]) -> Vec<Slot> {
    assign(nodes)
        .into_iter()
        .zip(0..SLOTS)
        .filter(|(owner, _)| *owner == Some(node))
        .map(|(_, slot)| slot)
        .collect()
}

/// A slot's owner, as the database has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotLease {
    pub slot: Slot,
    /// None once released.
    pub node: Option<String>,
    /// Raised each time the slot changes hands.
    pub epoch: i64,
    /// When the node took it (the database's time, ms).
    pub since: i64,
}

/// The slots a node holds and their epochs, as it last took them: what its writes name.
/// A write of a slot counts only while the database still gives the slot to this node at
/// this epoch, and the node's lease is live.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fence {
    pub node: String,
    pub epochs: BTreeMap<Slot, i64>,
}

impl Fence {
    pub fn new(node: impl Into<String>) -> Fence {
        Fence {
            node: node.into(),
            epochs: BTreeMap::new(),
        }
    }

    /// Whether a write for the endpoint is this node's to make, as far as it knows.
    pub fn covers(&self, endpoint: &EndpointId) -> bool {
        self.epochs.contains_key(&slot_of(endpoint))
    }

    /// The slots and their epochs, as two columns.
    pub fn columns(&self) -> (Vec<i32>, Vec<i64>) {
        self.epochs.iter().map(|(s, e)| (i32::from(*s), *e)).unzip()
    }

    /// Which of these (slot, epoch) pairs, as the database has them for this node, are
    /// still the ones it holds.
    pub fn still_held(
        &self,
        held: impl IntoIterator<Item = (Slot, i64)>,
    ) -> [bool; SLOTS as usize] {
        let mut valid = [false; SLOTS as usize];
        for (slot, epoch) in held {
            if self.epochs.get(&slot) == Some(&epoch) {
                valid[usize::from(slot)] = true;
            }
        }
        valid
    }
}

/// What taking and giving back slots did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotsTaken {
    /// Every slot the node holds now, with its epoch.
    pub held: BTreeMap<Slot, i64>,
    /// Deliveries of the slots taken whose lease (another node's, or a stopped run's) was
    /// voided, or which a lane had parked: due now.
    pub released: usize,
}

/// How long a delivery made due on one node stays leased to the owner of its slot on
/// another, which is told its id ([`Offer`]) and reads it rather than claims it: long enough
/// for the owner to read it, short enough that an offer lost on the way costs no more than
/// a second. Past it, the delivery is due, and the owner, which looks for due deliveries at
/// least once a second, claims it as any other.
pub const OFFER_MS: i64 = 500;

/// Deliveries of a slot stored on one node, offered to the slot's owner ([`OFFER_MS`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Offer {
    pub slot: Slot,
    pub deliveries: Vec<Offered>,
}

/// A delivery offered to its slot's owner: its id, and what its first attempt needs but
/// the endpoint's target, when the write that stored it could send that along. The owner
/// then reads nothing of the delivery: the offer is sent only once the write is known
/// committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offered {
    pub id: DeliveryId,
    pub carried: Option<Carried>,
}

impl Offered {
    /// An offer naming the delivery only: its owner reads it.
    pub fn named(id: DeliveryId) -> Offered {
        Offered { id, carried: None }
    }
}

/// What an offered delivery's first attempt needs, sent with the offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Carried {
    pub event_id: EventId,
    /// The exact body.
    pub payload: Arc<str>,
    pub endpoint_id: EndpointId,
    /// When the offer runs out.
    pub until: i64,
    /// How far the store's changes to endpoints had gone for the write that made the offer
    /// ([`crate::delivery::DeliveryStore::offered_targets`]): a target read that far or
    /// further is as new as the one that write saw.
    pub endpoints_seen: i64,
}

#[async_trait::async_trait]
pub trait SlotStore: Send + Sync {
    /// As `node`, whose lease must be live: takes each of `wanted` that no live node holds
    /// (free, or held by a node whose lease ran out), raising its epoch; the deliveries of
    /// a slot taken that were leased or parked are due now. Gives back `give_back`, which
    /// it held: what it still had leased of them is due now. Answers every slot it holds.
    async fn trade_slots(
        &self,
        node: &str,
        wanted: Vec<Slot>,
        give_back: Vec<Slot>,
        now: i64,
    ) -> crate::StoreResult<SlotsTaken>;

    /// Every slot that has been held, and by whom.
    async fn slot_leases(&self) -> crate::StoreResult<Vec<SlotLease>>;

    /// Tells the owners of these slots of the deliveries offered to them. A no-op where one
    /// node is all there is.
    async fn offer_to_owners(&self, offers: Vec<Offer>) -> crate::StoreResult<()>;

    /// Calls `take` with the offers each time another node makes them, until the store
    /// closes; an offer naming no delivery (as after a lost connection, for every slot)
    /// means: look for what is due. Nothing where one node is all there is.
    fn listen_for_offers(
        &self,
        take: Box<dyn Fn(Vec<Offer>) + Send + Sync>,
    ) -> crate::StoreResult<()>;

    /// The slots whose offers this node, now called `node`, hears of from now on: those it
    /// holds, and those it is to take, so that it hears of a slot's offers from the moment
    /// it takes it. Nodes that hold a slot or are to take it hear of its offers; the others
    /// do not. What listens is known to the database as `node`'s, so that it can be cut
    /// off once `node`'s lease runs out ([`crate::cluster::ClusterStore::cut_off_dead_nodes`]).
    /// Nothing where one node is all there is.
    fn listen_to_slots(&self, node: &str, slots: Vec<Slot>);
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn an_endpoint_stays_in_its_slot_and_slots_are_even() {
        let ep = EndpointId::from("ep_01hx");
        assert_eq!(slot_of(&ep), slot_of(&EndpointId::from("ep_01hx")));
        // The first byte of SHA-256("ep_01hx"), as PostgreSQL's expression computes it.
        let first = Sha256::digest(b"ep_01hx")[0];
        assert_eq!(slot_of(&ep), u16::from(first) % 64);
        let mut count = [0u32; SLOTS as usize];
        for i in 0..64_000 {
            count[usize::from(slot_of(&EndpointId::from(format!("ep_{i}"))))] += 1;
        }
        assert!(count.iter().all(|&n| (800..1200).contains(&n)), "{count:?}");
    }

    #[test]
    fn every_slot_has_one_node_and_shares_are_near_even() {
        assert!(assign(&[]).iter().all(Option::is_none));
        let nodes = ["node_a", "node_b", "node_c"];
        let owners = assign(&nodes);
        assert_eq!(owners.len(), usize::from(SLOTS));
        let mut total = 0;
        for n in nodes {
            let mine = wanted_by(n, &nodes);
            assert!((10..=34).contains(&mine.len()), "{n}: {}", mine.len());
            total += mine.len();
        }
        assert_eq!(total, usize::from(SLOTS));
        // The order the nodes are listed in does not matter.
        assert_eq!(assign(&["node_c", "node_a", "node_b"]), owners);
    }

    #[test]
    fn a_node_leaving_gives_away_only_its_own_and_one_joining_takes_only_from_others() {
        let three = ["node_a", "node_b", "node_c"];
        let two = ["node_a", "node_b"];
        let before = assign(&three);
        let after = assign(&two);
        for (b, a) in before.iter().zip(&after) {
            if *b != Some("node_c") {
                assert_eq!(b, a, "a slot not node_c's stays where it was");
            }
        }
        let c: HashSet<_> = wanted_by("node_c", &three).into_iter().collect();
        for (slot, (b, a)) in (0..SLOTS).zip(after.iter().zip(&before)) {
            // Going from two to three nodes, only node_c's slots move.
            assert_eq!(b != a, c.contains(&slot));
        }
    }

    #[test]
    fn a_fence_counts_only_the_epochs_it_holds() {
        let mut fence = Fence::new("node_a");
        fence.epochs.insert(3, 7);
        fence.epochs.insert(5, 1);
        let valid = fence.still_held([(3, 7), (5, 2), (9, 1)]);
        assert!(valid[3]);
        assert!(!valid[5], "another epoch: the slot changed hands since");
        assert!(!valid[9], "never held");
        assert_eq!(fence.columns(), (vec![3, 5], vec![7, 1]));
        let ep = (0..)
            .map(|i| EndpointId::from(format!("ep_{i}")))
            .find(|e| slot_of(e) == 3)
            .unwrap();
        assert!(fence.covers(&ep));
    }
}
