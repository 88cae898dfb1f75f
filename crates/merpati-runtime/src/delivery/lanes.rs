//! The worker's lanes together: each endpoint's lane, every delivery the worker holds a
//! claim on, and what it remembers of endpoints whose lanes went idle (their pace, their
//! prepared keys). Pure, as the lanes are: the worker's loop does the I/O.

use std::sync::Arc;

use foldhash::{HashMap as FastMap, HashSet as FastSet};
use merpati_domain::clock::earliest;
use merpati_domain::delivery::DueDelivery;
use merpati_domain::endpoint::StoredBreaker;
use merpati_domain::ids::{AccountId, DeliveryId, EndpointId, EventId};
use merpati_domain::slots::{slot_of, Slot};
use tokio::sync::Semaphore;

use super::breaker::{Breaker, BreakerPolicy, Health};
use super::lane::{Gate, Lane, Limits, RATE_WINDOW_MS};
use super::prepared::{Prepared, PreparedTargets};
use super::{DeliveryConfig, Pauses};

/// What a finished attempt tells the worker.
pub(crate) struct Finished {
    pub(crate) delivery_id: DeliveryId,
    pub(crate) account_id: AccountId,
    pub(crate) endpoint_id: EndpointId,
    /// When its lane started it.
    pub(crate) started_at: i64,
    pub(crate) health: Health,
    /// How long the receiver took.
    pub(crate) took_ms: i64,
    /// When it is due again, if it is to be retried.
    pub(crate) retry_at: Option<i64>,
    /// The number of the attempt whose record was sent to the recorder, and its delivery's
    /// event (none when the attempt's task failed before sending one).
    pub(crate) recorded_attempt: Option<(i64, EventId)>,
}

/// How long a lane's pace is remembered once it has gone idle.
const PACE_MEMORY_MS: i64 = 60_000;
/// Remembered paces are not pruned before there are this many.
const MIN_PACES_PRUNE: usize = 1024;

/// The worker's state between steps: the lanes, and every delivery it holds a claim on.
pub(crate) struct Lanes {
    // The worker's maps are keyed by its own ids, hashed for every delivery: a fast hash.
    lanes: FastMap<EndpointId, Lane>,
    /// Lanes with something queued.
    active: FastSet<EndpointId>,
    /// Queued or under way: a claim whose lease ran out while its delivery waits or is
    /// attempted (the clock stepped) must not start a second attempt beside the first.
    pub(crate) claimed: FastSet<DeliveryId>,
    /// Attempted, and their records not yet written: a claim or read of one meanwhile (its
    /// lease or offer ran out first) names the same attempt and is dropped; one naming a
    /// later attempt was made after the record and is taken. One whose record is never told
    /// of is let go after a minute.
    pub(crate) recording: FastMap<DeliveryId, Recording>,
    /// One permit for every claim the worker could still hold; shared with ingest.
    pub(crate) room: Arc<Semaphore>,
    /// Deliveries to hand back to the store with a later due time, in one write.
    pub(crate) to_park: ToPark,
    /// Breakers that opened or closed, to keep for the endpoints' next owners.
    pub(crate) to_mark: Vec<(EndpointId, Option<StoredBreaker>)>,
    /// The pace (usual latency, ms) of endpoints whose lanes went idle, and when: a lane
    /// made again soon after starts from it rather than from not knowing.
    paces: FastMap<EndpointId, (f64, i64)>,
    /// `paces` is pruned of what is too old when it grows to this.
    prune_paces_at: usize,
    /// When any lane last heard an answer (see [`Lane::queue_cap`]).
    answered_at: i64,
    /// Each endpoint's URL and signing keys, worked out once.
    pub(crate) prepared: PreparedTargets,
    /// Slots this node took within the last second, and when: another node may have sent
    /// to their endpoints in that second, so their new lanes start with no burst.
    taken_slots: FastMap<Slot, i64>,
}

