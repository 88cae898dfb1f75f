//! The worker's loop: claims due deliveries (reading back first what a claim whose commit
//! went unanswered took), reads those other nodes offered it, starts what the lanes
//! allow, parks and takes back for them, and sleeps until something wakes it ([`Wake`]),
//! which it then handles.
//! One step returns one wake; handling it changes the worker's state and nothing else
//! waits.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use foldhash::HashMap as FastMap;
use merpati_domain::clock::{earliest, SharedClock};
use merpati_domain::delivery::DueDelivery;
use merpati_domain::ids::{AccountId, DeliveryId, EndpointId};
use merpati_domain::{SharedStore, StoreError, StoreResult};
use tokio::sync::mpsc;
use tokio::task::{JoinError, JoinSet};
use tokio_util::sync::CancellationToken;

use super::attempt::{deliver, Sender};
use super::breaker::{BreakerPolicy, Health};
use super::due_times::DueTimes;
use super::handoff::{lease, take_room, Inbox, CLAIM_BATCH, LEASE_MARGIN};
use super::lane_writes;
use super::lanes::{Finished, Lanes, TakenBack};
use super::offers::{take_offered, Offers, OffersRead, ToRead, UnansweredClaim, UnansweredClaims};
use super::recorder::{Recorder, RECORD_BATCH};
use super::{guard, send, DeliveryConfig, DeliveryWaker, Pauses};
use crate::bus::Bus;
use crate::cluster::Ownership;
use crate::mail::Mailer;
use crate::metrics::{Metrics, Taken};

/// The delivery worker: what it needs to run. See [`Worker::run`].
pub struct Worker {
    pub store: SharedStore,
    pub config: DeliveryConfig,
    pub clock: SharedClock,
    pub waker: DeliveryWaker,
    pub inbox: Inbox,
    pub pauses: Pauses,
    pub bus: Bus,
    pub metrics: Arc<Metrics>,
    /// For e-mail endpoints, when SMTP is set up.
    pub mailer: Option<Mailer>,
    /// The slots this node holds: it claims and attempts only theirs.
    pub ownership: Arc<Ownership>,
    pub shutdown: CancellationToken,
}

impl Worker {
    /// Runs until shutdown, then waits for the attempts under way (bounded by the timeout)
    /// and for the recorder to write their records.
    pub async fn run(self) {
        let mut run = Run::start(self).await;
        while let Some(wake) = run.next_wake().await {
            run.handle(wake).await;
        }
        run.finish().await;
    }
}

/// What woke the worker.
enum Wake {
    /// A claim returned.
    Claimed(Claimed),
    /// The lanes' parking and taking back committed.
    TakenBack(TakenBack),
    /// New deliveries are due now (ingest stored some, the recorder made some due, …).
    Woken,
    Deleted(EndpointId),
    /// Fresh deliveries from ingest.
    HandedOver(Vec<DueDelivery>),
    /// Deliveries to read: another node offered them, or a write's commit went unanswered.
    ToRead(ToRead),
    /// A read of deliveries to read returned.
    OffersRead(OffersRead),
    /// The recorder wrote these deliveries' records.
    Recorded(Vec<DeliveryId>),
    /// An attempt ended (or its task failed).
    Finished(Result<(tokio::task::Id, Finished), JoinError>),
    /// The time it slept until came: something may be due (or, when only the fallback's
    /// second is up, another node may have made some due unheard).
    Due {
        fallback_only: bool,
    },
    /// Nothing was queued or under way for `idle_release_after` after a burst.
    Idle,
}

/// What a claim took from the store, and what it asked for at what time.
struct Claimed {
    now: i64,
    want: usize,
    lease_until: i64,
    /// The unanswered claim this read back, if it was not a claim.
    read_back: Option<UnansweredClaim>,
    /// Started after the lanes' last take-back made their deliveries due.
    after_take_back: bool,
    claimed: StoreResult<Vec<DueDelivery>>,
}

type Pending<T> = Option<Pin<Box<dyn Future<Output = T> + Send>>>;

/// How long a worker sharing the database with other nodes goes at most without looking
/// for due deliveries, should a wake from another node be lost.
const FALLBACK_WAKE_MS: i64 = 1_000;

