//! The rate limiter in front of ingest: a token bucket per account and one per device,
//! in memory. A request's events are taken from both, or from neither.

use std::collections::HashMap;
use std::sync::Mutex;

use merpati_domain::limits::{Bucket, Rate};

/// Past this many buckets, the full ones (which a new bucket would equal) are forgotten.
const SWEEP_AT: usize = 100_000;

#[derive(Default)]
pub struct RateLimiter {
    /// Each bucket with the rate it was last used at.
    buckets: Mutex<HashMap<String, (Bucket, Rate)>>,
}

/// Whose bucket ran dry, and when `n` events would fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// In this many milliseconds.
    Account(i64),
    Device(i64),
    /// More at once than the bucket holds: never as one request.
    TooMany {
        burst: u32,
    },
}

impl RateLimiter {
    /// Takes `n` events from the account's bucket and the device's, or refuses.
    pub fn admit(
        &self,
        account: &str,
        device: &str,
        n: u32,
        account_rate: Rate,
        device_rate: Rate,
        now_ms: i64,
    ) -> Result<(), Refusal> {
        let mut buckets = self.buckets.lock().expect("rate limiter lock");
        if buckets.len() >= SWEEP_AT {
            buckets.retain(|_, (b, rate)| !b.is_full(*rate, now_ms));
        }
        let account_key = format!("a\0{account}");
        let device_key = format!("d\0{account}\0{device}");
        let mut a = buckets
            .get(&account_key)
            .map_or_else(|| Bucket::full(account_rate, now_ms), |(b, _)| *b);
        let mut d = buckets
            .get(&device_key)
            .map_or_else(|| Bucket::full(device_rate, now_ms), |(b, _)| *b);
        let refused = |wait: i64, rate: Rate, who: fn(i64) -> Refusal| {
            if wait == i64::MAX {
                Refusal::TooMany { burst: rate.burst }
            } else {
                who(wait)
            }
        };
        d.check(n, device_rate, now_ms)
            .map_err(|w| refused(w, device_rate, Refusal::Device))?;
        a.check(n, account_rate, now_ms)
            .map_err(|w| refused(w, account_rate, Refusal::Account))?;
        a.take(n);
        d.take(n);
        buckets.insert(account_key, (a, account_rate));
        buckets.insert(device_key, (d, device_rate));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEVICE: Rate = Rate {
        per_second: 5,
        burst: 5,
    };
    const ACCOUNT: Rate = Rate {
        per_second: 8,
        burst: 8,
    };

    #[test]
    fn a_device_and_its_account_are_limited_and_others_are_not() {
        let l = RateLimiter::default();
        assert_eq!(l.admit("a", "d1", 5, ACCOUNT, DEVICE, 0), Ok(()));
        assert_eq!(
            l.admit("a", "d1", 1, ACCOUNT, DEVICE, 0),
            Err(Refusal::Device(200))
        );
        // The refused one took nothing from the account: d2 gets the remaining 3.
        assert_eq!(l.admit("a", "d2", 3, ACCOUNT, DEVICE, 0), Ok(()));
        assert_eq!(
            l.admit("a", "d2", 1, ACCOUNT, DEVICE, 0),
            Err(Refusal::Account(125))
        );
        // Another account is untouched.
        assert_eq!(l.admit("b", "d1", 5, ACCOUNT, DEVICE, 0), Ok(()));
        // A second later both refill.
        assert_eq!(l.admit("a", "d1", 5, ACCOUNT, DEVICE, 1_000), Ok(()));
        assert_eq!(
            l.admit("a", "d1", 6, ACCOUNT, DEVICE, 10_000),
            Err(Refusal::TooMany { burst: 5 })
        );
    }
}