impl Lanes {
    pub(crate) fn new(room: Arc<Semaphore>) -> Lanes {
        Lanes {
            lanes: FastMap::default(),
            active: FastSet::default(),
            claimed: FastSet::default(),
            recording: FastMap::default(),
            room,
            to_park: ToPark::default(),
            to_mark: Vec::new(),
            paces: FastMap::default(),
            prune_paces_at: MIN_PACES_PRUNE,
            answered_at: i64::MIN,
            prepared: PreparedTargets::default(),
            taken_slots: FastMap::default(),
        }
    }

    /// A claimed delivery joins its endpoint's lane, or is parked when the lane cannot
    /// start it soon (its breaker is open, or it is already queued as deep as its pace).
    /// Returns false, and keeps nothing, for a delivery the worker holds already.
    pub(crate) fn take(
        &mut self,
        job: DueDelivery,
        config: &DeliveryConfig,
        now: i64,
        pauses: &Pauses,
    ) -> bool {
        if let Some(recording) = self.recording.get(&job.delivery_id) {
            if job.attempt <= recording.attempt && job.event_id == recording.event_id {
                // Its record is not written yet, so this claim saw it before the attempt.
                self.room.add_permits(1);
                return false;
            }
            // The record was written, and the worker heard of it after this claim; or the
            // id is another delivery's now (SQLite reuses the id of one deleted, with its
            // endpoint).
            self.recording.remove(&job.delivery_id);
        }
        if !self.claimed.insert(job.delivery_id) {
            // Claimed twice (a lease ran out under it): one claim is enough.
            self.room.add_permits(1);
            return false;
        }
        let limits = Limits {
            concurrency: job
                .endpoint
                .max_concurrency
                .map_or(config.endpoint_concurrency, |n| n as usize)
                .max(1),
            rate: job.endpoint.rate_limit,
        };
        let (paces, taken_slots) = (&mut self.paces, &self.taken_slots);
        let lane = self
            .lanes
            .entry(job.endpoint.id.clone())
            .or_insert_with(|| {
                let pace = paces
                    .remove(&job.endpoint.id)
                    .filter(|(_, at)| now - at < PACE_MEMORY_MS);
                let lane = Lane::new(limits, now)
                    .remembering(pace.map(|(avg_ms, _)| avg_ms))
                    .with_breaker(job.endpoint.breaker, now);
                // A breaker taken over open is this node's pause from now on.
                if let Breaker::Open { until, .. } = lane.breaker() {
                    pauses.set(&job.endpoint.account_id, &job.endpoint.id, Some(until));
                }
                let taken = taken_slots.get(&slot_of(&job.endpoint.id));
                if taken.is_some_and(|at| now - at < RATE_WINDOW_MS) {
                    lane.without_burst()
                } else {
                    lane
                }
            });
        lane.set_limits(limits);
        if lane.queue.len() >= lane.queue_cap(now, self.answered_at) {
            park(
                lane,
                &job.endpoint.id,
                job.delivery_id,
                now,
                &mut self.claimed,
                &self.room,
                &mut self.to_park,
            );
            return true;
        }
        self.active.insert(job.endpoint.id.clone());
        lane.queue.push_back(job);
        true
    }

    /// Lanes that slowed down (or opened their breaker) since they queued give back what
    /// they cannot start soon, so that they never sit on claims others could use.
    pub(crate) fn trim(&mut self, now: i64) {
        for id in &self.active {
            let lane = self.lanes.get_mut(id).expect("active lanes exist");
            let cap = lane.queue_cap(now, self.answered_at);
            while lane.queue.len() > cap {
                let job = lane.queue.pop_back().expect("longer than its cap");
                park(
                    lane,
                    id,
                    job.delivery_id,
                    now,
                    &mut self.claimed,
                    &self.room,
                    &mut self.to_park,
                );
            }
        }
        // Lanes this emptied leave `active` in `start_ready`, which always follows.
    }

