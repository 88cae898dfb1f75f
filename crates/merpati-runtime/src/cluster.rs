//! This node's place among the nodes of its database. It joins with a lease on the
//! database's clock and renews it five times within it; at each renewal it trades slots
//! (`merpati_domain::slots`): it takes the slots it should own that no live node holds
//! (a dead node's, voiding what that node had leased), and gives back the slots another
//! node should own once nothing of theirs is under way here. What it holds is its
//! [`Ownership`], which the worker, ingest's handoff and the recorder read.
//!
//! A node that cannot renew stops starting attempts when its lease may have run out; one
//! whose lease did run out is gone for the others, and joins again as a new node. On a
//! database that has one node at a time (SQLite), a node started beside a live one waits
//! for its lease once, then gives up.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use merpati_domain::clock::SharedClock;
use merpati_domain::cluster::{leader_of, new_node_id, renew_every_ms, NodeInfo};
use merpati_domain::ids::EndpointId;
use merpati_domain::slots::{slot_of, wanted_by, Fence, Slot, SlotsTaken, SLOTS};
use merpati_domain::{SharedStore, StoreError};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error(
        "another merpati node serves this database: {} ({}), its lease renewed until {}; \
         a SQLite database has one node at a time",
        .0.name, .0.id, .0.lease_until
    )]
    Taken(NodeInfo),
    #[error("joining the nodes of the database: {0}")]
    Store(#[from] StoreError),
}

/// The longest a starting node waits for another's lease to run out.
const MAX_WAIT_MS: i64 = 5 * 60 * 1000;
/// Past the lease's end, for the clocks' and the round trips' sake.
const MARGIN_MS: i64 = 100;

/// What this node holds, as the worker, the handoff and the recorder see it.
pub struct Ownership {
    state: RwLock<Held>,
    /// Attempts started and not yet recorded, by slot: a slot is given back only when
    /// none of its are.
    unrecorded: [AtomicI64; SLOTS as usize],
    /// The last generation of [`Held`] the worker applied to its lanes.
    applied: AtomicU64,
}

struct Held {
    /// Every slot held: what records, parks and take-backs name.
    fence: Arc<Fence>,
    /// The slots held and not being given back: what claims name and attempts start for.
    active: Arc<Fence>,
    /// Until when its lease surely holds, on the machine's monotonic clock (which runs on
    /// while the process is paused, unlike a test's clock).
    sure_until: Option<Instant>,
    /// Whether other nodes are live (deliveries of this node's slots may be made due
    /// elsewhere, and a lost wake costs the fallback's second).
    shared: bool,
    /// Raised at each change of the slots held or active.
    generation: u64,
    /// Whether this node runs what runs once for the database ([`leader_of`]).
    leads: bool,
}

impl Ownership {
    pub fn new(node: &str) -> Ownership {
        let fence = Arc::new(Fence::new(node));
        Ownership {
            state: RwLock::new(Held {
                fence: fence.clone(),
                active: fence,
                sure_until: None,
                shared: false,
                generation: 0,
                leads: false,
            }),
            unrecorded: std::array::from_fn(|_| AtomicI64::new(0)),
            applied: AtomicU64::new(0),
        }
    }

    /// Holds every slot, for good: a worker on its own (benchmarks, tests).
    pub fn sole(node: &str) -> Ownership {
        let o = Ownership::new(node);
        let all: BTreeMap<Slot, i64> = (0..SLOTS).map(|s| (s, 0)).collect();
        o.set(node, all, &BTreeSet::new(), false);
        o.extend_lease(Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600));
        o.state.write().expect("ownership lock").leads = true;
        o
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Held> {
        self.state.read().expect("ownership lock")
    }

    pub fn node(&self) -> String {
        self.read().fence.node.clone()
    }

    /// Every slot held, for records and parks.
    pub fn fence(&self) -> Arc<Fence> {
        self.read().fence.clone()
    }

    /// The slots to claim for.
    pub fn active(&self) -> Arc<Fence> {
        self.read().active.clone()
    }