/// An attempt under way, to account for it should its task fail.
struct Running {
    delivery_id: DeliveryId,
    account_id: AccountId,
    endpoint_id: EndpointId,
    started_at: i64,
}

/// The worker while it runs.
struct Run {
    worker: Worker,
    resolver: guard::GuardedResolver,
    sender: Arc<Sender>,
    recorder: tokio::task::JoinHandle<()>,
    policy: BreakerPolicy,
    /// The least room worth a claim while deliveries are held: claiming one delivery per
    /// completion would cost a write transaction per delivery.
    min_claim: usize,
    lanes: Lanes,
    in_flight: JoinSet<Finished>,
    running: FastMap<tokio::task::Id, Running>,
    due: DueTimes,
    claiming: Pending<Claimed>,
    offers: Offers,
    /// Claims whose commit went unanswered: read back before the next claim.
    unanswered: UnansweredClaims,
    /// The deliveries whose records the recorder wrote.
    written: mpsc::UnboundedReceiver<Vec<DeliveryId>>,
    lane_writes: Pending<TakenBack>,
    /// Deliveries taken back are due, and no claim started since has returned.
    taken_back_unclaimed: bool,
    /// Whether anything was sent since the worker last let its connections go, and since
    /// when nothing is queued or under way.
    sent_since_release: bool,
    idle_since: Option<tokio::time::Instant>,
    /// The generation of the ownership the lanes hold deliveries for, and its slots.
    generation: u64,
    active_slots: BTreeSet<merpati_domain::slots::Slot>,
}

impl Run {
    async fn start(worker: Worker) -> Run {
        let config = &worker.config;
        let guard = guard::Guard::new(config.allowed_networks.clone());
        let resolver = guard::GuardedResolver::new(guard.clone(), config.resolve.clone());
        let (records, recorded) = mpsc::channel(RECORD_BATCH * 4);
        let (written_tx, written) = mpsc::unbounded_channel();
        // Owned here and awaited in `finish`: it ends once the worker and its attempts,
        // the senders of records, are gone.
        let recorder = tokio::spawn(
            Recorder {
                store: worker.store.clone(),
                waker: worker.waker.clone(),
                clock: worker.clock.clone(),
                bus: worker.bus.clone(),
                metrics: worker.metrics.clone(),
                disable_after_ms: config.disable_after.as_millis() as i64,
                records: recorded,
                ownership: worker.ownership.clone(),
                recorded: written_tx,
                keep_trying: LEASE_MARGIN,
                shutdown: worker.shutdown.clone(),
            }
            .run(),
        );
        let sender = Arc::new(Sender {
            client: send::client(config.timeout, resolver.clone()),
            guard,
            mailer: worker.mailer.clone(),
            records,
            clock: worker.clock.clone(),
            config: config.clone(),
        });
        let policy = BreakerPolicy {
            failures: config.breaker_failures,
            cooldown_ms: config.breaker_cooldown.as_millis() as i64,
            max_cooldown_ms: config.breaker_max_cooldown.as_millis() as i64,
        };
        let min_claim = (config.max_in_flight / 4).clamp(1, CLAIM_BATCH);
        let generation = worker.ownership.generation();
        let active_slots = worker.ownership.active().epochs.keys().copied().collect();
        let lanes = Lanes::new(worker.inbox.room.clone());
        Run {
            worker,
            resolver,
            sender,
            recorder,
            policy,
            min_claim,
            lanes,
            in_flight: JoinSet::new(),
            running: FastMap::default(),
            due: DueTimes::default(),
            claiming: None,
            offers: Offers::default(),
            unanswered: UnansweredClaims::default(),
            written,
            lane_writes: None,
            taken_back_unclaimed: false,
            sent_since_release: false,
            idle_since: None,
            generation,
            active_slots,
        }
    }

    fn now(&self) -> i64 {
        self.worker.clock.now_ms()
    }