    /// Starts what the lanes' limits allow, within `max_in_flight` in all (`under_way` are
    /// already), each with its endpoint's prepared keys. Returns when a lane held back by
    /// its rate limit or breaker can go next.
    pub(crate) fn start_ready(
        &mut self,
        now: i64,
        under_way: usize,
        max_in_flight: usize,
        mut start: impl FnMut(DueDelivery, Arc<Prepared>),
    ) -> Option<i64> {
        let mut wake: Option<i64> = None;
        let mut total = under_way;
        for id in &self.active {
            let lane = self.lanes.get_mut(id).expect("active lanes exist");
            while !lane.queue.is_empty() && total < max_in_flight {
                match lane.gate(now) {
                    Gate::Go => {
                        let job = lane.queue.pop_front().expect("not empty");
                        lane.start(now);
                        total += 1;
                        let prepared = self.prepared.for_target(&job.endpoint, now);
                        start(job, prepared);
                    }
                    Gate::At(at) => {
                        wake = earliest(wake, Some(at));
                        break;
                    }
                    Gate::Busy => break,
                }
            }
        }
        let lanes = &self.lanes;
        self.active.retain(|id| !lanes[id].queue.is_empty());
        wake
    }

    /// A lane's take-back found fewer parked deliveries than it asked for: none are left
    /// up to the latest it had parked when it asked.
    pub(crate) fn nothing_parked(&mut self, endpoint: &EndpointId, parked_until: i64, now: i64) {
        if let Some(lane) = self.lanes.get_mut(endpoint) {
            lane.nothing_parked(parked_until, now);
        }
    }

    /// The earliest time after `now` a lane paused by its breaker wants a parked delivery
    /// back to probe with.
    pub(crate) fn probe_wake(&self, now: i64) -> Option<i64> {
        self.lanes
            .values()
            .filter_map(Lane::probe_wanted_at)
            .filter(|at| *at > now)
            .min()
    }

    /// Lanes that caught up, and how many parked deliveries each wants back; not those
    /// with parks still to write.
    pub(crate) fn take_back(&mut self, now: i64) -> Vec<TakeBack> {
        let answered_at = self.answered_at;
        let parking = &self.to_park.endpoints;
        self.lanes
            .iter_mut()
            .filter(|(id, _)| !parking.contains(*id))
            .filter_map(|(id, lane)| {
                lane.take_back(now, answered_at).map(|limit| TakeBack {
                    endpoint_id: id.clone(),
                    limit,
                    parked_until: lane.parked_until(),
                })
            })
            .collect()
    }

    /// The deliveries to park, for one write: their lanes may ask for parked ones back
    /// after it.
    pub(crate) fn take_parked(&mut self) -> Vec<(DeliveryId, i64)> {
        std::mem::take(&mut self.to_park).deliveries
    }

    /// A deleted endpoint's lane goes, with what it queued (those deliveries went with the
    /// endpoint); attempts under way end as ever, and find no lane to report to.
    /// This node took these slots (at start, or from another node).
    pub(crate) fn slots_taken(&mut self, slots: impl IntoIterator<Item = Slot>, now: i64) {
        self.taken_slots.retain(|_, at| now - *at < RATE_WINDOW_MS);
        self.taken_slots.extend(slots.into_iter().map(|s| (s, now)));
    }

    /// The endpoints the lanes are for.
    pub(crate) fn endpoints(&self) -> impl Iterator<Item = &EndpointId> {
        self.lanes.keys()
    }

    /// The recorder wrote (or gave up on) the records of these deliveries.
    pub(crate) fn recorded(&mut self, deliveries: &[DeliveryId], now: i64) {
        for d in deliveries {
            self.recording.remove(d);
        }
        self.recording
            .retain(|_, r| now - r.ended_at < RECORDING_MEMORY_MS);
    }

