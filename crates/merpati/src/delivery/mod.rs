//! Delivery: the worker that takes due deliveries from the store, sends each as one attempt
//! and records the outcome and the next step.
//!
//! The worker never polls: it sleeps until the earliest due delivery or until ingest wakes
//! it. A claimed delivery is leased (its due time pushed past the attempt's timeout), so
//! a crash mid-attempt leaves it due again rather than lost. No database connection is held
//! while a request is under way: claim, send, record are three separate steps.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use foldhash::{HashMap as FastMap, HashSet as FastSet};
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::config::DeliveryConfig;
use crate::endpoints::BodyFormat;
use crate::store::{SharedStore, StoreResult};

pub mod guard;
pub mod lane;
pub mod retry;
pub mod send;

use lane::{Breaker, BreakerPolicy, Gate, Health, Lane, Limits};
use retry::{next_step, NextStep};

/// A delivery ready for its next attempt, with everything the attempt needs.
#[derive(Debug, Clone)]
pub struct DueDelivery {
    pub delivery_id: i64,
    /// The number of this attempt (1 for the first).
    pub attempt: i64,
    pub event_id: String,
    /// The exact body, shared by every delivery of the event handed over together.
    pub payload: Arc<str>,
    pub endpoint: Arc<Target>,
}

#[derive(Debug, Clone)]
pub struct Target {
    pub id: String,
    pub url: String,
    pub format: BodyFormat,
    pub secret_in_body: bool,
    pub headers: BTreeMap<String, String>,
    /// Live secrets, newest first.
    pub secrets: Vec<String>,
    pub max_concurrency: Option<u32>,
    pub rate_limit: Option<u32>,
    /// Whether it takes each device's events in order (`ordering: "device"`).
    pub ordered: bool,
    /// The URL parsed and the signing keys decoded, once for every attempt to this target.
    pub prepared: send::Prepared,
}

#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub delivery_id: i64,
    /// The endpoint as the attempt was handed out: only if it was ordered then can the
    /// delivery be in a device queue that its outcome moves on.
    pub endpoint: Arc<Target>,
    pub attempt: i64,
    pub started_at: i64,
    pub duration_ms: i64,
    pub status_code: Option<u16>,
    pub error_kind: Option<String>,
    pub error: Option<String>,
    pub response_body: Option<String>,
    pub next: NextStep,
}

#[async_trait::async_trait]
pub trait DeliveryStore: Send + Sync {
    /// Takes up to `limit` deliveries due at `now` and leases them until `lease_until`.
    async fn claim_due(
        &self,
        now: i64,
        limit: usize,
        lease_until: i64,
    ) -> StoreResult<Vec<DueDelivery>>;
    /// When the earliest pending delivery is due, if any.
    async fn next_due_at(&self) -> StoreResult<Option<i64>>;
    /// Records the attempt, the delivery's next step and the endpoint's health: a success
    /// clears its failing streak; a 410, or failing without a success for `disable_after_ms`,
    /// disables it (holding its pending deliveries) and tells the account's other endpoints
    /// with `endpoint.disabled`. Returns how many deliveries that made due. All or none.
    async fn record_attempts(
        &self,
        records: Arc<Vec<AttemptRecord>>,
        disable_after_ms: i64,
    ) -> StoreResult<usize>;
    /// Hands claimed deliveries back, due at the given times, without an attempt.
    async fn park(&self, parked: Vec<(i64, i64)>) -> StoreResult<()>;
    /// Makes up to `limit` of the endpoint's parked deliveries due now, earliest first:
    /// its lane caught up sooner than it estimated. Returns how many.
    async fn unpark(&self, endpoint_id: String, now: i64, limit: usize) -> StoreResult<usize>;
    /// At start: leases held by a previous run of this node are void, and what its lanes
    /// parked is due now. Returns how many.
    async fn release_claims(&self, now: i64) -> StoreResult<usize>;
}

/// Wakes the worker when new deliveries are due now.
#[derive(Clone, Default)]
pub struct DeliveryWaker(Arc<Notify>);

impl DeliveryWaker {
    pub fn wake(&self) {
        self.0.notify_one();
    }
}

/// How ingest hands fresh deliveries straight to the worker: they are inserted already
/// leased, in the transaction that stores their event, and passed in memory once it
/// commits, so a fresh delivery costs neither a claim (a write) nor a read of its payload.
/// `room` bounds what the worker holds; with no room, deliveries are stored due and the
/// worker claims them from the store as it catches up.
#[derive(Clone)]
pub struct Handoff {
    room: Arc<Semaphore>,
    to_worker: mpsc::UnboundedSender<Vec<DueDelivery>>,
    /// Endpoints deleted, whose lanes the worker forgets.
    deleted: mpsc::UnboundedSender<String>,
    /// How long a delivery handed over stays leased to this run of the worker.
    pub lease: Duration,
}

/// The worker's end of the handoff.
pub struct Inbox {
    room: Arc<Semaphore>,
    from_ingest: mpsc::UnboundedReceiver<Vec<DueDelivery>>,
    deleted: mpsc::UnboundedReceiver<String>,
}

/// A handoff for a worker holding at most `budget` claimed deliveries.
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

/// Claims cover what is under way and a queue behind it, so that a completion finds the
/// next delivery in memory rather than in the store.
fn claim_budget(config: &DeliveryConfig) -> usize {
    config.max_in_flight + CLAIM_BATCH
}