    /// Does what can be done now (claims, starts, parks and takes back), then waits for
    /// what wakes the worker next; `None` at shutdown.
    async fn next_wake(&mut self) -> Option<Wake> {
        let (worth_claiming, lane_wake) = loop {
            if self.worker.shutdown.is_cancelled() {
                return None;
            }
            self.follow_ownership();
            let worth_claiming = self.claim();
            self.read_offers();
            let lane_wake = self.start_ready();
            self.write_for_lanes();
            // More is due (the claim was full, or a lane took parked deliveries back) and
            // there is room for it.
            if !self.more_to_claim() {
                break (worth_claiming, lane_wake);
            }
        };
        self.read_next_due().await;
        let store_wake = if worth_claiming || self.lanes.claimed.is_empty() {
            self.due.next()
        } else {
            None
        };
        let fallback = self
            .worker
            .ownership
            .shared()
            .then_some(self.due.polled_at + FALLBACK_WAKE_MS);
        let other = earliest(
            earliest(store_wake, lane_wake),
            earliest(self.lanes.probe_wake(self.now()), self.offers.retry_at()),
        );
        let wake_at = earliest(other, fallback);
        let fallback_only = fallback.is_some_and(|f| other.is_none_or(|o| f < o));
        let sleep = wake_at.map(|at| {
            let wait = (at - self.now()).max(0) as u64;
            tokio::time::sleep(Duration::from_millis(wait))
        });
        if !self.in_flight.is_empty() || !self.lanes.claimed.is_empty() {
            self.idle_since = None;
        } else if self.idle_since.is_none() {
            self.idle_since = Some(tokio::time::Instant::now());
        }
        let release_at = self
            .idle_since
            .filter(|_| self.sent_since_release)
            .map(|since| since + self.worker.config.idle_release_after);
        let (claiming, offers, written, lane_writes, in_flight) = (
            &mut self.claiming,
            &mut self.offers,
            &mut self.written,
            &mut self.lane_writes,
            &mut self.in_flight,
        );
        let (shutdown, waker, inbox) = (
            &self.worker.shutdown,
            &self.worker.waker,
            &mut self.worker.inbox,
        );
        tokio::select! {
            _ = shutdown.cancelled() => None,
            claimed = async { claiming.as_mut().expect("guarded").await },
                if claiming.is_some() => Some(Wake::Claimed(claimed)),
            read = offers.done(), if offers.reading() => Some(Wake::OffersRead(read)),
            taken = async { lane_writes.as_mut().expect("guarded").await },
                if lane_writes.is_some() => Some(Wake::TakenBack(taken)),
            _ = waker.woken() => Some(Wake::Woken),
            Some(endpoint) = inbox.deleted.recv() => Some(Wake::Deleted(endpoint)),
            Some(handed) = inbox.from_ingest.recv() => Some(Wake::HandedOver(handed)),
            Some(to_read) = inbox.to_read.recv() => Some(Wake::ToRead(to_read)),
            Some(ids) = written.recv() => Some(Wake::Recorded(ids)),
            Some(done) = in_flight.join_next_with_id(), if !in_flight.is_empty() => {
                Some(Wake::Finished(done))
            }
            _ = async { sleep.expect("guarded").await }, if sleep.is_some() => {
                Some(Wake::Due { fallback_only })
            }
            _ = tokio::time::sleep_until(release_at.unwrap_or_else(tokio::time::Instant::now)),
                if release_at.is_some() => Some(Wake::Idle),
        }
    }

    /// Starts a claim if deliveries may be due and there is room worth claiming; returns
    /// whether there was.
    fn claim(&mut self) -> bool {
        let room = self.lanes.room.available_permits();
        let worth_claiming = room >= self.min_claim || self.lanes.claimed.is_empty();
        let fence = self.worker.ownership.active();
        if fence.epochs.is_empty() {
            // Nothing can be claimed until this node holds a slot (which wakes it).
            self.due.known_due = false;
        }
        let want = if self.claiming.is_none() && self.due.known_due && room > 0 && worth_claiming {
            take_room(&self.lanes.room, room.min(CLAIM_BATCH))
        } else {
            0
        };
        if want > 0 {
            // The claim commits while the worker goes on: under load a write waits its
            // turn behind others for many milliseconds, and the attempts that end
            // meanwhile start what the lanes already hold.
            let store = self.worker.store.clone();
            let now = self.now();
            let lease_until = now + lease(&self.worker.config).as_millis() as i64;
            let after_take_back = self.taken_back_unclaimed;
            // The claim answers what was known due when it started; a wake, a timer or
            // a lane's take-back while it commits sets this again and is not lost.
            self.due.known_due = false;
            let (read_back, left_due_at) = self.unanswered.next(now);
            if let Some(at) = left_due_at {
                self.due.schedule(at);
            }
            self.claiming = Some(Box::pin(async move {
                let claimed = match read_back {
                    // What an unanswered claim took, if it was made, before anything new.
                    Some(c) => {
                        store
                            .read_claimed(fence, c.claimed_at, c.lease_until, want)
                            .await
                    }
                    None => store.claim_due(fence, now, want, lease_until).await,
                };
                Claimed {
                    now,
                    want,
                    lease_until,
                    read_back,
                    after_take_back,
                    claimed,
                }
            }));
        }
        worth_claiming
    }

