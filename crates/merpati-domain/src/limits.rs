//! What one account, and one of its devices, may take of a hub shared with others: how
//! many events a second (token buckets), and how many devices, endpoints and alert rules.
//! The server's settings give the defaults; the admin may set any of them per account.

use serde::{Deserialize, Serialize};

/// Events a second, and how many may come at once after a quiet spell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

/// An account's own limits, over the server's defaults (`None`: the default).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_per_second: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_events_per_second: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_devices: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_endpoints: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_alert_rules: Option<u32>,
}

/// The limits that apply: an account's own where it has them, else the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub events_per_second: u32,
    pub device_events_per_second: u32,
    pub max_devices: u32,
    pub max_endpoints: u32,
    pub max_alert_rules: u32,
}

impl Limits {
    pub fn for_account(&self, own: &AccountLimits) -> Limits {
        Limits {
            events_per_second: own.events_per_second.unwrap_or(self.events_per_second),
            device_events_per_second: own
                .device_events_per_second
                .unwrap_or(self.device_events_per_second),
            max_devices: own.max_devices.unwrap_or(self.max_devices),
            max_endpoints: own.max_endpoints.unwrap_or(self.max_endpoints),
            max_alert_rules: own.max_alert_rules.unwrap_or(self.max_alert_rules),
        }
    }

    /// The account's rate: a second's worth at once, at most.
    pub fn account_rate(&self) -> Rate {
        Rate {
            per_second: self.events_per_second,
            burst: self.events_per_second,
        }
    }

    pub fn device_rate(&self) -> Rate {
        Rate {
            per_second: self.device_events_per_second,
            burst: self.device_events_per_second,
        }
    }
}

/// A token bucket: `burst` tokens at most, refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    tokens: f64,
    at_ms: i64,
}

impl Bucket {
    pub fn full(rate: Rate, now_ms: i64) -> Bucket {
        Bucket {
            tokens: f64::from(rate.burst),
            at_ms: now_ms,
        }
    }

    fn refill(&mut self, rate: Rate, now_ms: i64) {
        let elapsed = (now_ms - self.at_ms).max(0) as f64 / 1000.0;
        self.tokens =
            (self.tokens + elapsed * f64::from(rate.per_second)).min(f64::from(rate.burst));
        self.at_ms = self.at_ms.max(now_ms);
    }

    /// Whether `n` tokens can be taken at `now_ms` (without taking them); if not, in how
    /// many milliseconds they can.
    pub fn check(&mut self, n: u32, rate: Rate, now_ms: i64) -> Result<(), i64> {
        self.refill(rate, now_ms);
        let n = f64::from(n);
        if n <= self.tokens {
            return Ok(());
        }
        if rate.per_second == 0 || n > f64::from(rate.burst) {
            // More than a bucket holds: never, as one request.
            return Err(i64::MAX);
        }
        Err(((n - self.tokens) / f64::from(rate.per_second) * 1000.0).ceil() as i64)
    }

    pub fn take(&mut self, n: u32) {
        self.tokens -= f64::from(n);
    }

    /// Full again by `now_ms`: it may be forgotten, as a new one would be the same.
    pub fn is_full(&self, rate: Rate, now_ms: i64) -> bool {
        let mut b = *self;
        b.refill(rate, now_ms);
        b.tokens >= f64::from(rate.burst)
    }
}

/// Whether one more can be made when `count` exist and `cap` may.
pub fn within_cap(count: u64, cap: u32) -> bool {
    count < u64::from(cap)
}

/// Refuses one more `what` (plural) when `count` exist and `cap` may.
pub fn check_cap(count: u64, cap: u32, what: &str) -> Result<(), crate::StoreError> {
    if within_cap(count, cap) {
        Ok(())
    } else {
        Err(crate::StoreError::LimitReached(format!(
            "this account has {count} {what}, its limit; delete one, or ask the admin to raise it"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: Rate = Rate {
        per_second: 10,
        burst: 10,
    };

    #[test]
    fn a_bucket_gives_its_burst_then_its_rate() {
        let mut b = Bucket::full(RATE, 0);
        assert_eq!(b.check(10, RATE, 0), Ok(()));
        b.take(10);
        assert_eq!(b.check(1, RATE, 0), Err(100));
        assert_eq!(b.check(5, RATE, 0), Err(500));
        assert_eq!(b.check(1, RATE, 100), Ok(()));
        b.take(1);
        assert_eq!(b.check(1, RATE, 150), Err(50));
        // Never past its burst, however long it rests.
        assert!(b.is_full(RATE, 10_000));
        assert_eq!(b.check(11, RATE, 10_000), Err(i64::MAX));
    }

    #[test]
    fn time_going_back_takes_nothing_away() {
        let mut b = Bucket::full(RATE, 1_000);
        b.take(10);
        assert_eq!(b.check(1, RATE, 500), Err(100));
        assert_eq!(b.check(1, RATE, 1_100), Ok(()));
    }

    #[test]
    fn an_account_s_own_limits_win_over_the_defaults() {
        let defaults = Limits {
            events_per_second: 100,
            device_events_per_second: 10,
            max_devices: 5,
            max_endpoints: 3,
            max_alert_rules: 2,
        };
        let own = AccountLimits {
            max_devices: Some(50),
            device_events_per_second: Some(1),
            ..Default::default()
        };
        let l = defaults.for_account(&own);
        assert_eq!(
            (l.max_devices, l.device_events_per_second, l.max_endpoints),
            (50, 1, 3)
        );
        assert!(within_cap(49, 50) && !within_cap(50, 50));
    }
}