    /// Whether this node takes fresh deliveries to the endpoint (its slot is active here).
    pub fn takes(&self, endpoint: &EndpointId) -> bool {
        self.read().active.covers(endpoint)
    }

    /// Whether any of these slots is active here.
    pub fn takes_any(&self, slots: &[Slot]) -> bool {
        let held = self.read();
        slots.iter().any(|s| held.active.epochs.contains_key(s))
    }

    /// Whether an attempt may start now: the lease surely holds.
    pub fn sure(&self) -> bool {
        self.read()
            .sure_until
            .is_some_and(|until| Instant::now() < until)
    }

    /// Whether other nodes share the database.
    pub fn shared(&self) -> bool {
        self.read().shared
    }

    /// Whether this node runs retention, the alert engine's timers and the jobs a stopped
    /// node left: it leads and its lease surely holds.
    pub fn leads(&self) -> bool {
        self.read().leads && self.sure()
    }

    pub fn generation(&self) -> u64 {
        self.read().generation
    }

    /// The worker applied `generation` to its lanes: nothing of a slot inactive then
    /// starts after this.
    pub fn applied(&self, generation: u64) {
        self.applied.fetch_max(generation, Ordering::AcqRel);
    }

    pub fn attempt_started(&self, endpoint: &EndpointId) {
        self.unrecorded[usize::from(slot_of(endpoint))].fetch_add(1, Ordering::AcqRel);
    }

    /// The attempt's record was written, or will never be.
    pub fn attempt_recorded(&self, endpoint: &EndpointId) {
        self.unrecorded[usize::from(slot_of(endpoint))].fetch_sub(1, Ordering::AcqRel);
    }

    fn unrecorded(&self, slot: Slot) -> i64 {
        self.unrecorded[usize::from(slot)].load(Ordering::Acquire)
    }

    fn set(
        &self,
        node: &str,
        held: BTreeMap<Slot, i64>,
        giving_back: &BTreeSet<Slot>,
        shared: bool,
    ) -> bool {
        let mut state = self.state.write().expect("ownership lock");
        let active: BTreeMap<Slot, i64> = held
            .iter()
            .filter(|(s, _)| !giving_back.contains(s))
            .map(|(s, e)| (*s, *e))
            .collect();
        let changed =
            state.fence.node != node || state.fence.epochs != held || state.active.epochs != active;
        if changed {
            state.fence = Arc::new(Fence {
                node: node.to_owned(),
                epochs: held,
            });
            state.active = Arc::new(Fence {
                node: node.to_owned(),
                epochs: active,
            });
            state.generation += 1;
        }
        state.shared = shared;
        changed
    }

    fn extend_lease(&self, sure_until: Instant) {
        let mut state = self.state.write().expect("ownership lock");
        state.sure_until = state.sure_until.max(Some(sure_until));
    }

    /// Forgets every slot: the lease ran out.
    fn lose_all(&self, node: &str) -> bool {
        {
            let mut state = self.state.write().expect("ownership lock");
            state.leads = false;
            state.sure_until = None;
        }
        self.set(node, BTreeMap::new(), &BTreeSet::new(), true)
    }

    fn set_leads(&self, leads: bool) -> bool {
        let mut state = self.state.write().expect("ownership lock");
        std::mem::replace(&mut state.leads, leads) != leads
    }
}

pub struct Membership {
    pub store: SharedStore,
    /// This node's id, new for each start (and for each return after its lease ran out).
    pub node: String,
    pub name: String,
    pub lease: Duration,
    pub ownership: Arc<Ownership>,
    /// Called when the slots held change (it wakes the worker).
    pub on_change: Box<dyn Fn() + Send + Sync>,
    pub clock: SharedClock,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
}

impl Membership {
    fn lease_ms(&self) -> i64 {
        self.lease.as_millis() as i64
    }