    /// Starts a read of the deliveries other nodes offered, in the room there is for them;
    /// those that wait too long for room are claimed once their offer runs out.
    fn read_offers(&mut self) {
        let now = self.now();
        let store = &self.worker.store;
        let left_due_at = self.offers.read(&self.lanes.room, now, |asked| {
            Box::pin(take_offered(store.clone(), asked, now))
        });
        if let Some(at) = left_due_at {
            self.due.schedule(at);
        }
    }

    /// Starts what the lanes allow; returns when a lane held back can go next. Nothing
    /// starts while the node cannot be sure its lease holds: the slots may be another's.
    fn start_ready(&mut self) -> Option<i64> {
        let now = self.now();
        self.lanes.trim(now);
        if !self.worker.ownership.sure() {
            return None;
        }
        let ownership = &self.worker.ownership;
        let under_way = self.in_flight.len();
        let (in_flight, running, sender) = (&mut self.in_flight, &mut self.running, &self.sender);
        let lane_wake = self.lanes.start_ready(
            now,
            under_way,
            self.worker.config.max_in_flight,
            |job, prepared| {
                let key = Running {
                    delivery_id: job.delivery_id,
                    account_id: job.endpoint.account_id.clone(),
                    endpoint_id: job.endpoint.id.clone(),
                    started_at: now,
                };
                ownership.attempt_started(&job.endpoint.id);
                let task = in_flight.spawn(deliver(sender.clone(), job, prepared, now));
                running.insert(task.id(), key);
            },
        );
        self.sent_since_release |= !self.in_flight.is_empty();
        lane_wake
    }

    /// Parking and taking back are writes too, and wait their turn behind ingest's like a
    /// claim: they commit while the worker goes on, one set at a time. Lanes ask for parked
    /// deliveries back only once a claim has looked for the last ones they were given back:
    /// until then they look caught up, and would ask again.
    fn write_for_lanes(&mut self) {
        if self.lane_writes.is_some() {
            return;
        }
        let now = self.now();
        let take_back = if self.taken_back_unclaimed {
            Vec::new()
        } else {
            self.lanes.take_back(now)
        };
        let parked = self.lanes.take_parked();
        let marks = std::mem::take(&mut self.lanes.to_mark);
        if take_back.is_empty() && parked.is_empty() && marks.is_empty() {
            return;
        }
        if let Some(at) = parked.iter().map(|p| p.1).min() {
            self.due.schedule(at);
        }
        self.lane_writes = Some(Box::pin(lane_writes::write(
            self.worker.store.clone(),
            self.worker.ownership.fence(),
            now,
            take_back,
            parked,
            marks,
        )));
    }

    fn more_to_claim(&self) -> bool {
        let room = self.lanes.room.available_permits();
        self.claiming.is_none()
            && self.due.known_due
            && room > 0
            && (room >= self.min_claim || self.lanes.claimed.is_empty())
    }

    /// The store is asked when the next delivery is due only when what the worker knows
    /// may be out of date (deliveries it did not schedule itself: a lease run out, another
    /// process's writes), and at most ten times a second while busy: the worker learns of
    /// its own retries and parks as it makes them.
    async fn read_next_due(&mut self) {
        let now = self.now();
        if !self.due.stale || !(self.lanes.claimed.is_empty() || now - self.due.read_at >= 100) {
            return;
        }
        self.due.stale = false;
        self.due.read_at = now;
        let fence = self.worker.ownership.active();
        match self.worker.store.next_due_at(fence).await {
            Ok(at) => self.due.read(at),
            Err(e) => {
                tracing::error!(error = %e, "could not read the next due time");
                self.due.look_again_in_a_second(now);
            }
        }
    }