/// A claim outlives the longest attempt.
fn lease(config: &DeliveryConfig) -> Duration {
    config.timeout + Duration::from_secs(30)
}

impl Handoff {
    /// Room to take during one write.
    pub fn reserve(&self) -> Reserved {
        Reserved {
            room: self.room.clone(),
            taken: 0,
            to_worker: self.to_worker.clone(),
            deliveries: Vec::new(),
        }
    }

    /// Tells the worker an endpoint is gone (its deliveries with it), so that it forgets
    /// the endpoint's lane: one whose breaker is open would otherwise wait for an outcome
    /// that never comes, and stay in memory.
    pub fn endpoint_deleted(&self, endpoint_id: String) {
        // A worker gone (shut down) has no lanes to forget.
        let _ = self.deleted.send(endpoint_id);
    }
}

/// Room taken in the worker during one write, with the deliveries it is for: sent once the
/// write commits, given back if it does not.
pub struct Reserved {
    room: Arc<Semaphore>,
    taken: usize,
    to_worker: mpsc::UnboundedSender<Vec<DueDelivery>>,
    deliveries: Vec<DueDelivery>,
}

impl Reserved {
    /// Takes room for one more delivery, if the worker has any.
    pub fn take_room(&mut self) -> bool {
        match self.room.try_acquire() {
            Ok(permit) => {
                permit.forget();
                self.taken += 1;
                true
            }
            Err(_) => false,
        }
    }

    /// A delivery leased for the worker, in room taken before.
    pub fn push(&mut self, delivery: DueDelivery) {
        self.deliveries.push(delivery);
    }