    /// Joins, and takes the slots this node should own. A node that holds a database with
    /// one node at a time is waited for once, until its lease runs out (a node killed
    /// without leaving holds it until then; a live one renews it): an error names the
    /// node that holds it still.
    pub async fn join(&mut self) -> Result<NodeInfo, MembershipError> {
        let mut waited = false;
        loop {
            let sent_at = Instant::now();
            let holder = match self
                .store
                .join_cluster(&self.node, &self.name, self.lease_ms())
                .await?
            {
                Ok(joined) => {
                    self.ownership.extend_lease(sent_at + self.lease);
                    self.trade(&mut GivingBack::default()).await?;
                    return Ok(joined);
                }
                Err(holder) if waited => return Err(MembershipError::Taken(holder)),
                Err(holder) => holder,
            };
            let (_, now) = self.store.cluster_nodes().await?;
            let left = (holder.lease_until - now).clamp(0, MAX_WAIT_MS) + MARGIN_MS;
            tracing::info!(
                node = %holder.id,
                name = %holder.name,
                wait_ms = left,
                "another node holds the database; waiting for its lease to run out"
            );
            tokio::select! {
                () = self.shutdown.cancelled() => return Err(MembershipError::Taken(holder)),
                () = tokio::time::sleep(Duration::from_millis(left as u64)) => {}
            }
            waited = true;
        }
    }

    /// Takes the slots this node should own that are free, gives back those it should not
    /// once they are drained, and publishes what it holds.
    async fn trade(&self, giving_back: &mut GivingBack) -> Result<(), StoreError> {
        let (nodes, _) = self.store.cluster_nodes().await?;
        let live: Vec<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
        let leads = leader_of(&nodes).is_some_and(|n| n.id == self.node);
        if self.ownership.set_leads(leads) {
            tracing::info!(node = %self.node, leads, "leadership changed");
        }
        let wanted: BTreeSet<Slot> = wanted_by(&self.node, &live).into_iter().collect();
        let fence = self.ownership.fence();
        let held: BTreeSet<Slot> = fence.epochs.keys().copied().collect();
        let applied = self.ownership.applied.load(Ordering::Acquire);
        // Given back only once the worker stopped starting them and their last attempt
        // here is recorded.
        let give_back: Vec<Slot> = giving_back
            .0
            .iter()
            .filter(|(slot, since)| {
                applied >= **since
                    && !wanted.contains(slot)
                    && self.ownership.unrecorded(**slot) <= 0
            })
            .map(|(slot, _)| *slot)
            .collect();
        let take: Vec<Slot> = wanted.difference(&held).copied().collect();
        // Slots change hands only through a trade (another node takes this one's only once
        // its lease ran out, which the renewal finds; a node just joined holds none): with
        // nothing to trade, what it holds is what it last traded.
        let traded = if take.is_empty() && give_back.is_empty() {
            SlotsTaken {
                held: fence.epochs.clone(),
                released: 0,
            }
        } else {
            self.store
                .trade_slots(&self.node, take, give_back, self.clock.now_ms())
                .await?
        };
        if traded.released > 0 {
            tracing::info!(
                deliveries = traded.released,
                "deliveries of slots taken over or given back are due again"
            );
        }
        let now_held: BTreeSet<Slot> = traded.held.keys().copied().collect();
        // Those it is to take too, so that it hears of their offers from the moment it
        // takes them.
        self.store
            .listen_to_slots(&self.node, now_held.union(&wanted).copied().collect());
        let leaving: BTreeSet<Slot> = now_held.difference(&wanted).copied().collect();
        let changed = self
            .ownership
            .set(&self.node, traded.held, &leaving, live.len() > 1);
        let generation = self.ownership.generation();
        giving_back.0.retain(|slot, _| leaving.contains(slot));
        for slot in leaving {
            giving_back.0.entry(slot).or_insert(generation);
        }
        if changed {
            tracing::debug!(
                held = now_held.len(),
                giving_back = giving_back.0.len(),
                "slots traded"
            );
            (self.on_change)();
        }
        Ok(())
    }

