//! One endpoint's lane in the worker: its queue of claimed deliveries, its limits (concurrency
//! and requests per second), its circuit breaker, and how far ahead to park what it cannot
//! take. Pure: time is passed in, so every rule is unit-tested without a network or a sleep.

use std::collections::VecDeque;

use merpati_domain::delivery::DueDelivery;
use merpati_domain::endpoint::StoredBreaker;
use merpati_domain::retry::AttemptResult;

/// The limits an endpoint asks for, or the configured defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub concurrency: usize,
    /// Requests per second; `None` for no limit.
    pub rate: Option<u32>,
}

/// The breaker's settings.
#[derive(Debug, Clone, Copy)]
pub struct BreakerPolicy {
    /// Unhealthy answers in a row that open it.
    pub failures: u32,
    /// The first pause; each failed probe doubles it, up to `max_cooldown_ms`.
    pub cooldown_ms: i64,
    pub max_cooldown_ms: i64,
}

/// What an attempt says about the endpoint (not about the delivery).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// It answered, even with a client error: it is up.
    Up,
    /// No answer, a timeout, a server error, or "too many requests".
    Down,
    /// Nothing learnt (the request was never sent).
    Unknown,
}

impl Health {
    pub fn of(result: &AttemptResult) -> Health {
        match result {
            AttemptResult::Status(s) if *s >= 500 || *s == 429 || *s == 408 => Health::Down,
            AttemptResult::Status(_) => Health::Up,
            AttemptResult::NoAnswer => Health::Down,
            AttemptResult::Unsendable => Health::Unknown,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breaker {
    Closed {
        failures: u32,
    },
    /// Nothing is sent until `until`.
    Open {
        until: i64,
        cooldown_ms: i64,
    },
    /// One probe may go; its outcome, and only its outcome, closes or reopens the breaker.
    HalfOpen {
        /// When the probe under way started.
        probe: Option<i64>,
        cooldown_ms: i64,
    },
}

/// Whether the lane may start an attempt now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Go,
    /// Its rate limit or breaker lets the next one go at this time.
    At(i64),
    /// Waiting for an attempt under way (concurrency limit, or the breaker's probe).
    Busy,
}

/// How long a delivery may wait in a lane's queue before it is parked in the store instead:
/// deliveries the lane cannot start soon must not hold the worker's claims.
const QUEUE_HORIZON_MS: f64 = 2_000.0;
/// A lane that can start fewer deliveries a second than this is slow.
const SLOW_RATE: f64 = 1000.0;
/// A lane not heard from yet is slow once an attempt has been under way this long.
const UNKNOWN_SLOW_MS: i64 = 300;
/// An attempt under way this long (or four times the usual, if more) means the receiver
/// has slowed down.
const HANGING_MS: f64 = 3_000.0;
/// A lane known to be fast is suspected of hanging once an attempt has been under way this
/// long (or eight times its usual latency, if more) and it has not answered for as long,
/// while other lanes did: until it answers or is found out (see [`HANGING_MS`]) it queues
/// no more than a lane not heard from yet, so as not to take the worker's room meanwhile.
/// Other lanes' answers are the proof that the silence is the receiver's and not a pause of
/// merpati's own (cores busy with a backlog), which would make every lane look silent.
const SUSPECT_MS: f64 = 200.0;
/// The latency assumed of an endpoint not heard from yet.
const FIRST_GUESS_MS: f64 = 200.0;
/// The most parked deliveries a lane takes back at once.
const MAX_TAKE_BACK: usize = 256;
/// How far a lane not heard from yet parks what it cannot take.
const UNKNOWN_PACE_PARK_MS: i64 = 30_000;
/// Parked deliveries are looked at again after this at the earliest.
const MIN_PARK_MS: i64 = 1000;
/// Parked deliveries are looked at again after this at the latest, in case the endpoint
/// became faster than its lane estimated.
pub const MAX_PARK_MS: i64 = 10 * 60 * 1000;

#[derive(Debug)]
pub struct Lane {
    pub queue: VecDeque<DueDelivery>,
    pub in_flight: usize,
    limits: Limits,
    tokens: f64,
    refilled_at: i64,
    breaker: Breaker,
    /// Moving average of attempt durations.
    avg_ms: f64,
    /// Start times of the attempts under way, oldest first.
    started: VecDeque<i64>,
    /// The latest slot handed to a parked delivery.
    parked_until: i64,
    /// The end of the breaker's pause for which one delivery was parked, to come back
    /// then as its probe.
    probe_parked_for: Option<i64>,
    /// Whether any attempt has ended: until one has, the lane's pace is unknown.
    heard_back: bool,
    /// When an attempt last ended (or the lane was made).
    last_answer_at: i64,
}

impl Lane {
    pub fn new(limits: Limits, now: i64) -> Lane {
        Lane {
            queue: VecDeque::new(),
            in_flight: 0,
            limits,
            tokens: burst(limits.rate),
            refilled_at: now,
            breaker: Breaker::Closed { failures: 0 },
            avg_ms: FIRST_GUESS_MS,
            started: VecDeque::new(),
            parked_until: now,
            probe_parked_for: None,
            heard_back: false,
            last_answer_at: now,
        }
    }

    /// A lane that starts with no burst: another node may have sent to the endpoint within
    /// the last second (its slot was just taken over).
    pub fn without_burst(mut self) -> Lane {
        self.tokens = 0.0;
        self
    }

    /// A lane whose breaker starts as the endpoint's last owner left it: open until its
    /// time, or, once that passed, letting one probe decide.
    pub fn with_breaker(mut self, stored: Option<StoredBreaker>, now: i64) -> Lane {
        self.breaker = match stored {
            None => Breaker::Closed { failures: 0 },
            Some(b) if now < b.until => Breaker::Open {
                until: b.until,
                cooldown_ms: b.cooldown_ms,
            },
            Some(b) => Breaker::HalfOpen {
                probe: None,
                cooldown_ms: b.cooldown_ms,
            },
        };
        self
    }

    /// A lane for an endpoint whose pace an earlier lane learnt (its usual latency, in ms).
    pub fn remembering(mut self, avg_ms: Option<f64>) -> Lane {
        if let Some(avg_ms) = avg_ms {
            self.avg_ms = avg_ms;
            self.heard_back = true;
        }
        self
    }

    /// The endpoint's usual latency, once an attempt has ended.
    pub fn pace(&self) -> Option<f64> {
        self.heard_back.then_some(self.avg_ms)
    }

    pub fn breaker(&self) -> Breaker {
        self.breaker
    }

    /// Limits follow the endpoint's latest settings.
    pub fn set_limits(&mut self, limits: Limits) {
        if limits.rate != self.limits.rate {
            self.tokens = self.tokens.min(burst(limits.rate));
        }
        self.limits = limits;
    }

    /// Whether the next queued delivery may start at `now`.
    pub fn gate(&mut self, now: i64) -> Gate {
        match self.breaker {
            Breaker::Open { until, cooldown_ms } => {
                if now < until {
                    return Gate::At(until);
                }
                self.breaker = Breaker::HalfOpen {
                    probe: None,
                    cooldown_ms,
                };
            }
            Breaker::HalfOpen { probe: Some(_), .. } => return Gate::Busy,
            _ => {}
        }
        if self.in_flight >= self.limits.concurrency {
            return Gate::Busy;
        }
        if let Some(rate) = self.limits.rate {
            self.refill(now, rate);
            if self.tokens < 1.0 {
                let wait = ((1.0 - self.tokens) * 1000.0 / f64::from(rate)).ceil() as i64;
                return Gate::At(now + wait.max(1));
            }
        }
        Gate::Go
    }

    fn refill(&mut self, now: i64, rate: u32) {
        let elapsed = (now - self.refilled_at).max(0) as f64;
        self.tokens = (self.tokens + elapsed * f64::from(rate) / 1000.0).min(burst(Some(rate)));
        self.refilled_at = now;
    }

    /// An attempt starts (after [`Lane::gate`] said `Go`).
    pub fn start(&mut self, now: i64) {
        if self.limits.rate.is_some() {
            self.tokens -= 1.0;
        }
        if let Breaker::HalfOpen { cooldown_ms, .. } = self.breaker {
            self.breaker = Breaker::HalfOpen {
                probe: Some(now),
                cooldown_ms,
            };
        }
        self.in_flight += 1;
        self.started.push_back(now);
    }

    /// An attempt started at `started_at` ended at `now`, after the receiver took `took_ms`.
    pub fn finish(
        &mut self,
        started_at: i64,
        now: i64,
        took_ms: i64,
        health: Health,
        policy: &BreakerPolicy,
    ) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if let Some(i) = self.started.iter().position(|t| *t == started_at) {
            self.started.remove(i);
        } else {
            self.started.pop_front();
        }
        let took = took_ms.max(0) as f64;
        self.heard_back = true;
        self.last_answer_at = self.last_answer_at.max(now);
        self.avg_ms = 0.8 * self.avg_ms + 0.2 * took;
        self.breaker = match (self.breaker, health) {
            // Once open, only the probe counts. What attempts begun before say is old news:
            // a receiver going down for a restart still answers the requests it has, and
            // those answers must not let everything queued go out to fail (and spend an
            // attempt each) before the probe has even been sent.
            (open @ Breaker::Open { .. }, _) => open,
            (half @ Breaker::HalfOpen { probe, .. }, _)
                if probe.is_none_or(|probe_started| started_at < probe_started) =>
            {
                half
            }
            // A probe that was never sent proves nothing: let another go.
            (Breaker::HalfOpen { cooldown_ms, .. }, Health::Unknown) => Breaker::HalfOpen {
                probe: None,
                cooldown_ms,
            },
            (closed @ Breaker::Closed { .. }, Health::Unknown) => closed,
            (_, Health::Up) => Breaker::Closed { failures: 0 },
            (Breaker::Closed { failures }, Health::Down) => {
                let failures = failures + 1;
                if failures >= policy.failures.max(1) {
                    Breaker::Open {
                        until: now + policy.cooldown_ms,
                        cooldown_ms: policy.cooldown_ms,
                    }
                } else {
                    Breaker::Closed { failures }
                }
            }
            (Breaker::HalfOpen { cooldown_ms, .. }, Health::Down) => {
                let cooldown_ms = (cooldown_ms * 2).min(policy.max_cooldown_ms.max(1));
                Breaker::Open {
                    until: now + cooldown_ms,
                    cooldown_ms,
                }
            }
        };
    }

    /// Deliveries per second the lane can be expected to start: its concurrency over its
    /// receiver's latency, capped by the rate limit. An attempt under way for much longer
    /// than usual counts as the latency, so that a receiver that starts hanging is found
    /// out before its attempts time out; "much longer" leaves out the pauses of merpati's
    /// own making under load (a slow commit), which say nothing about the receiver.
    pub fn drain_rate(&self, now: i64) -> f64 {
        let oldest = self
            .started
            .front()
            .map_or(0.0, |t| (now - t).max(0) as f64);
        let hanging = oldest > HANGING_MS.max(4.0 * self.avg_ms);
        let latency = if hanging { oldest } else { self.avg_ms }.max(1.0);
        let by_concurrency = self.limits.concurrency as f64 * 1000.0 / latency;
        match self.limits.rate {
            Some(rate) => by_concurrency.min(f64::from(rate)),
            None => by_concurrency,
        }
    }

    /// How many deliveries may wait in the queue: as many as it can start at once, and
    /// what it can start within the horizon after those; before any attempt has ended, a
    /// quarter of its concurrency, from the first delivery on, so that an endpoint that
    /// turns out to hang has not taken the room others need while it was found out (a
    /// fast one takes back what it parked as soon as it answers). An open breaker starts
    /// nothing, so it queues nothing. A lane known not to be slow queues whatever it is
    /// given: parking is for lanes whose own pace holds them back, never for a busy
    /// healthy one. A lane suspected of hanging (see [`SUSPECT_MS`]; `answered_anywhere_at`
    /// is when any of the worker's lanes last heard an answer) queues as one not heard from
    /// yet.
    pub fn queue_cap(&self, now: i64, answered_anywhere_at: i64) -> usize {
        let cap = self.cap_by_pace(now);
        if cap == usize::MAX && self.suspected_of_hanging(now, answered_anywhere_at) {
            self.free() + (self.limits.concurrency / 4).max(1)
        } else {
            cap
        }
    }

    /// [`Lane::queue_cap`] by what the lane knows of its own pace alone.
    fn cap_by_pace(&self, now: i64) -> usize {
        if matches!(self.breaker, Breaker::Open { until, .. } if now < until) {
            return 0;
        }
        if self.heard_back && !self.is_slow(now) {
            return usize::MAX;
        }
        let ahead = if self.heard_back {
            (self.drain_rate(now) * QUEUE_HORIZON_MS / 1000.0).max(1.0) as usize
        } else {
            (self.limits.concurrency / 4).max(1)
        };
        self.free() + ahead
    }

    /// How many it could start at once: its concurrency left, and its rate limit's tokens.
    fn free(&self) -> usize {
        let free = self.limits.concurrency.saturating_sub(self.in_flight);
        if self.limits.rate.is_some() {
            free.min(self.tokens.max(0.0) as usize)
        } else {
            free
        }
    }

    /// An attempt has been under way far longer than this endpoint usually takes, though not
    /// yet long enough to count as its latency; it has not answered for as long; and other
    /// lanes answered in the second half of that time (see [`SUSPECT_MS`]).
    fn suspected_of_hanging(&self, now: i64, answered_anywhere_at: i64) -> bool {
        let long = SUSPECT_MS.max(8.0 * self.avg_ms);
        let silent_for = (now - self.last_answer_at) as f64;
        let others_answered = now.saturating_sub(answered_anywhere_at) as f64 <= long / 2.0
            && answered_anywhere_at > self.last_answer_at;
        silent_for >= long
            && others_answered
            && self
                .started
                .front()
                .is_some_and(|t| (now - t) as f64 >= long)
    }

    /// Held back by its own pace: paused by its breaker, hanging before it ever answered,
    /// or able to start fewer than [`SLOW_RATE`] deliveries a second (its latency, its
    /// concurrency or its rate limit).
    pub fn is_slow(&self, now: i64) -> bool {
        if matches!(self.breaker, Breaker::Open { until, .. } if now < until) {
            return true;
        }
        if self.heard_back {
            return self.drain_rate(now) < SLOW_RATE;
        }
        let oldest = self.started.front().map_or(0, |t| (now - t).max(0));
        oldest >= UNKNOWN_SLOW_MS || self.limits.rate.is_some_and(|r| f64::from(r) < SLOW_RATE)
    }

    /// When a delivery the lane cannot take now should be looked at again: when the breaker
    /// lets a probe go, or the next free slot at the lane's pace.
    pub fn park_at(&mut self, now: i64) -> i64 {
        // Parked deliveries come back in the claims' order, before newer ones: coming back
        // at once, they would crowd out everyone else's. The lane takes them back sooner
        // if it catches up.
        let soonest = now + MIN_PARK_MS;
        let at = match self.breaker {
            // One comes back when the pause ends, to be the probe. The rest wait until the
            // probe has closed the breaker and the lane takes them back: coming back with
            // it, they would be claimed only to be parked again, all of them, at every
            // pause, while everyone else's deliveries wait behind them.
            Breaker::Open { until, .. } if now < until => {
                if self.probe_parked_for == Some(until) {
                    now + MAX_PARK_MS
                } else {
                    self.probe_parked_for = Some(until);
                    until
                }
            }
            // Its pace is unknown. Hanging: far enough not to come back again and again; if
            // it answers, it takes them back as soon as it has room. Merely not heard from
            // yet (a burst before its first answer): back soon, whatever it turns out to be.
            _ if !self.heard_back && self.is_slow(now) => now + UNKNOWN_PACE_PARK_MS,
            _ if !self.heard_back => soonest,
            _ => {
                let per_item = 1000.0 / self.drain_rate(now).max(0.001);
                let queued_until = now + (self.queue.len() as f64 * per_item) as i64;
                soonest.max(self.parked_until.max(queued_until) + per_item.ceil() as i64)
            }
        };
        let at = at.min(now + MAX_PARK_MS);
        self.parked_until = self.parked_until.max(at);
        at
    }

    /// A lane that parked deliveries and has caught up since (nothing queued, room to
    /// start more, breaker closed) asks for this many of them back now: its estimate of
    /// its own pace must not hold back an endpoint that became fast again.
    ///
    /// A lane paused by its breaker with none parked to come back as its probe (the last
    /// probe's delivery failed for good, say) asks for one of its parked deliveries back
    /// when the pause ends.
    pub fn take_back(&mut self, now: i64, answered_anywhere_at: i64) -> Option<usize> {
        if let Some(at) = self.probe_wanted_at() {
            if now < at {
                return None;
            }
            self.probe_parked_for = Some(at);
            return Some(1);
        }
        let caught_up = self.parked_until > now
            && self.queue.is_empty()
            && self.in_flight < self.limits.concurrency
            && matches!(self.breaker, Breaker::Closed { .. });
        if !caught_up {
            return None;
        }
        Some(self.queue_cap(now, answered_anywhere_at).min(MAX_TAKE_BACK))
    }

    /// When the breaker's pause ends, if the lane then needs one of its parked deliveries
    /// back to probe with: it has some, and none was parked to come back then.
    pub fn probe_wanted_at(&self) -> Option<i64> {
        match self.breaker {
            Breaker::Open { until, .. }
                if self.probe_parked_for != Some(until)
                    && self.parked_until > until
                    && self.queue.is_empty() =>
            {
                Some(until)
            }
            _ => None,
        }
    }

    /// The latest slot handed to a parked delivery.
    pub fn parked_until(&self) -> i64 {
        self.parked_until
    }

    /// The store held nothing more that this lane parked when asked at `now`, by which
    /// time the latest it had parked was due at `parked_until`. Had it parked more since,
    /// those are still in the store.
    pub fn nothing_parked(&mut self, parked_until: i64, now: i64) {
        if self.parked_until == parked_until {
            self.parked_until = self.parked_until.min(now);
        }
    }

    /// Nothing queued, under way or parked, and nothing to remember.
    pub fn is_idle(&self, now: i64) -> bool {
        self.parked_until <= now
            && self.queue.is_empty()
            && self.in_flight == 0
            && self.breaker == Breaker::Closed { failures: 0 }
    }
}

/// The window a rate limit counts in.
pub(crate) const RATE_WINDOW_MS: i64 = 1000;

/// A rate limit lets at most this many requests go at once (50 ms worth, at least one).
fn burst(rate: Option<u32>) -> f64 {
    rate.map_or(0.0, |r| (f64::from(r) / 20.0).max(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No other lane has answered: nothing is suspected of hanging.
    const NO_NEWS: i64 = i64::MIN;

    const POLICY: BreakerPolicy = BreakerPolicy {
        failures: 3,
        cooldown_ms: 1000,
        max_cooldown_ms: 4000,
    };

    fn lane(concurrency: usize, rate: Option<u32>) -> Lane {
        Lane::new(Limits { concurrency, rate }, 0)
    }

    #[test]
    fn a_lane_starts_with_the_breaker_its_endpoints_last_owner_kept() {
        let mut l = lane(1, None);
        for at in 0..3 {
            l.start(at);
            l.finish(at, at + 1, 1, Health::Down, &POLICY);
        }
        assert_eq!(
            l.breaker(),
            Breaker::Open {
                until: 1_003,
                cooldown_ms: 1000
            }
        );
        let kept = Some(StoredBreaker {
            until: 1_003,
            cooldown_ms: 1000,
        });
        let mut taken_over = lane(1, None).with_breaker(kept, 500);
        assert_eq!(taken_over.gate(500), Gate::At(1_003), "still open");
        let mut later = lane(1, None).with_breaker(kept, 2_000);
        assert_eq!(later.gate(2_000), Gate::Go, "its probe");
        later.start(2_000);
        assert_eq!(later.gate(2_000), Gate::Busy, "one probe only");
        later.finish(2_000, 2_010, 10, Health::Down, &POLICY);
        assert_eq!(
            later.breaker(),
            Breaker::Open {
                until: 4_010,
                cooldown_ms: 2000
            },
            "a failed probe doubles the pause it took over"
        );
        let closed = lane(1, None).with_breaker(None, 0);
        assert_eq!(closed.breaker(), Breaker::Closed { failures: 0 });
    }

    #[test]
    fn concurrency_limit_holds_the_next_start() {
        let mut l = lane(2, None);
        assert_eq!(l.gate(0), Gate::Go);
        l.start(0);
        l.start(0);
        assert_eq!(l.gate(0), Gate::Busy);
        l.finish(0, 5, 5, Health::Up, &POLICY);
        assert_eq!(l.gate(5), Gate::Go);
    }

    #[test]
    fn rate_limit_spaces_requests() {
        let mut l = lane(100, Some(10));
        // A burst of one, then one every 100 ms.
        assert_eq!(l.gate(0), Gate::Go);
        l.start(0);
        assert_eq!(l.gate(0), Gate::At(100));
        assert_eq!(l.gate(50), Gate::At(100));
        assert_eq!(l.gate(100), Gate::Go);
        l.start(100);
        assert_eq!(l.gate(100), Gate::At(200));
        // Idle time earns no more than the burst.
        assert_eq!(l.gate(10_000), Gate::Go);
        l.start(10_000);
        assert_eq!(l.gate(10_000), Gate::At(10_100));
    }

    #[test]
    fn started_requests_never_exceed_the_rate_over_a_window() {
        let mut l = lane(1000, Some(200));
        let mut started = Vec::new();
        let mut now = 0;
        while now < 5_000 {
            match l.gate(now) {
                Gate::Go => {
                    l.start(now);
                    l.finish(now, now, 0, Health::Up, &POLICY);
                    started.push(now);
                }
                Gate::At(t) => now = t,
                Gate::Busy => unreachable!(),
            }
        }
        // 200/s with a burst of 10: any one second holds at most 210.
        for (i, t) in started.iter().enumerate() {
            let in_window = started[i..].iter().take_while(|u| **u < t + 1000).count();
            assert!(in_window <= 210, "{in_window} in the second after {t}");
        }
        assert!(started.len() >= 990, "{}", started.len());
    }

    #[test]
    fn breaker_opens_after_failures_in_a_row_and_probes_with_one_request() {
        let mut l = lane(10, None);
        for t in 0..2 {
            l.start(t);
            l.finish(t, t, 0, Health::Down, &POLICY);
        }
        // A success in between resets the count.
        l.start(2);
        l.finish(2, 2, 0, Health::Up, &POLICY);
        for t in 3..6 {
            l.start(t);
            l.finish(t, t, 0, Health::Down, &POLICY);
        }
        assert_eq!(
            l.breaker(),
            Breaker::Open {
                until: 1005,
                cooldown_ms: 1000
            }
        );
        assert_eq!(l.gate(500), Gate::At(1005));
        assert_eq!(l.queue_cap(500, NO_NEWS), 0);
        assert_eq!(l.park_at(500), 1005);
        // One probe at a time.
        assert_eq!(l.gate(1005), Gate::Go);
        l.start(1005);
        assert_eq!(l.gate(1005), Gate::Busy);
        // It fails: twice the pause.
        l.finish(1005, 1010, 5, Health::Down, &POLICY);
        assert_eq!(
            l.breaker(),
            Breaker::Open {
                until: 3010,
                cooldown_ms: 2000
            }
        );
        assert_eq!(l.gate(3010), Gate::Go);
        l.start(3010);
        l.finish(3010, 3011, 1, Health::Down, &POLICY);
        l.gate(7011);
        l.start(7011);
        l.finish(7011, 7012, 1, Health::Down, &POLICY);
        // Never longer than the most.
        assert_eq!(
            l.breaker(),
            Breaker::Open {
                until: 11012,
                cooldown_ms: 4000
            }
        );
        // A probe that works closes it.
        l.gate(11012);
        l.start(11012);
        l.finish(11012, 11013, 1, Health::Up, &POLICY);
        assert_eq!(l.breaker(), Breaker::Closed { failures: 0 });
        assert!(l.is_idle(11013));
    }

    /// A lane whose breaker three failures opened at 2, until 1002.
    fn opened_at_2(concurrency: usize) -> Lane {
        let mut l = lane(concurrency, None);
        for t in 0..3 {
            l.start(t);
            l.finish(t, t, 0, Health::Down, &POLICY);
        }
        l
    }

    #[test]
    fn behind_an_open_breaker_one_delivery_comes_back_as_the_probe_and_the_rest_wait() {
        let mut l = opened_at_2(10);
        let until = 1002;
        assert!(matches!(l.breaker(), Breaker::Open { until: u, .. } if u == until));
        assert_eq!(l.park_at(500), until, "the probe");
        let rest: Vec<i64> = (0..3).map(|i| l.park_at(600 + i)).collect();
        assert_eq!(
            rest,
            [600 + MAX_PARK_MS, 601 + MAX_PARK_MS, 602 + MAX_PARK_MS]
        );
        // Caught up meanwhile? Not with the breaker open.
        assert_eq!(l.take_back(700, NO_NEWS), None);
        // The probe fails: the next pause gets a probe of its own.
        assert_eq!(l.gate(until), Gate::Go);
        l.start(until);
        l.finish(until, until + 5, 5, Health::Down, &POLICY);
        let Breaker::Open { until: next, .. } = l.breaker() else {
            panic!("open again");
        };
        assert_eq!(l.park_at(until + 10), next);
        assert_eq!(l.park_at(until + 11), until + 11 + MAX_PARK_MS);
        assert_eq!(l.probe_wanted_at(), None, "one is parked to be the probe");
        // A probe that works closes it, and the lane takes the rest back.
        assert_eq!(l.gate(next), Gate::Go);
        l.start(next);
        l.finish(next, next + 1, 1, Health::Up, &POLICY);
        assert!(l.take_back(next + 1, NO_NEWS).is_some_and(|n| n > 0));
        assert!(!l.is_idle(next + 1), "it still has deliveries parked");
    }

    #[test]
    fn a_pause_with_no_probe_parked_asks_for_one_back_when_it_ends() {
        let mut l = opened_at_2(10);
        let until = 1002;
        l.park_at(500);
        l.park_at(501);
        // The probe fails, and its delivery has no attempt left: the next pause has no
        // probe parked for it, only the one parked until the breaker closes.
        l.gate(until);
        l.start(until);
        l.finish(until, until + 5, 5, Health::Down, &POLICY);
        let Breaker::Open { until: next, .. } = l.breaker() else {
            panic!("open again");
        };
        assert_eq!(l.probe_wanted_at(), Some(next));
        assert_eq!(
            l.take_back(next - 1, NO_NEWS),
            None,
            "not before the pause ends"
        );
        assert_eq!(l.take_back(next, NO_NEWS), Some(1));
        assert_eq!(l.take_back(next, NO_NEWS), None, "asked once a pause");
        assert_eq!(l.probe_wanted_at(), None);
    }

    #[test]
    fn only_the_probe_closes_or_reopens_the_breaker() {
        let mut l = lane(10, None);
        // Five attempts under way; then three fail fast and open the breaker.
        for t in 0..5 {
            l.start(t);
        }
        for t in 5..8 {
            l.start(t);
            l.finish(t, t + 1, 1, Health::Down, &POLICY);
        }
        let open = Breaker::Open {
            until: 1008,
            cooldown_ms: 1000,
        };
        assert_eq!(l.breaker(), open);
        // The receiver, going down, still answers what it had: that changes nothing.
        l.finish(0, 100, 100, Health::Up, &POLICY);
        l.finish(1, 100, 99, Health::Down, &POLICY);
        assert_eq!(l.breaker(), open);
        assert_eq!(l.gate(500), Gate::At(1008));
        // The probe goes; answers to older attempts, good or bad, still do not count.
        assert_eq!(l.gate(1008), Gate::Go);
        l.start(1008);
        l.finish(2, 1010, 1008, Health::Up, &POLICY);
        l.finish(3, 1011, 1008, Health::Down, &POLICY);
        assert_eq!(
            l.breaker(),
            Breaker::HalfOpen {
                probe: Some(1008),
                cooldown_ms: 1000
            }
        );
        assert_eq!(l.gate(1011), Gate::Busy);
        // The probe's own answer does.
        l.finish(1008, 1012, 4, Health::Up, &POLICY);
        assert_eq!(l.breaker(), Breaker::Closed { failures: 0 });
        // The last old attempt ends after: closed, a failure counts as one.
        l.finish(4, 1013, 1009, Health::Down, &POLICY);
        assert_eq!(l.breaker(), Breaker::Closed { failures: 1 });
        assert_eq!(l.in_flight, 0);
    }

    #[test]
    fn client_errors_keep_the_breaker_closed_and_unsent_probes_free_the_slot() {
        assert_eq!(Health::of(&AttemptResult::Status(404)), Health::Up);
        assert_eq!(Health::of(&AttemptResult::Status(503)), Health::Down);
        assert_eq!(Health::of(&AttemptResult::Status(429)), Health::Down);
        assert_eq!(Health::of(&AttemptResult::NoAnswer), Health::Down);
        assert_eq!(Health::of(&AttemptResult::Unsendable), Health::Unknown);
        let mut l = opened_at_2(1);
        l.gate(2000);
        l.start(2000);
        l.finish(2000, 2000, 0, Health::Unknown, &POLICY);
        assert_eq!(l.gate(2000), Gate::Go);
    }

    #[test]
    fn a_slow_lane_queues_little_and_parks_the_rest_at_its_pace() {
        let mut l = lane(4, None);
        // Fast answers: a deep queue is fine.
        for t in 0..20 {
            l.start(t);
            l.finish(t, t + 2, 2, Health::Up, &POLICY);
        }
        assert!(
            l.queue_cap(20, NO_NEWS) > 1000,
            "{}",
            l.queue_cap(20, NO_NEWS)
        );
        // Attempts hanging for 10 s: the oldest one tells before any ends.
        for _ in 0..4 {
            l.start(100);
        }
        assert_eq!(l.queue_cap(10_100, NO_NEWS), 1);
        let first = l.park_at(10_100);
        let second = l.park_at(10_100);
        assert_eq!(second - first, 2500, "4 at a time, 10 s each");
        assert!(first > 10_100);
        // Parking never reaches further than the most.
        for _ in 0..1000 {
            assert!(l.park_at(10_100) <= 10_100 + MAX_PARK_MS);
        }
    }

    #[test]
    fn a_lane_not_heard_from_yet_queues_a_quarter_of_its_concurrency() {
        let mut l = lane(8, None);
        // What it can start, and a quarter of that: its pace is not known yet.
        assert_eq!(l.queue_cap(0, NO_NEWS), 10);
        for _ in 0..8 {
            l.start(0);
        }
        assert_eq!(
            l.queue_cap(0, NO_NEWS),
            2,
            "a hanging endpoint holds no more room than this"
        );
        assert!(!l.is_slow(UNKNOWN_SLOW_MS - 1));
        assert!(l.is_slow(UNKNOWN_SLOW_MS));
        assert_eq!(l.queue_cap(1000, NO_NEWS), 2);
        assert!(
            l.park_at(1000) >= 1000 + UNKNOWN_PACE_PARK_MS,
            "hanging: parked far"
        );
        // Answers, fast: no longer slow.
        for _ in 0..20 {
            l.start(1000);
            l.finish(1000, 1001, 2, Health::Up, &POLICY);
        }
        assert_eq!(l.queue_cap(1001, NO_NEWS), usize::MAX);
    }

    #[test]
    fn a_burst_before_the_first_answer_is_parked_briefly_and_taken_back_on_an_answer() {
        let mut l = lane(256, None);
        for _ in 0..256 {
            l.start(0);
        }
        assert_eq!(l.queue_cap(10, NO_NEWS), 64);
        // Not hanging yet: what it cannot queue comes back soon.
        let at = l.park_at(10);
        assert_eq!(at, 10 + MIN_PARK_MS);
        for t in 0..256 {
            l.finish(0, 20 + t / 64, 5, Health::Up, &POLICY);
        }
        assert_eq!(l.queue_cap(30, NO_NEWS), usize::MAX, "heard from, fast");
        assert!(
            l.take_back(30, NO_NEWS).is_some(),
            "caught up: it asks for them at once"
        );
    }

    #[test]
    fn a_lane_remembering_its_endpoint_s_pace_is_known_from_the_start() {
        let mut first = lane(256, None);
        assert_eq!(first.pace(), None);
        first.start(0);
        first.finish(0, 5, 5, Health::Up, &POLICY);
        let pace = first.pace().expect("heard back");
        let again = Lane::new(first.limits, 10_000).remembering(Some(pace));
        assert_eq!(again.queue_cap(10_000, NO_NEWS), usize::MAX);
        assert_eq!(again.pace(), Some(pace));
        let fresh = Lane::new(first.limits, 10_000).remembering(None);
        assert_eq!(fresh.queue_cap(10_000, NO_NEWS), 256 + 64);
    }

    #[test]
    fn a_fast_lane_gone_silent_while_others_answer_queues_little_until_it_answers() {
        let mut l = lane(256, None);
        for t in 0..50 {
            l.start(t);
            l.finish(t, t + 2, 2, Health::Up, &POLICY);
        }
        for _ in 0..200 {
            l.start(100);
        }
        // Others answer all along.
        assert_eq!(l.queue_cap(250, 250), usize::MAX, "150 ms: not yet");
        assert_eq!(
            l.queue_cap(300, 290),
            56 + 64,
            "200 ms silent, a hundred times its usual: what it can start and a quarter"
        );
        assert!(!l.is_slow(300), "suspected, not found out");
        assert!(l.park_at(300) <= 300 + MIN_PARK_MS + 1, "parked briefly");
        // Nobody answered for as long either: a pause of the worker's own, not the receiver.
        assert_eq!(l.queue_cap(300, 150), usize::MAX);
        assert_eq!(
            l.queue_cap(300, 49),
            usize::MAX,
            "its own answers don't count"
        );
        // It answers: nothing to suspect any more.
        for _ in 0..200 {
            l.finish(100, 310, 210, Health::Up, &POLICY);
        }
        assert_eq!(l.queue_cap(310, 310), usize::MAX);
    }

    #[test]
    fn a_busy_lane_that_keeps_answering_is_never_suspected() {
        let mut l = lane(256, None);
        // One attempt hangs while the rest keep answering.
        l.start(0);
        for t in 1..1000 {
            l.start(t);
            l.finish(t, t + 2, 2, Health::Up, &POLICY);
            assert_eq!(l.queue_cap(t + 2, t + 2), usize::MAX, "at {t}");
        }
        // Before it ever answered, a lane is capped as one of unknown pace, suspect or not.
        let mut fresh = lane(256, None);
        fresh.start(0);
        assert_eq!(fresh.queue_cap(250, 250), fresh.queue_cap(250, NO_NEWS));
    }

    #[test]
    fn a_busy_healthy_lane_is_never_slow() {
        let mut l = lane(256, None);
        for t in 0..256 {
            l.start(t);
        }
        for t in 0..100 {
            l.finish(t, 300 + t, 40, Health::Up, &POLICY);
        }
        // 256 at a time at 40 ms is 6,400 a second.
        assert!(!l.is_slow(1000));
        assert_eq!(l.queue_cap(1000, NO_NEWS), usize::MAX);
    }

    #[test]
    fn a_lane_that_catches_up_takes_back_what_it_parked() {
        let mut l = lane(2, None);
        for _ in 0..2 {
            l.start(0);
        }
        assert_eq!(l.take_back(10, NO_NEWS), None, "nothing parked");
        let at = l.park_at(5_000);
        assert!(at > 5_000);
        assert_eq!(l.take_back(5_000, NO_NEWS), None, "still busy");
        l.finish(0, 5_010, 5_010, Health::Up, &POLICY);
        let n = l.take_back(5_010, NO_NEWS).expect("room and parked work");
        assert!((1..=MAX_TAKE_BACK).contains(&n));
        // It asks again, until the store has no more.
        assert!(l.take_back(5_010, NO_NEWS).is_some());
        l.nothing_parked(l.parked_until(), 5_010);
        assert_eq!(l.take_back(5_010, NO_NEWS), None);
    }

    #[test]
    fn what_a_lane_parks_while_it_asks_is_not_forgotten() {
        let mut l = lane(2, None);
        l.start(0);
        l.finish(0, 10, 10, Health::Up, &POLICY);
        l.park_at(100);
        let asked_with = l.parked_until();
        assert!(l.take_back(100, NO_NEWS).is_some());
        // While the store answers, the lane parks one more; the answer "nothing left"
        // was about what it had parked before.
        l.park_at(120);
        assert!(l.parked_until() > asked_with);
        l.nothing_parked(asked_with, 100);
        assert!(
            l.take_back(130, NO_NEWS).is_some(),
            "the later one is still parked"
        );
    }

    #[test]
    fn the_rate_limit_caps_the_pace() {
        let mut l = lane(64, Some(5));
        for t in 0..20 {
            l.start(t);
            l.finish(t, t + 1, 1, Health::Up, &POLICY);
        }
        assert_eq!(l.drain_rate(30), 5.0);
        assert_eq!(l.queue_cap(30, NO_NEWS), 10);
    }
}
