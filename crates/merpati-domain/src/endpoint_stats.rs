//! An endpoint's recent health: attempts a minute (succeeded, failed, and their latency in
//! fixed buckets), kept for a day, summed over any window, with its success rate and
//! latency quantiles estimated from the buckets the way Prometheus estimates them.

use std::collections::BTreeMap;

use crate::delivery::AttemptRecord;
use crate::ids::{AccountId, EndpointId};
use crate::retry::NextStep;
use crate::storage::StoreResult;

/// Upper bounds of the latency buckets (ms); one more bucket takes what is slower.
pub const LATENCY_BOUNDS_MS: [i64; 12] = [
    5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000,
];
pub const BUCKETS: usize = LATENCY_BOUNDS_MS.len() + 1;
pub const MINUTE_MS: i64 = 60_000;
/// How long minutes are kept.
pub const KEPT_MS: i64 = 86_400_000;

/// Attempts to one endpoint over some time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub succeeded: i64,
    pub failed: i64,
    pub latency: [i64; BUCKETS],
}

impl Tally {
    pub fn attempts(&self) -> i64 {
        self.succeeded + self.failed
    }

    pub fn add(&mut self, other: &Tally) {
        self.succeeded += other.succeeded;
        self.failed += other.failed;
        for (a, b) in self.latency.iter_mut().zip(other.latency) {
            *a += b;
        }
    }

    /// Succeeded attempts as a share of all, in percent; None without attempts.
    pub fn success_percent(&self) -> Option<f64> {
        let all = self.attempts();
        (all > 0).then(|| (self.succeeded as f64 * 1000.0 / all as f64).round() / 10.0)
    }

    /// The latency under which a share `q` of attempts finished (ms), interpolated inside
    /// its bucket; the slowest bucket answers its lower bound.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total: i64 = self.latency.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut below = 0i64;
        for (i, count) in self.latency.iter().enumerate() {
            if *count > 0 && (below + count) as f64 >= rank {
                let low = if i == 0 { 0 } else { LATENCY_BOUNDS_MS[i - 1] } as f64;
                let Some(high) = LATENCY_BOUNDS_MS.get(i) else {
                    return Some(low);
                };
                let within = (rank - below as f64) / *count as f64;
                return Some(low + (*high as f64 - low) * within.clamp(0.0, 1.0));
            }
            below += count;
        }
        None
    }
}

fn bucket(duration_ms: i64) -> usize {
    LATENCY_BOUNDS_MS
        .iter()
        .position(|bound| duration_ms <= *bound)
        .unwrap_or(LATENCY_BOUNDS_MS.len())
}

/// A batch of attempts as tallies by endpoint and minute (when each attempt started).
pub fn by_minute(records: &[AttemptRecord]) -> BTreeMap<(EndpointId, i64), Tally> {
    let mut tallies: BTreeMap<(EndpointId, i64), Tally> = BTreeMap::new();
    for a in records {
        let minute = a.started_at.div_euclid(MINUTE_MS) * MINUTE_MS;
        let t = tallies.entry((a.endpoint.id.clone(), minute)).or_default();
        match a.next {
            NextStep::Succeeded => t.succeeded += 1,
            NextStep::RetryAt(_) | NextStep::Failed => t.failed += 1,
        }
        t.latency[bucket(a.duration_ms)] += 1;
    }
    tallies
}

/// Deliveries to an endpoint that wait on someone: held while it is disabled, failed for
/// good (a recover job sends them again).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    pub held: i64,
    pub failed: i64,
}

#[async_trait::async_trait]
pub trait EndpointStatsStore: Send + Sync {
    /// The endpoint's attempts that started in [from, to), summed from its minutes (the
    /// minute holding `from` counts whole). NotFound when the endpoint is not the account's.
    async fn endpoint_tally(
        &self,
        account: AccountId,
        endpoint: EndpointId,
        from: i64,
        to: i64,
    ) -> StoreResult<Tally>;
    /// NotFound when the endpoint is not the account's.
    async fn endpoint_backlog(
        &self,
        account: AccountId,
        endpoint: EndpointId,
    ) -> StoreResult<Backlog>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(latencies: &[(usize, i64)]) -> Tally {
        let mut t = Tally::default();
        for (b, n) in latencies {
            t.latency[*b] = *n;
            t.succeeded += n;
        }
        t
    }

    #[test]
    fn quantiles_interpolate_inside_their_bucket() {
        // 100 attempts: 50 in (10, 25], 49 in (25, 50], 1 in (250, 500].
        let t = tally(&[(2, 50), (3, 49), (6, 1)]);
        assert_eq!(t.quantile_ms(0.5), Some(25.0));
        assert_eq!(t.quantile_ms(0.25), Some(17.5));
        let p99 = t.quantile_ms(0.99).unwrap();
        assert!((p99 - 50.0).abs() < 1e-9, "{p99}");
        assert_eq!(t.quantile_ms(1.0), Some(500.0));
        assert_eq!(Tally::default().quantile_ms(0.5), None);
        // The slowest bucket has no upper bound: its lower one is the answer.
        assert_eq!(tally(&[(12, 3)]).quantile_ms(0.99), Some(30_000.0));
    }

    #[test]
    fn success_rate_and_buckets() {
        let mut t = Tally {
            succeeded: 2,
            failed: 1,
            ..Default::default()
        };
        assert_eq!(t.success_percent(), Some(66.7));
        t.add(&Tally {
            succeeded: 1,
            ..Default::default()
        });
        assert_eq!(t.success_percent(), Some(75.0));
        assert_eq!(Tally::default().success_percent(), None);
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(5), 0);
        assert_eq!(bucket(6), 1);
        assert_eq!(bucket(30_000), 11);
        assert_eq!(bucket(30_001), 12);
    }
}