    async fn handle(&mut self, wake: Wake) {
        match wake {
            Wake::Claimed(claimed) => self.claimed(claimed),
            Wake::TakenBack(taken) => self.taken_back(taken),
            Wake::Woken => self.due.known_due = true,
            Wake::Deleted(endpoint) => self.lanes.forget(&endpoint, &self.worker.pauses),
            Wake::HandedOver(handed) => {
                let now = self.now();
                let mut handed = Some(handed);
                while let Some(jobs) = handed
                    .take()
                    .or_else(|| self.worker.inbox.from_ingest.try_recv().ok())
                {
                    self.take_all(Taken::Handed, jobs, now);
                }
            }
            Wake::ToRead(to_read) => {
                let now = self.now();
                let mut to_read = Some(to_read);
                while let Some(heard) = to_read
                    .take()
                    .or_else(|| self.worker.inbox.to_read.try_recv().ok())
                {
                    self.offers.heard(heard, now);
                }
            }
            Wake::OffersRead(read) => self.offers_read(read),
            Wake::Recorded(written) => {
                let now = self.now();
                self.lanes.recorded(&written, now);
                while let Ok(more) = self.written.try_recv() {
                    self.lanes.recorded(&more, now);
                }
            }
            Wake::Finished(done) => {
                // Take every attempt that has ended, then step once for them all.
                let mut done = Some(done);
                while let Some(result) = done
                    .take()
                    .or_else(|| self.in_flight.try_join_next_with_id())
                {
                    self.finished(result);
                }
            }
            Wake::Due { fallback_only } => {
                self.due.polled_at = self.now();
                self.due.stale = true;
                if fallback_only {
                    // Only the fallback: the store is read, and a claim made only if it
                    // has something due.
                    self.due.read_at = i64::MIN / 2;
                } else {
                    self.due.known_due = true;
                }
            }
            Wake::Idle => {
                // A burst is over: its connections (kept alive, each with its buffers)
                // close with the old client, and the memory it took goes back.
                self.sent_since_release = false;
                self.sender = Arc::new(self.sender.with_new_client(self.resolver.clone()));
                self.lanes.prepared.clear();
                release_memory(&self.worker.store).await;
            }
        }
    }

    /// What a claim, a read of offers or ingest brought joins its lanes, and is counted,
    /// unless the worker holds it already, or its slot stopped being this node's meanwhile:
    /// then it is let go, and its lease is voided when the slot is given back or taken over.
    fn take_all(&mut self, how: Taken, jobs: Vec<DueDelivery>, now: i64) {
        let mut kept = 0;
        for job in jobs {
            if self.worker.ownership.takes(&job.endpoint.id) {
                kept += usize::from(self.lanes.take(
                    job,
                    &self.worker.config,
                    now,
                    &self.worker.pauses,
                ));
            } else {
                self.lanes.room.add_permits(1);
            }
        }
        self.worker.metrics.taken(how, kept);
    }

    /// When the slots held changed: the lanes of endpoints whose slot is no longer active
    /// here are forgotten (what they held is due again once the slot is given back or
    /// taken over), and the ownership is told nothing of them starts from now on.
    fn follow_ownership(&mut self) {
        let ownership = self.worker.ownership.clone();
        let generation = ownership.generation();
        if generation == self.generation {
            return;
        }
        self.generation = generation;
        let active: BTreeSet<_> = ownership.active().epochs.keys().copied().collect();
        let now = self.now();
        self.lanes
            .slots_taken(active.difference(&self.active_slots).copied(), now);
        self.active_slots = active;
        let gone: Vec<EndpointId> = self
            .lanes
            .endpoints()
            .filter(|e| !ownership.takes(e))
            .cloned()
            .collect();
        if !gone.is_empty() {
            tracing::info!(
                endpoints = gone.len(),
                "lanes of slots no longer held here let go"
            );
        }
        for endpoint in gone {
            self.lanes.forget(&endpoint, &self.worker.pauses);
        }
        ownership.applied(generation);
        self.due.known_due = true;
        self.due.stale = true;
    }

