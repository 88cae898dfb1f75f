//! How long group commits take, from `BEGIN` to durable: counted by a backend as it
//! answers each group, read by the metrics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::store::Histogram;

/// Upper bounds in seconds: 100 µs to about 3 s.
const BOUNDS: [f64; 16] = [
    0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
    10.0,
];

#[derive(Debug, Default)]
pub struct CommitStats {
    /// Commits in each bucket: at or under its bound and over the one before; the last
    /// holds those past every bound.
    counts: [AtomicU64; BOUNDS.len() + 1],
    sum_micros: AtomicU64,
}

impl CommitStats {
    pub fn observe(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        let i = BOUNDS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(BOUNDS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Histogram {
        let buckets: Vec<(f64, u64)> = BOUNDS
            .iter()
            .chain([f64::INFINITY].iter())
            .enumerate()
            .map(|(i, bound)| (*bound, self.counts[i].load(Ordering::Relaxed)))
            .collect();
        Histogram {
            count: buckets.iter().map(|(_, n)| n).sum(),
            buckets,
            sum: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_fall_in_their_buckets() {
        let s = CommitStats::default();
        s.observe(Duration::from_micros(300));
        s.observe(Duration::from_millis(3));
        s.observe(Duration::from_secs(30));
        let h = s.snapshot();
        assert_eq!(h.count, 3);
        assert_eq!(h.buckets[2], (0.0005, 1));
        assert_eq!(h.buckets[5], (0.005, 1));
        assert_eq!(h.buckets.last(), Some(&(f64::INFINITY, 1)));
        assert!((h.sum - 30.0033).abs() < 1e-9);
    }
}