    pub(crate) fn forget(&mut self, endpoint_id: &EndpointId, pauses: &Pauses) {
        pauses.forget(endpoint_id);
        self.active.remove(endpoint_id);
        self.paces.remove(endpoint_id);
        self.prepared.forget(endpoint_id);
        let Some(lane) = self.lanes.remove(endpoint_id) else {
            return;
        };
        for job in lane.queue {
            unclaim(&mut self.claimed, &self.room, job.delivery_id);
        }
    }

    pub(crate) fn finish(
        &mut self,
        f: Finished,
        now: i64,
        policy: &BreakerPolicy,
        pauses: &Pauses,
    ) {
        unclaim(&mut self.claimed, &self.room, f.delivery_id);
        if let Some((attempt, event_id)) = f.recorded_attempt {
            let recording = Recording {
                attempt,
                event_id,
                ended_at: now,
            };
            self.recording.insert(f.delivery_id, recording);
        }
        if f.health != Health::Unknown {
            self.answered_at = self.answered_at.max(now);
        }
        let Some(lane) = self.lanes.get_mut(&f.endpoint_id) else {
            return;
        };
        let before = lane.breaker();
        lane.finish(f.started_at, now, f.took_ms, f.health, policy);
        match lane.breaker() {
            Breaker::Open { until, cooldown_ms } if lane.breaker() != before => {
                tracing::warn!(endpoint = %f.endpoint_id, until, "endpoint paused by its circuit breaker");
                pauses.set(&f.account_id, &f.endpoint_id, Some(until));
                let kept = StoredBreaker { until, cooldown_ms };
                self.to_mark.push((f.endpoint_id.clone(), Some(kept)));
            }
            Breaker::Closed { .. } if !matches!(before, Breaker::Closed { .. }) => {
                tracing::info!(endpoint = %f.endpoint_id, "endpoint answers again; circuit breaker closed");
                pauses.set(&f.account_id, &f.endpoint_id, None);
                self.to_mark.push((f.endpoint_id.clone(), None));
            }
            _ => {}
        }
        if lane.is_idle(now) {
            if let Some(avg_ms) = lane.pace() {
                self.remember_pace(f.endpoint_id.clone(), avg_ms, now);
            }
            self.lanes.remove(&f.endpoint_id);
        }
    }

    /// Kept for [`PACE_MEMORY_MS`]; pruned whenever the memory has doubled since the last
    /// prune, so that pruning costs little a lane however many endpoints there are.
    fn remember_pace(&mut self, endpoint_id: EndpointId, avg_ms: f64, now: i64) {
        self.paces.insert(endpoint_id, (avg_ms, now));
        if self.paces.len() >= self.prune_paces_at {
            self.paces.retain(|_, (_, at)| now - *at < PACE_MEMORY_MS);
            self.prune_paces_at = (self.paces.len() * 2).max(MIN_PACES_PRUNE);
        }
    }
}

/// A lane's request for `limit` of its parked deliveries back, made when the latest it had
/// parked was due at `parked_until`.
pub(crate) struct TakeBack {
    pub(crate) endpoint_id: EndpointId,
    pub(crate) limit: usize,
    pub(crate) parked_until: i64,
}

/// What the store gave back to the lanes that asked, asked at `now`.
pub(crate) struct TakenBack {
    pub(crate) now: i64,
    pub(crate) lanes: Vec<(TakeBack, usize)>,
}

/// An attempt whose record is on its way to the store.
#[derive(Debug, Clone)]
pub(crate) struct Recording {
    attempt: i64,
    event_id: EventId,
    ended_at: i64,
}

/// How long an attempt whose record the recorder never told of is remembered.
const RECORDING_MEMORY_MS: i64 = 60_000;

/// Deliveries to park in the next write, and the endpoints whose lanes parked them: none
/// of those asks for parked deliveries back until they are written, or the take-back,
/// written first, would find fewer than asked and the lane would forget the ones parked
/// after it.
#[derive(Default)]
pub(crate) struct ToPark {
    pub(crate) deliveries: Vec<(DeliveryId, i64)>,
    endpoints: FastSet<EndpointId>,
}