    fn claimed(&mut self, claimed: Claimed) {
        let Claimed {
            now,
            want,
            lease_until,
            read_back,
            after_take_back,
            claimed,
        } = claimed;
        self.claiming = None;
        if read_back.is_none() {
            self.taken_back_unclaimed &= !after_take_back;
        }
        match claimed {
            Ok(jobs) if read_back.is_some() => {
                // The claim that was due when this one started comes next.
                self.due.known_due = true;
                self.lanes.room.add_permits(want - jobs.len());
                self.take_all(Taken::Claimed, jobs, now);
            }
            Ok(jobs) => {
                self.due.known_due |= jobs.len() == want;
                self.lanes.room.add_permits(want - jobs.len());
                if !self.due.known_due {
                    self.due.caught_up(now);
                }
                self.take_all(Taken::Claimed, jobs, now);
            }
            Err(e) => {
                self.lanes.room.add_permits(want);
                tracing::error!(error = %e, "could not claim deliveries");
                match (read_back, e) {
                    (Some(claim), _) => self.unanswered.again(claim),
                    (None, StoreError::Unanswered(_)) => self.unanswered.add(UnansweredClaim {
                        claimed_at: now,
                        lease_until,
                        want,
                    }),
                    (None, _) => {}
                }
                // Try again in a second rather than at once.
                self.due.look_again_in_a_second(now);
            }
        }
    }

    fn offers_read(
        &mut self,
        OffersRead {
            now,
            room,
            asked,
            read,
        }: OffersRead,
    ) {
        match read {
            Ok(jobs) => {
                self.lanes.room.add_permits(room - jobs.len());
                self.take_all(Taken::Offered, jobs, now);
            }
            Err(e) => {
                self.lanes.room.add_permits(room);
                tracing::warn!(error = %e, "could not read the deliveries to read");
                self.offers.read_failed(asked, now);
            }
        }
    }

    fn taken_back(&mut self, TakenBack { now, lanes }: TakenBack) {
        self.lane_writes = None;
        for (asked, taken) in lanes {
            if taken > 0 {
                self.due.known_due = true;
                self.taken_back_unclaimed = true;
            }
            if taken < asked.limit {
                self.lanes
                    .nothing_parked(&asked.endpoint_id, asked.parked_until, now);
            }
        }
    }

    fn finished(&mut self, result: Result<(tokio::task::Id, Finished), JoinError>) {
        let finished = match result {
            Ok((task, f)) => {
                self.running.remove(&task);
                f
            }
            Err(e) => {
                tracing::error!(error = %e, "delivery task failed");
                // Its delivery is due again when its lease runs out.
                self.due.stale = true;
                let Some(r) = self.running.remove(&e.id()) else {
                    return;
                };
                // Its record was never sent.
                self.worker.ownership.attempt_recorded(&r.endpoint_id);
                Finished {
                    delivery_id: r.delivery_id,
                    account_id: r.account_id,
                    endpoint_id: r.endpoint_id,
                    started_at: r.started_at,
                    health: Health::Unknown,
                    took_ms: 0,
                    retry_at: None,
                    recorded_attempt: None,
                }
            }
        };
        if let Some(at) = finished.retry_at {
            self.due.schedule(at);
        }
        let now = self.now();
        self.lanes
            .finish(finished, now, &self.policy, &self.worker.pauses);
    }

    /// Attempts under way finish (each is bounded by the timeout) and are recorded; one
    /// that does not is left leased, and is retried after the next start. What waits in
    /// the lanes keeps its lease and is claimed again after the next start.
    async fn finish(mut self) {
        let grace = self.worker.config.timeout + Duration::from_secs(1);
        let _ = tokio::time::timeout(grace, async {
            while self.in_flight.join_next().await.is_some() {}
        })
        .await;
        self.in_flight.shutdown().await;
        // The last sender goes with the attempts; the recorder writes what is left and ends.
        drop(self.sender);
        if let Err(e) = self.recorder.await {
            tracing::error!(error = %e, "the attempt recorder failed");
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
