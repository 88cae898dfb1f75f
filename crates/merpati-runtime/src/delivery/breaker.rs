//! An endpoint's circuit breaker: what an attempt's answer says of the endpoint, and how
//! the breaker opens, lets one probe go and closes. Pure: time is passed in.

use merpati_domain::endpoint::StoredBreaker;
use merpati_domain::retry::AttemptResult;

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

impl Breaker {
    /// The breaker as the endpoint's last owner left it: open until its time, or, once that
    /// passed, letting one probe decide.
    pub fn kept(stored: Option<StoredBreaker>, now: i64) -> Breaker {
        match stored {
            None => Breaker::Closed { failures: 0 },
            Some(b) if now < b.until => Breaker::Open {
                until: b.until,
                cooldown_ms: b.cooldown_ms,
            },
            Some(b) => Breaker::HalfOpen {
                probe: None,
                cooldown_ms: b.cooldown_ms,
            },
        }
    }

    /// The breaker after an attempt started at `started_at` ended at `now` with `health`.
    pub fn after(
        self,
        started_at: i64,
        now: i64,
        health: Health,
        policy: &BreakerPolicy,
    ) -> Breaker {
        match (self, health) {
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
        }
    }
}