/// Hands a claimed delivery back to the store for when its lane expects to have room.
fn park(
    lane: &mut Lane,
    endpoint: &EndpointId,
    delivery_id: DeliveryId,
    now: i64,
    claimed: &mut FastSet<DeliveryId>,
    room: &Semaphore,
    to_park: &mut ToPark,
) {
    let at = lane.park_at(now);
    unclaim(claimed, room, delivery_id);
    to_park.deliveries.push((delivery_id, at));
    if !to_park.endpoints.contains(endpoint) {
        to_park.endpoints.insert(endpoint.clone());
    }
}

/// The delivery leaves the worker's hands, and its room with it.
fn unclaim(claimed: &mut FastSet<DeliveryId>, room: &Semaphore, delivery_id: DeliveryId) {
    if claimed.remove(&delivery_id) {
        room.add_permits(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::handoff::tests::{config, due, sole};
    use crate::delivery::handoff::{handoff, take_room, Inbox};

    fn lanes(inbox: &Inbox) -> Lanes {
        Lanes::new(inbox.room.clone())
    }

    fn pauses() -> Pauses {
        Pauses::new(crate::bus::Bus::default())
    }

    const POLICY: BreakerPolicy = BreakerPolicy {
        failures: 5,
        cooldown_ms: 1000,
        max_cooldown_ms: 1000,
    };

    /// An attempt started at `started_at` that took 5 ms.
    fn finished(delivery_id: i64, endpoint_id: &str, started_at: i64, health: Health) -> Finished {
        Finished {
            delivery_id: DeliveryId(delivery_id),
            account_id: "a".into(),
            endpoint_id: endpoint_id.into(),
            started_at,
            health,
            took_ms: 5,
            retry_at: None,
            recorded_attempt: Some((1, format!("evt_{delivery_id}").into())),
        }
    }

    /// Delivery `id` due for its attempt number `attempt`.
    fn retry(id: i64, attempt: i64) -> DueDelivery {
        DueDelivery { attempt, ..due(id) }
    }

    /// Takes `id` into its lane and runs it to an answer after 5 ms.
    fn answered(lanes: &mut Lanes, id: i64, at: i64) {
        assert_eq!(take_room(&lanes.room, 1), 1);
        assert!(lanes.take(due(id), &config(4), at, &pauses()));
        lanes.start_ready(at, 0, 4, |_, _| {});
        let done = finished(id, "ep", at, Health::Up);
        lanes.finish(done, at + 5, &POLICY, &pauses());
    }

    #[test]
    fn a_delivery_attempted_and_not_yet_recorded_is_not_taken_again() {
        let (_handoff, inbox, _) = handoff(&config(4), sole());
        let mut lanes = lanes(&inbox);
        answered(&mut lanes, 1, 0);
        let room = lanes.room.available_permits();
        // Its lease (or offer) ran out before the record was written: claimed again, as
        // the same attempt.
        assert_eq!(take_room(&lanes.room, 1), 1);
        assert!(!lanes.take(due(1), &config(4), 10, &pauses()), "not new");
        assert!(!lanes.claimed.contains(&DeliveryId(1)), "dropped");
        assert_eq!(lanes.room.available_permits(), room, "its room given back");
        // Once recorded, a claim of it (a retry) is taken.
        lanes.recorded(&[DeliveryId(1)], 20);
        assert_eq!(take_room(&lanes.room, 1), 1);
        assert!(lanes.take(retry(1, 2), &config(4), 30, &pauses()));
        assert!(lanes.claimed.contains(&DeliveryId(1)));
        // Claimed again while held: one claim is enough.
        assert_eq!(take_room(&lanes.room, 1), 1);
        assert!(!lanes.take(retry(1, 2), &config(4), 35, &pauses()), "held");
        // One whose record is never told of is let go after a while.
        answered(&mut lanes, 2, 40);
        lanes.recorded(&[], 45 + RECORDING_MEMORY_MS);
        assert!(lanes.recording.is_empty());
    }

    /// SQLite gives the id of a delivery deleted (with its endpoint) to the next one: a
    /// delivery of another event under that id is new, whatever the worker remembers.
    #[test]
    fn an_id_a_deleted_delivery_had_is_another_delivery_s_and_is_taken() {
        let (_handoff, inbox, _) = handoff(&config(4), sole());
        let mut lanes = lanes(&inbox);
        answered(&mut lanes, 1, 0);
        assert_eq!(take_room(&lanes.room, 1), 1);
        let reused = DueDelivery {
            event_id: "evt_next".into(),
            ..due(1)
        };
        assert!(lanes.take(reused, &config(4), 10, &pauses()), "new");
        assert!(lanes.claimed.contains(&DeliveryId(1)));
        assert!(lanes.recording.is_empty(), "the old one's memory goes");
    }

    #[test]
    fn a_retry_claimed_before_the_worker_hears_its_record_was_written_is_taken() {
        let (_handoff, inbox, _) = handoff(&config(4), sole());
        let mut lanes = lanes(&inbox);
        answered(&mut lanes, 1, 0);
        // The record was written and the retry claimed before the recorder's word came:
        // the claim names the next attempt, so it is the retry, not the attempt again.
        assert_eq!(take_room(&lanes.room, 1), 1);
        assert!(lanes.take(retry(1, 2), &config(4), 10, &pauses()));
        assert!(lanes.claimed.contains(&DeliveryId(1)));
        assert!(lanes.recording.is_empty());
    }

    #[test]
    fn a_lane_made_again_soon_after_it_went_idle_knows_its_endpoint_s_pace() {
        let (_handoff, inbox, _) = handoff(&config(4), sole());
        let mut lanes = lanes(&inbox);
        answered(&mut lanes, 1, 0);
        assert!(lanes.lanes.is_empty(), "idle, so gone");
        // Back within the minute: known to be fast, so nothing it is handed is parked.
        assert_eq!(take_room(&lanes.room, 1), 1);
        lanes.take(due(2), &config(4), 30_000, &pauses());
        assert_eq!(
            lanes.lanes[&EndpointId::from("ep")].queue_cap(30_000, i64::MIN),
            usize::MAX
        );
        lanes.start_ready(30_000, 0, 4, |_, _| {});
        let done = finished(2, "ep", 30_000, Health::Up);
        lanes.finish(done, 30_005, &POLICY, &pauses());
        // A minute after it was last idle, its pace is not known any more.
        assert_eq!(take_room(&lanes.room, 1), 1);
        lanes.take(due(3), &config(4), 30_005 + PACE_MEMORY_MS, &pauses());
        let cap = lanes.lanes[&EndpointId::from("ep")].queue_cap(30_005 + PACE_MEMORY_MS, i64::MIN);
        assert!(cap < usize::MAX, "{cap}");
        // Deleting the endpoint forgets its pace too.
        lanes.lanes.clear();
        lanes.remember_pace("ep".into(), 5.0, 0);
        lanes.forget(&"ep".into(), &pauses());
        assert!(lanes.paces.is_empty());
    }

    #[test]
    fn remembered_paces_are_pruned_as_they_grow() {
        let (_handoff, inbox, _) = handoff(&config(4), sole());
        let mut lanes = lanes(&inbox);
        for i in 0..MIN_PACES_PRUNE - 1 {
            lanes.remember_pace(format!("old{i}").into(), 5.0, 0);
        }
        assert_eq!(lanes.paces.len(), MIN_PACES_PRUNE - 1);
        lanes.remember_pace("new".into(), 5.0, PACE_MEMORY_MS);
        assert_eq!(lanes.paces.len(), 1, "only the one still young is kept");
        assert_eq!(lanes.prune_paces_at, MIN_PACES_PRUNE);
    }

    #[test]
    fn a_deleted_endpoint_s_lane_is_forgotten_and_its_room_comes_back() {
        let (handoff, mut inbox, _) = handoff(&config(4), sole());
        let pauses = pauses();
        let policy = BreakerPolicy {
            failures: 1,
            cooldown_ms: 60_000,
            max_cooldown_ms: 60_000,
        };
        let mut lanes = lanes(&inbox);
        let budget = inbox.room.available_permits();
        let failed =
            |delivery_id, endpoint_id: &str| finished(delivery_id, endpoint_id, 0, Health::Down);
        // "ep" fails: its breaker opens, and what comes for it meanwhile is parked.
        assert_eq!(take_room(&lanes.room, 1), 1);
        lanes.take(due(1), &config(4), 0, &pauses);
        let mut started = Vec::new();
        lanes.start_ready(0, 0, 4, |job, _| started.push(job.delivery_id.0));
        assert_eq!(started, [1]);
        lanes.finish(failed(1, "ep"), 10, &policy, &pauses);
        assert!(pauses.until(&"ep".into()).is_some());
        assert_eq!(take_room(&lanes.room, 1), 1);
        lanes.take(due(2), &config(4), 20, &pauses);
        assert_eq!(lanes.to_park.deliveries.len(), 1);
        // "other" has deliveries queued behind one under way.
        assert_eq!(take_room(&lanes.room, 3), 3);
        for id in 3..=5 {
            let mut job = due(id);
            Arc::make_mut(&mut job.endpoint).id = "other".into();
            lanes.take(job, &config(4), 20, &pauses);
        }
        lanes.start_ready(20, 0, 1, |_, _| {});
        assert_eq!(lanes.lanes[&EndpointId::from("other")].queue.len(), 2);

        // Deleted, both are forgotten: the open breaker waits for no outcome, and what
        // was queued gives its room back.
        for endpoint in ["ep", "other"] {
            handoff.endpoint_deleted(endpoint.into());
            let deleted = inbox.deleted.try_recv().expect("told");
            lanes.forget(&deleted, &pauses);
        }
        assert!(lanes.lanes.is_empty() && lanes.active.is_empty());
        assert_eq!(pauses.until(&"ep".into()), None);
        assert_eq!(lanes.room.available_permits(), budget - 1);
        // The attempt under way ends as ever, with no lane to report to.
        lanes.finish(failed(3, "other"), 30, &policy, &pauses);
        assert!(lanes.lanes.is_empty() && lanes.claimed.is_empty());
        assert_eq!(lanes.room.available_permits(), budget);
        assert_eq!(pauses.until(&"other".into()), None);
    }

    /// A lane that parks and catches up before its parks are written asks for nothing
    /// back until they are: the take-back, written before the parks, would find fewer than
    /// asked, and the lane would take the ones parked after it for none.
    #[test]
    fn a_lane_asks_for_parked_deliveries_back_only_once_its_parks_are_written() {
        let (_handoff, inbox, _) = handoff(&config(4), sole());
        let mut lanes = lanes(&inbox);
        let one_at_a_time = |id| {
            let mut job = due(id);
            Arc::make_mut(&mut job.endpoint).max_concurrency = Some(1);
            job
        };
        assert_eq!(take_room(&lanes.room, 3), 3);
        for id in 1..=3 {
            lanes.take(one_at_a_time(id), &config(4), 0, &pauses());
        }
        lanes.start_ready(0, 0, 4, |_, _| {});
        assert_eq!(
            lanes.to_park.deliveries.len(),
            1,
            "one under way, one queued, one parked"
        );
        for (id, at) in [(1, 10), (2, 20)] {
            lanes.finish(finished(id, "ep", at, Health::Up), at, &POLICY, &pauses());
            lanes.start_ready(at, 0, 4, |_, _| {});
        }
        // Caught up, with its park not yet written.
        assert!(lanes.take_back(30).is_empty());
        assert_eq!(lanes.take_parked().len(), 1);
        let asked = lanes.take_back(30);
        assert_eq!(asked.len(), 1, "once written");
        assert_eq!(asked[0].endpoint_id, EndpointId::from("ep"));
    }
}