    /// Ends what the nodes whose lease ran out still hold open in the database: the
    /// leader's duty, at each renewal.
    async fn cut_off_dead_nodes(&self) {
        match self.store.cut_off_dead_nodes().await {
            Ok(0) => {}
            Ok(sessions) => {
                self.metrics.dead_node_sessions_ended(sessions);
                tracing::warn!(
                    sessions,
                    "ended the database sessions of nodes whose lease ran out"
                );
            }
            Err(e) => tracing::warn!(error = %e, "cannot end the sessions of dead nodes"),
        }
    }

    /// Keeps the lease and trades slots until shutdown (the server leaves once its
    /// attempts are recorded). Returns an error when another node took a one-node database
    /// while this one's lease had run out.
    pub async fn run(mut self) -> Result<(), MembershipError> {
        let every = Duration::from_millis(renew_every_ms(self.lease_ms()) as u64);
        let mut giving_back = GivingBack::default();
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => break,
                () = tokio::time::sleep(every) => {}
            }
            // The lease runs from the moment the renewal was sent (the answer may have
            // taken any time to come back).
            let sent_at = Instant::now();
            match self.store.renew_lease(&self.node, self.lease_ms()).await {
                Ok(Some(_)) => {
                    self.ownership.extend_lease(sent_at + self.lease);
                    if let Err(e) = self.trade(&mut giving_back).await {
                        tracing::warn!(error = %e, "cannot trade slots");
                    }
                    if self.ownership.leads() {
                        self.cut_off_dead_nodes().await;
                    }
                }
                Ok(None) => {
                    // Gone for the others, who take its slots over: it comes back as a
                    // new node, so that nothing it did before counts.
                    let old = std::mem::replace(&mut self.node, new_node_id());
                    tracing::warn!(node = %old, new = %self.node, "this node's lease ran out; joining again");
                    if self.ownership.lose_all(&old) {
                        (self.on_change)();
                    }
                    giving_back = GivingBack::default();
                    self.join().await?;
                }
                // The database is away: the next renewal tries again; attempts stop
                // starting once the lease may have run out.
                Err(e) => tracing::warn!(error = %e, "cannot renew this node's lease"),
            }
        }
        Ok(())
    }
}

/// Slots being given back, with the generation of the ownership that first stopped them.
#[derive(Default)]
struct GivingBack(BTreeMap<Slot, u64>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_given_back_stop_taking_deliveries_but_stay_in_the_fence() {
        let o = Ownership::new("node_a");
        assert!(!o.sure());
        let ep = EndpointId::from("ep_1");
        let slot = slot_of(&ep);
        let held: BTreeMap<Slot, i64> = [(slot, 3), ((slot + 1) % SLOTS, 1)].into();
        assert!(o.set("node_a", held.clone(), &BTreeSet::new(), true));
        assert!(o.takes(&ep) && !o.sure(), "no lease yet");
        o.extend_lease(Instant::now() + Duration::from_secs(60));
        assert!(o.takes(&ep) && o.sure());
        assert!(
            !o.set("node_a", held.clone(), &BTreeSet::new(), true),
            "same slots"
        );
        let ran_out = Ownership::new("node_c");
        ran_out.extend_lease(Instant::now());
        assert!(!ran_out.sure(), "the lease may have run out");
        let gen = o.generation();
        assert!(o.set("node_a", held, &[slot].into(), true));
        assert!(o.generation() > gen);
        assert!(!o.takes(&ep) && !o.takes_any(&[slot]));
        assert!(
            o.fence().covers(&ep),
            "records of a slot being given back still count"
        );
        o.attempt_started(&ep);
        assert_eq!(o.unrecorded(slot), 1);
        o.attempt_recorded(&ep);
        assert_eq!(o.unrecorded(slot), 0);
        assert!(o.lose_all("node_a"));
        assert!(!o.fence().covers(&ep) && !o.sure());
        assert!(!o.leads());
        let sole = Ownership::sole("node_b");
        assert!(sole.takes(&ep) && sole.sure() && !sole.shared() && sole.leads());
    }
}