    /// After the commit: the worker owns the room taken from now on.
    pub fn send(mut self) {
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

/// Which endpoints their circuit breaker has paused, and until when: written by the worker
/// when a breaker opens or closes, read by the endpoint API.
#[derive(Clone, Default)]
pub struct Pauses(Arc<std::sync::Mutex<HashMap<String, i64>>>);

impl Pauses {
    pub fn until(&self, endpoint_id: &str) -> Option<i64> {
        self.0
            .lock()
            .expect("pauses lock")
            .get(endpoint_id)
            .copied()
    }

    fn set(&self, endpoint_id: &str, until: Option<i64>) {
        let mut pauses = self.0.lock().expect("pauses lock");
        match until {
            Some(at) => pauses.insert(endpoint_id.to_owned(), at),
            None => pauses.remove(endpoint_id),
        };
    }
}

const CLAIM_BATCH: usize = 256;

/// What a claim took from the store, and what it asked for at what time.
struct Claimed {
    now: i64,
    want: usize,
    /// Started after the lanes' last take-back made their deliveries due.
    after_take_back: bool,
    claimed: StoreResult<Vec<DueDelivery>>,
}

pub struct Worker {
    pub store: SharedStore,
    pub config: DeliveryConfig,
    pub clock: SharedClock,
    pub waker: DeliveryWaker,
    pub inbox: Inbox,
    pub pauses: Pauses,
    pub shutdown: CancellationToken,
}

/// What a finished attempt tells the worker.
struct Finished {
    delivery_id: i64,
    endpoint_id: String,
    /// When its lane started it.
    started_at: i64,
    health: Health,
    /// How long the receiver took.
    took_ms: i64,
    /// When it is due again, if it is to be retried.
    retry_at: Option<i64>,
}

/// When the retries the worker scheduled itself are due: the earliest `MAX` of them, and
/// the earliest of those let go to stay that small. The worker wakes then and claims, and
/// the store's next due time (read whenever a claim finds less than it asked for) has the
/// rest, whose records were written long before.
#[derive(Default)]
struct Retries {
    soon: BTreeSet<i64>,
    let_go: Option<i64>,
}

impl Retries {
    const MAX: usize = 1024;

    fn add(&mut self, at: i64) {
        self.soon.insert(at);
        if self.soon.len() > Self::MAX {
            self.let_go = earliest(self.let_go, self.soon.pop_last());
        }
    }

    fn first(&self) -> Option<i64> {
        earliest(self.soon.first().copied(), self.let_go)
    }

    /// Forgets the retries due at `now` or before: a claim at `now` took them.
    fn forget_until(&mut self, now: i64) {
        self.soon = self.soon.split_off(&(now + 1));
        self.let_go = self.let_go.filter(|at| *at > now);
    }
}

/// The earlier of two optional times.
pub(crate) fn earliest(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The worker's state between steps: the lanes, and every delivery it holds a claim on.
struct Lanes {
    // The worker's maps are keyed by its own ids, hashed for every delivery: a fast hash.
    lanes: FastMap<String, Lane>,
    /// Lanes with something queued.
    active: FastSet<String>,
    /// Queued or under way: a claim whose lease ran out while its delivery waits or is
    /// attempted (the clock stepped) must not start a second attempt beside the first.
    claimed: FastSet<i64>,
    /// One permit for every claim the worker could still hold; shared with ingest.
    room: Arc<Semaphore>,
    /// Deliveries to hand back to the store with a later due time, in one write.
    to_park: Vec<(i64, i64)>,
    /// The pace (usual latency, ms) of endpoints whose lanes went idle, and when: a lane
    /// made again soon after starts from it rather than from not knowing.
    paces: FastMap<String, (f64, i64)>,
    /// `paces` is pruned of what is too old when it grows to this.
    prune_paces_at: usize,
    /// When any lane last heard an answer (see [`Lane::queue_cap`]).
    answered_at: i64,
}

/// How long a lane's pace is remembered once it has gone idle.
const PACE_MEMORY_MS: i64 = 60_000;
/// Remembered paces are not pruned before there are this many.
const MIN_PACES_PRUNE: usize = 1024;

impl Worker {
    /// Runs until shutdown, then waits for the attempts under way (bounded by the timeout).
    pub async fn run(mut self) {
        let guard = guard::Guard::new(self.config.allowed_networks.clone());
        let resolver = guard::GuardedResolver::new(guard.clone(), self.config.resolve.clone());
        let (records, recorded) = mpsc::channel(RECORD_BATCH * 4);
        let recorder = tokio::spawn(record_attempts(
            self.store.clone(),
            self.waker.clone(),
            self.clock.clone(),
            self.config.disable_after.as_millis() as i64,
            recorded,
        ));
        let mut sender = Arc::new(Sender {
            client: send::client(self.config.timeout, resolver.clone()),
            guard,
            records,
            clock: self.clock.clone(),
            config: self.config.clone(),
        });
        let lease = lease(&self.config);
        let policy = BreakerPolicy {
            failures: self.config.breaker_failures,
            cooldown_ms: self.config.breaker_cooldown.as_millis() as i64,
            max_cooldown_ms: self.config.breaker_max_cooldown.as_millis() as i64,
        };
        match self.store.release_claims(self.clock.now_ms()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deliveries = n, "resuming deliveries interrupted by a stop"),
            Err(e) => tracing::error!(error = %e, "could not release old claims"),
        }
        let min_claim = (self.config.max_in_flight / 4).clamp(1, CLAIM_BATCH);
        let mut in_flight: JoinSet<Finished> = JoinSet::new();
        let mut running: FastMap<tokio::task::Id, (i64, String, i64)> = FastMap::default();
        // Whether deliveries may be due now (woken, or the last claim was full), and when
        // the next one is due as far as the worker knows.
        let mut known_due = true;
        let mut next_due: Option<i64> = None;
        // The retries this worker scheduled, apart from `next_due`: the recorder may not have
        // written one yet when a claim finds nothing due, and a later one folded into
        // `next_due` would be dropped with the earlier time it hid behind.
        let mut retries = Retries::default();
        let mut stale = true;
        let mut due_read_at = i64::MIN / 2;
        // Whether anything was sent since the worker last let its connections go, and since
        // when nothing is queued or under way.
        let mut sent_since_release = false;
        let mut idle_since: Option<tokio::time::Instant> = None;
        let mut claiming: Option<Pin<Box<dyn Future<Output = Claimed> + Send>>> = None;
        let mut lane_writes: Option<Pin<Box<dyn Future<Output = TakenBack> + Send>>> = None;
        // Deliveries taken back are due, and no claim started since has returned.
        let mut taken_back_unclaimed = false;
        let mut state = Lanes {
            lanes: FastMap::default(),
            active: FastSet::default(),
            claimed: FastSet::default(),
            room: self.inbox.room.clone(),
            to_park: Vec::new(),
            paces: FastMap::default(),
            prune_paces_at: MIN_PACES_PRUNE,
            answered_at: i64::MIN,
        };
        loop {
            if self.shutdown.is_cancelled() {
                break;
            }
            let room = state.room.available_permits();
            // Claim in batches: claiming one delivery per completion would cost a write
            // transaction per delivery.
            let worth_claiming = room >= min_claim || state.claimed.is_empty();
            let want = if claiming.is_none() && known_due && room > 0 && worth_claiming {
                take_room(&state.room, room.min(CLAIM_BATCH))
            } else {
                0
            };
            if want > 0 {
                // The claim commits while the worker goes on: under load a write waits its
                // turn behind others for many milliseconds, and the attempts that end
                // meanwhile start what the lanes already hold.
                let store = self.store.clone();
                let now = self.clock.now_ms();
                let lease_until = now + lease.as_millis() as i64;
                let after_take_back = taken_back_unclaimed;
                // The claim answers what was known due when it started; a wake, a timer or
                // a lane's take-back while it commits sets this again and is not lost.
                known_due = false;
                claiming = Some(Box::pin(async move {
                    let claimed = store.claim_due(now, want, lease_until).await;
                    Claimed {
                        now,
                        want,
                        after_take_back,
                        claimed,
                    }
                }));
            }
            let now = self.clock.now_ms();
            state.trim(now);
            let under_way = in_flight.len();
            let lane_wake = state.start_ready(now, under_way, self.config.max_in_flight, |job| {
                let key = (job.delivery_id, job.endpoint.id.clone(), now);
                let task = in_flight.spawn(deliver(sender.clone(), job, now));
                running.insert(task.id(), key);
            });
            sent_since_release |= !in_flight.is_empty();
            // Parking and taking back are writes too, and wait their turn behind ingest's
            // like a claim: they commit while the worker goes on, one set at a time. Lanes
            // ask for parked deliveries back only once a claim has looked for the last ones
            // they were given back: until then they look caught up, and would ask again.
            if lane_writes.is_none() {
                let take_back = if taken_back_unclaimed {
                    Vec::new()
                } else {
                    state.take_back(now)
                };
                let parked = std::mem::take(&mut state.to_park);
                if !take_back.is_empty() || !parked.is_empty() {
                    next_due = earliest(next_due, parked.iter().map(|p| p.1).min());
                    lane_writes = Some(Box::pin(write_for_lanes(
                        self.store.clone(),
                        now,
                        take_back,
                        parked,
                    )));
                }
            }
            // More is due (the claim was full, or a lane took parked deliveries back) and
            // there is room for it.
            let room = state.room.available_permits();
            if claiming.is_none()
                && known_due
                && room > 0
                && (room >= min_claim || state.claimed.is_empty())
            {
                continue;
            }
            // The store is asked when the next delivery is due only when what the worker
            // knows may be out of date (deliveries it did not schedule itself: a lease run
            // out, another process's writes), and at most ten times a second while busy:
            // the worker learns of its own retries and parks as it makes them.
            let now = self.clock.now_ms();
            if stale && (state.claimed.is_empty() || now - due_read_at >= 100) {
                stale = false;
                due_read_at = now;
                match self.store.next_due_at().await {
                    // Retries the recorder has not written yet are in `retries`.
                    Ok(at) => next_due = earliest(at, next_due),
                    Err(e) => {
                        tracing::error!(error = %e, "could not read the next due time");
                        next_due = Some(now + 1000);
                    }
                }
            }
            let store_wake = if worth_claiming || state.claimed.is_empty() {
                earliest(next_due, retries.first())
            } else {
                None
            };
            let wake_at = earliest(
                earliest(store_wake, lane_wake),
                state.probe_wake(self.clock.now_ms()),
            );
            let sleep = wake_at.map(|at| {
                let wait = (at - self.clock.now_ms()).max(0) as u64;
                tokio::time::sleep(Duration::from_millis(wait))
            });
            if !in_flight.is_empty() || !state.claimed.is_empty() {
                idle_since = None;
            } else if idle_since.is_none() {
                idle_since = Some(tokio::time::Instant::now());
            }
            let release_at = idle_since
                .filter(|_| sent_since_release)
                .map(|since| since + self.config.idle_release_after);
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                Claimed { now, want, after_take_back, claimed } = async { claiming.as_mut().expect("guarded").await },
                    if claiming.is_some() =>
                {
                    claiming = None;
                    taken_back_unclaimed &= !after_take_back;
                    match claimed {
                        Ok(jobs) => {
                            known_due |= jobs.len() == want;
                            state.room.add_permits(want - jobs.len());
                            if !known_due {
                                // Nothing else is due now; what is due later is still known.
                                // A retry due by now whose record was not written yet is
                                // not lost: the recorder wakes the worker once it is.
                                next_due = next_due.filter(|at| *at > now);
                                retries.forget_until(now);
                                stale = true;
                            }
                            for job in jobs {
                                state.take(job, &self.config, now);
                            }
                        }
                        Err(e) => {
                            state.room.add_permits(want);
                            tracing::error!(error = %e, "could not claim deliveries");
                            // Try again in a second rather than at once.
                            next_due = Some(now + 1000);
                        }
                    }
                }
                TakenBack { now, lanes } = async { lane_writes.as_mut().expect("guarded").await },
                    if lane_writes.is_some() =>
                {
                    lane_writes = None;
                    for (asked, taken) in lanes {
                        if taken > 0 {
                            known_due = true;
                            taken_back_unclaimed = true;
                        }
                        if taken < asked.limit {
                            if let Some(lane) = state.lanes.get_mut(&asked.endpoint_id) {
                                lane.nothing_parked(asked.parked_until, now);
                            }
                        }
                    }
                }
                _ = self.waker.0.notified() => known_due = true,
                Some(endpoint_id) = self.inbox.deleted.recv() => {
                    state.forget(&endpoint_id, &self.pauses);
                }
                Some(handed) = self.inbox.from_ingest.recv() => {
                    let now = self.clock.now_ms();
                    let mut handed = Some(handed);
                    while let Some(jobs) = handed.take().or_else(|| self.inbox.from_ingest.try_recv().ok()) {
                        for job in jobs {
                            state.take(job, &self.config, now);
                        }
                    }
                }
                Some(done) = in_flight.join_next_with_id(), if !in_flight.is_empty() => {
                    // Take every attempt that has ended, then step once for them all.
                    let mut done = Some(done);
                    while let Some(result) = done.take().or_else(|| in_flight.try_join_next_with_id()) {
                        let finished = match result {
                            Ok((task, f)) => {
                                running.remove(&task);
                                f
                            }
                            Err(e) => {
                                tracing::error!(error = %e, "delivery task failed");
                                // Its delivery is due again when its lease runs out.
                                stale = true;
                                let Some((delivery_id, endpoint_id, started_at)) =
                                    running.remove(&e.id())
                                else {
                                    continue;
                                };
                                Finished {
                                    delivery_id,
                                    endpoint_id,
                                    started_at,
                                    health: Health::Unknown,
                                    took_ms: 0,
                                    retry_at: None,
                                }
                            }
                        };
                        if let Some(at) = finished.retry_at {
                            retries.add(at);
                        }
                        state.finish(finished, self.clock.now_ms(), &policy, &self.pauses);
                    }
                }
                _ = async { sleep.expect("guarded").await }, if sleep.is_some() => {
                    known_due = true;
                    stale = true;
                }
                _ = tokio::time::sleep_until(release_at.unwrap_or_else(tokio::time::Instant::now)),
                    if release_at.is_some() =>
                {
                    // A burst is over: its connections (kept alive, each with its buffers)
                    // close with the old client, and the memory it took goes back.
                    sent_since_release = false;
                    sender = Arc::new(sender.with_new_client(resolver.clone()));
                    release_memory(&self.store).await;
                }
            }
        }
        // Attempts under way finish (each is bounded by the timeout) and are recorded; one
        // that does not is left leased, and is retried after the next start. What waits in
        // the lanes keeps its lease and is claimed again after the next start.
        let grace = self.config.timeout + Duration::from_secs(1);
        let _ = tokio::time::timeout(grace, async {
            while in_flight.join_next().await.is_some() {}
        })
        .await;
        in_flight.shutdown().await;
        // The last sender goes with the attempts; the recorder writes what is left and ends.
        drop(sender);
        if let Err(e) = recorder.await {
            tracing::error!(error = %e, "the attempt recorder failed");
        }
    }
}

impl Lanes {
    /// A claimed delivery joins its endpoint's lane, or is parked when the lane cannot
    /// start it soon (its breaker is open, or it is already queued as deep as its pace).
    fn take(&mut self, job: DueDelivery, config: &DeliveryConfig, now: i64) {
        if !self.claimed.insert(job.delivery_id) {
            // Claimed twice (a lease ran out under it): one claim is enough.
            self.room.add_permits(1);
            return;
        }
        let limits = Limits {
            concurrency: job
                .endpoint
                .max_concurrency
                .map_or(config.endpoint_concurrency, |n| n as usize)
                .max(1),
            rate: job.endpoint.rate_limit,
        };
        let paces = &mut self.paces;
        let lane = self
            .lanes
            .entry(job.endpoint.id.clone())
            .or_insert_with(|| {
                let pace = paces
                    .remove(&job.endpoint.id)
                    .filter(|(_, at)| now - at < PACE_MEMORY_MS);
                Lane::new(limits, now).remembering(pace.map(|(avg_ms, _)| avg_ms))
            });
        lane.set_limits(limits);
        if lane.queue.len() >= lane.queue_cap(now, self.answered_at) {
            park(
                lane,
                job.delivery_id,
                now,
                &mut self.claimed,
                &self.room,
                &mut self.to_park,
            );
            return;
        }
        self.active.insert(job.endpoint.id.clone());
        lane.queue.push_back(job);
    }

