//! One endpoint's lane in the worker: its queue of claimed deliveries, its limits (concurrency
//! and requests per second), its circuit breaker ([`super::breaker`]), and how far ahead to
//! park what it cannot take. Pure: time is passed in, so every rule is unit-tested without a
//! network or a sleep.

use std::collections::VecDeque;

use merpati_domain::delivery::DueDelivery;
use merpati_domain::endpoint::StoredBreaker;

use super::breaker::{Breaker, BreakerPolicy, Health};

/// The limits an endpoint asks for, or the configured defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub concurrency: usize,
    /// Requests per second; `None` for no limit.
    pub rate: Option<u32>,
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

    /// A lane whose breaker starts as the endpoint's last owner left it.
    pub fn with_breaker(mut self, stored: Option<StoredBreaker>, now: i64) -> Lane {
        self.breaker = Breaker::kept(stored, now);
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
        self.breaker = self.breaker.after(started_at, now, health, policy);
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
mod tests;