    /// Lanes that slowed down (or opened their breaker) since they queued give back what
    /// they cannot start soon, so that they never sit on claims others could use.
    fn trim(&mut self, now: i64) {
        for id in &self.active {
            let lane = self.lanes.get_mut(id).expect("active lanes exist");
            let cap = lane.queue_cap(now, self.answered_at);
            while lane.queue.len() > cap {
                let job = lane.queue.pop_back().expect("longer than its cap");
                park(
                    lane,
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
    /// already). Returns when a lane held back by its rate limit or breaker can go next.
    fn start_ready(
        &mut self,
        now: i64,
        under_way: usize,
        max_in_flight: usize,
        mut start: impl FnMut(DueDelivery),
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
                        start(job);
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

    /// The earliest time after `now` a lane paused by its breaker wants a parked delivery
    /// back to probe with.
    fn probe_wake(&self, now: i64) -> Option<i64> {
        self.lanes
            .values()
            .filter_map(Lane::probe_wanted_at)
            .filter(|at| *at > now)
            .min()
    }

    /// Lanes that caught up, and how many parked deliveries each wants back.
    fn take_back(&mut self, now: i64) -> Vec<TakeBack> {
        let answered_at = self.answered_at;
        self.lanes
            .iter_mut()
            .filter_map(|(id, lane)| {
                lane.take_back(now, answered_at).map(|limit| TakeBack {
                    endpoint_id: id.clone(),
                    limit,
                    parked_until: lane.parked_until(),
                })
            })
            .collect()
    }

    /// A deleted endpoint's lane goes, with what it queued (those deliveries went with the
    /// endpoint); attempts under way end as ever, and find no lane to report to.
    fn forget(&mut self, endpoint_id: &str, pauses: &Pauses) {
        pauses.set(endpoint_id, None);
        self.active.remove(endpoint_id);
        self.paces.remove(endpoint_id);
        let Some(lane) = self.lanes.remove(endpoint_id) else {
            return;
        };
        for job in lane.queue {
            unclaim(&mut self.claimed, &self.room, job.delivery_id);
        }
    }

    fn finish(&mut self, f: Finished, now: i64, policy: &BreakerPolicy, pauses: &Pauses) {
        unclaim(&mut self.claimed, &self.room, f.delivery_id);
        if f.health != Health::Unknown {
            self.answered_at = self.answered_at.max(now);
        }
        let Some(lane) = self.lanes.get_mut(&f.endpoint_id) else {
            return;
        };
        let before = lane.breaker();
        lane.finish(f.started_at, now, f.took_ms, f.health, policy);
        match lane.breaker() {
            Breaker::Open { until, .. } if lane.breaker() != before => {
                tracing::warn!(endpoint = %f.endpoint_id, until, "endpoint paused by its circuit breaker");
                pauses.set(&f.endpoint_id, Some(until));
            }
            Breaker::Closed { .. } if !matches!(before, Breaker::Closed { .. }) => {
                tracing::info!(endpoint = %f.endpoint_id, "endpoint answers again; circuit breaker closed");
                pauses.set(&f.endpoint_id, None);
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
    fn remember_pace(&mut self, endpoint_id: String, avg_ms: f64, now: i64) {
        self.paces.insert(endpoint_id, (avg_ms, now));
        if self.paces.len() >= self.prune_paces_at {
            self.paces.retain(|_, (_, at)| now - *at < PACE_MEMORY_MS);
            self.prune_paces_at = (self.paces.len() * 2).max(MIN_PACES_PRUNE);
        }
    }
}

/// A lane's request for `limit` of its parked deliveries back, made when the latest it had
/// parked was due at `parked_until`.
struct TakeBack {
    endpoint_id: String,
    limit: usize,
    parked_until: i64,
}

/// What the store gave back to the lanes that asked, asked at `now`.
struct TakenBack {
    now: i64,
    lanes: Vec<(TakeBack, usize)>,
}

/// One set of the lanes' writes: their parked deliveries taken back, then what they park.
async fn write_for_lanes(
    store: SharedStore,
    now: i64,
    take_back: Vec<TakeBack>,
    parked: Vec<(i64, i64)>,
) -> TakenBack {
    let mut lanes = Vec::with_capacity(take_back.len());
    for asked in take_back {
        let taken = match store
            .unpark(asked.endpoint_id.clone(), now, asked.limit)
            .await
        {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "could not take parked deliveries back");
                0
            }
        };
        lanes.push((asked, taken));
    }
    if !parked.is_empty() {
        let n = parked.len();
        match store.park(parked).await {
            Ok(()) => tracing::debug!(deliveries = n, "parked for their lanes"),
            // Their leases run out and they are claimed again: delayed, not lost.
            Err(e) => tracing::error!(error = %e, "could not park deliveries"),
        }
    }
    TakenBack { now, lanes }
}

/// Hands a claimed delivery back to the store for when its lane expects to have room.
fn park(
    lane: &mut Lane,
    delivery_id: i64,
    now: i64,
    claimed: &mut FastSet<i64>,
    room: &Semaphore,
    to_park: &mut Vec<(i64, i64)>,
) {
    let at = lane.park_at(now);
    unclaim(claimed, room, delivery_id);
    to_park.push((delivery_id, at));
}

/// The delivery leaves the worker's hands, and its room with it.
fn unclaim(claimed: &mut FastSet<i64>, room: &Semaphore, delivery_id: i64) {
    if claimed.remove(&delivery_id) {
        room.add_permits(1);
    }
}

/// What every attempt shares.
struct Sender {
    client: send::Client,
    guard: guard::Guard,
    records: mpsc::Sender<AttemptRecord>,
    clock: SharedClock,
    config: DeliveryConfig,
}

impl Sender {
    /// The same sender with a client of its own; the old client's connections close as the
    /// last attempt holding it ends.
    fn with_new_client(&self, resolver: guard::GuardedResolver) -> Sender {
        Sender {
            client: send::client(self.config.timeout, resolver),
            guard: self.guard.clone(),
            records: self.records.clone(),
            clock: self.clock.clone(),
            config: self.config.clone(),
        }
    }
}

/// Takes up to `want` of the room free now, and says how much. Ingest takes room at the same
/// time: whatever it took since the room was last looked at, it hands over itself.
fn take_room(room: &Semaphore, want: usize) -> usize {
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

/// Shrinks the store's caches and gives the process's free memory back to the system.
async fn release_memory(store: &SharedStore) {
    if let Err(e) = store.shrink_caches().await {
        tracing::warn!(error = %e, "could not shrink the store's caches");
    }
    // A walk of every heap: milliseconds, kept off the async threads.
    if let Err(e) = tokio::task::spawn_blocking(crate::memory::give_back).await {
        tracing::warn!(error = %e, "could not give memory back");
    }
    tracing::debug!("idle: connections closed, memory given back");
}

/// Writes attempt records as they come, many to a transaction: under load the deliveries
/// finishing while one batch commits make the next batch.
async fn record_attempts(
    store: SharedStore,
    waker: DeliveryWaker,
    clock: SharedClock,
    disable_after_ms: i64,
    mut records: mpsc::Receiver<AttemptRecord>,
) {
    let mut batch = Vec::with_capacity(RECORD_BATCH);
    while records.recv_many(&mut batch, RECORD_BATCH).await > 0 {
        let records = Arc::new(std::mem::take(&mut batch));
        let made_due = match store
            .record_attempts(records.clone(), disable_after_ms)
            .await
        {
            Ok(n) => n,
            // One bad record (its delivery deleted meanwhile, say) must not cost the others.
            Err(_) if records.len() > 1 => {
                let mut made_due = 0;
                for record in records.iter() {
                    made_due += record_alone(&store, record.clone(), disable_after_ms).await;
                }
                made_due
            }
            Err(e) => {
                let delivery = records[0].delivery_id;
                // The lease runs out and the delivery is attempted again: at least once.
                tracing::error!(error = %e, delivery, "could not record an attempt");
                0
            }
        };
        // A retry already due by the time it is written was perhaps looked for too early.
        let now = clock.now_ms();
        let retry_due = records
            .iter()
            .any(|r| matches!(r.next, NextStep::RetryAt(at) if at <= now));
        if made_due > 0 || retry_due {
            waker.wake();
        }
    }
}

async fn record_alone(store: &SharedStore, record: AttemptRecord, disable_after_ms: i64) -> usize {
    let delivery = record.delivery_id;
    match store
        .record_attempts(Arc::new(vec![record]), disable_after_ms)
        .await
    {
        Ok(n) => n,
        // The lease runs out and the delivery is attempted again: at least once, not lost.
        Err(e) => {
            tracing::error!(error = %e, delivery, "could not record an attempt");
            0
        }
    }
}

/// Records written in one transaction at most. Under a backlog the attempts ending while a
/// batch commits (20 ms and more behind ingest's writes) outnumber 256, and at 256 the
/// records queued up until the attempts waited to hand theirs over.
const RECORD_BATCH: usize = 1024;

/// One attempt and its record: the unit of work of the worker.
async fn deliver(sender: Arc<Sender>, job: DueDelivery, lane_started_at: i64) -> Finished {
    let Sender {
        client,
        guard,
        records,
        clock,
        config,
    } = &*sender;
    let started = clock.now_ms();
    let report = send::attempt(client, guard, &job, config.timeout, started).await;
    let next = next_step(
        job.attempt,
        &report.result,
        report.retry_after,
        &config.retry_schedule,
        clock.now_ms(),
        rand::random::<f64>(),
    );
    tracing::debug!(
        delivery = job.delivery_id,
        endpoint = %job.endpoint.id,
        attempt = job.attempt,
        status = ?report.status_code,
        error = ?report.error_kind,
        ?next,
        "attempt"
    );
    let record = AttemptRecord {
        delivery_id: job.delivery_id,
        endpoint: job.endpoint.clone(),
        attempt: job.attempt,
        started_at: report.started_at,
        duration_ms: report.duration_ms,
        status_code: report.status_code,
        error_kind: report.error_kind.map(str::to_owned),
        error: report.error,
        response_body: report.response_body,
        next,
    };
    let health = Health::of(&report.result);
    // The recorder stops only after the worker, so it takes every record.
    let _ = records.send(record).await;
    Finished {
        delivery_id: job.delivery_id,
        endpoint_id: job.endpoint.id.clone(),
        started_at: lane_started_at,
        health,
        took_ms: report.duration_ms,
        retry_at: match next {
            NextStep::RetryAt(at) => Some(at),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_remembered_apart_until_a_claim_takes_them() {
        let mut retries = Retries::default();
        assert_eq!(retries.first(), None);
        retries.add(655);
        retries.add(529);
        assert_eq!(retries.first(), Some(529));
        // A claim at 535 took what was due; the retry at 655 is still to come.
        retries.forget_until(535);
        assert_eq!(retries.first(), Some(655));
        retries.forget_until(655);
        assert_eq!(retries.first(), None);
        // The earliest are kept, and of the rest the earliest time.
        let max = Retries::MAX as i64;
        for at in 0..2 * max {
            retries.add(at);
        }
        assert_eq!(retries.soon.len(), Retries::MAX);
        assert_eq!(retries.first(), Some(0));
        retries.forget_until(max - 1);
        assert_eq!(retries.first(), Some(max), "the earliest let go");
        retries.forget_until(max);
        assert_eq!(retries.first(), None);
    }

    fn config(max_in_flight: usize) -> DeliveryConfig {
        DeliveryConfig {
            max_in_flight,
            ..crate::config::Config::default().delivery
        }
    }

    fn due(id: i64) -> DueDelivery {
        DueDelivery {
            delivery_id: id,
            attempt: 1,
            event_id: format!("evt_{id}"),
            payload: "{}".into(),
            endpoint: Arc::new(Target {
                id: "ep".into(),
                url: "http://example.com".into(),
                format: BodyFormat::Json,
                secret_in_body: false,
                headers: BTreeMap::new(),
                secrets: Vec::new(),
                max_concurrency: None,
                ordered: false,
                rate_limit: None,
                prepared: Default::default(),
            }),
        }
    }

    #[test]
    fn room_taken_by_a_write_that_does_not_commit_comes_back() {
        let (handoff, inbox) = handoff(&config(4));
        let budget = claim_budget(&config(4));
        let mut reserved = handoff.reserve();
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

    fn lanes(inbox: &Inbox) -> Lanes {
        Lanes {
            lanes: FastMap::default(),
            active: FastSet::default(),
            claimed: FastSet::default(),
            room: inbox.room.clone(),
            to_park: Vec::new(),
            paces: FastMap::default(),
            prune_paces_at: MIN_PACES_PRUNE,
            answered_at: i64::MIN,
        }
    }

    const POLICY: BreakerPolicy = BreakerPolicy {
        failures: 5,
        cooldown_ms: 1000,
        max_cooldown_ms: 1000,
    };

    /// An attempt started at `started_at` that took 5 ms.
    fn finished(delivery_id: i64, endpoint_id: &str, started_at: i64, health: Health) -> Finished {
        Finished {
            delivery_id,
            endpoint_id: endpoint_id.into(),
            started_at,
            health,
            took_ms: 5,
            retry_at: None,
        }
    }

    /// Takes `id` into its lane and runs it to an answer after 5 ms.
    fn answered(lanes: &mut Lanes, id: i64, at: i64) {
        assert_eq!(take_room(&lanes.room, 1), 1);
        lanes.take(due(id), &config(4), at);
        lanes.start_ready(at, 0, 4, |_| {});
        let done = finished(id, "ep", at, Health::Up);
        lanes.finish(done, at + 5, &POLICY, &Pauses::default());
    }

    #[test]
    fn a_lane_made_again_soon_after_it_went_idle_knows_its_endpoint_s_pace() {
        let (_handoff, inbox) = handoff(&config(4));
        let mut lanes = lanes(&inbox);
        answered(&mut lanes, 1, 0);
        assert!(lanes.lanes.is_empty(), "idle, so gone");
        // Back within the minute: known to be fast, so nothing it is handed is parked.
        assert_eq!(take_room(&lanes.room, 1), 1);
        lanes.take(due(2), &config(4), 30_000);
        assert_eq!(lanes.lanes["ep"].queue_cap(30_000, i64::MIN), usize::MAX);
        lanes.start_ready(30_000, 0, 4, |_| {});
        let done = finished(2, "ep", 30_000, Health::Up);
        lanes.finish(done, 30_005, &POLICY, &Pauses::default());
        // A minute after it was last idle, its pace is not known any more.
        assert_eq!(take_room(&lanes.room, 1), 1);
        lanes.take(due(3), &config(4), 30_005 + PACE_MEMORY_MS);
        let cap = lanes.lanes["ep"].queue_cap(30_005 + PACE_MEMORY_MS, i64::MIN);
        assert!(cap < usize::MAX, "{cap}");
        // Deleting the endpoint forgets its pace too.
        lanes.lanes.clear();
        lanes.remember_pace("ep".into(), 5.0, 0);
        lanes.forget("ep", &Pauses::default());
        assert!(lanes.paces.is_empty());
    }

    #[test]
    fn remembered_paces_are_pruned_as_they_grow() {
        let (_handoff, inbox) = handoff(&config(4));
        let mut lanes = lanes(&inbox);
        for i in 0..MIN_PACES_PRUNE - 1 {
            lanes.remember_pace(format!("old{i}"), 5.0, 0);
        }
        assert_eq!(lanes.paces.len(), MIN_PACES_PRUNE - 1);
        lanes.remember_pace("new".into(), 5.0, PACE_MEMORY_MS);
        assert_eq!(lanes.paces.len(), 1, "only the one still young is kept");
        assert_eq!(lanes.prune_paces_at, MIN_PACES_PRUNE);
    }

    #[test]
    fn a_deleted_endpoint_s_lane_is_forgotten_and_its_room_comes_back() {
        let (handoff, mut inbox) = handoff(&config(4));
        let pauses = Pauses::default();
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
        lanes.take(due(1), &config(4), 0);
        let mut started = Vec::new();
        lanes.start_ready(0, 0, 4, |job| started.push(job.delivery_id));
        assert_eq!(started, [1]);
        lanes.finish(failed(1, "ep"), 10, &policy, &pauses);
        assert!(pauses.until("ep").is_some());
        assert_eq!(take_room(&lanes.room, 1), 1);
        lanes.take(due(2), &config(4), 20);
        assert_eq!(lanes.to_park.len(), 1);
        // "other" has deliveries queued behind one under way.
        assert_eq!(take_room(&lanes.room, 3), 3);
        for id in 3..=5 {
            let mut job = due(id);
            Arc::make_mut(&mut job.endpoint).id = "other".into();
            lanes.take(job, &config(4), 20);
        }
        lanes.start_ready(20, 0, 1, |_| {});
        assert_eq!(lanes.lanes["other"].queue.len(), 2);

        // Deleted, both are forgotten: the open breaker waits for no outcome, and what
        // was queued gives its room back.
        for endpoint in ["ep", "other"] {
            handoff.endpoint_deleted(endpoint.into());
            let deleted = inbox.deleted.try_recv().expect("told");
            lanes.forget(&deleted, &pauses);
        }
        assert!(lanes.lanes.is_empty() && lanes.active.is_empty());
        assert_eq!(pauses.until("ep"), None);
        assert_eq!(lanes.room.available_permits(), budget - 1);
        // The attempt under way ends as ever, with no lane to report to.
        lanes.finish(failed(3, "other"), 30, &policy, &pauses);
        assert!(lanes.lanes.is_empty() && lanes.claimed.is_empty());
        assert_eq!(lanes.room.available_permits(), budget);
        assert_eq!(pauses.until("other"), None);
    }

    #[test]
    fn room_sent_with_its_deliveries_belongs_to_the_worker() {
        let (handoff, mut inbox) = handoff(&config(0));
        let mut reserved = handoff.reserve();
        for id in 0..CLAIM_BATCH as i64 {
            assert!(reserved.take_room());
            reserved.push(due(id));
        }
        // No room left: the next delivery is stored due instead.
        assert!(!reserved.take_room());
        reserved.send();
        assert_eq!(inbox.room.available_permits(), 0);
        let handed = inbox.from_ingest.try_recv().expect("sent");
        assert_eq!(handed.len(), CLAIM_BATCH);
        assert_eq!(handed[0].delivery_id, 0);
    }
}
