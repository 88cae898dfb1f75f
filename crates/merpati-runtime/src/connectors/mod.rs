//! Connectors at run time: what each took in since the server started (counters by
//! outcome, when its engine was last heard, the last few skipped requests, redacted; in
//! memory, a restart starts them again), and `poll`, which asks engines how they are.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

mod poll;

pub use poll::{Poller, DEFAULT_INTERVAL_MS};

/// How many skipped requests are kept per connector, and how much of each.
pub const RECENT_SKIPPED: usize = 5;
pub const SAMPLE_BYTES: usize = 2048;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Items stored as new events.
    pub stored: u64,
    /// Items already stored (an engine's retry).
    pub duplicates: u64,
    pub states: u64,
    /// Refused: not signed with a live secret of the connector, or stale.
    pub rejected: u64,
    pub skipped: BTreeMap<&'static str, u64>,
    /// When a verified request last came.
    pub last_seen_at: Option<i64>,
    /// Newest first.
    pub recent_skipped: VecDeque<SkippedSample>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedSample {
    pub at: i64,
    pub reason: &'static str,
    /// The body with its credentials redacted, cut to [`SAMPLE_BYTES`].
    pub body: String,
}

/// What one verified request came to.
#[derive(Debug)]
pub struct Taken<'a> {
    pub stored: u64,
    pub duplicates: u64,
    pub states: u64,
    pub skipped: &'a BTreeMap<&'static str, usize>,
}

#[derive(Debug, Clone, Default)]
pub struct ConnectorStats(Arc<Mutex<Inner>>);

#[derive(Debug, Default)]
struct Inner {
    tallies: HashMap<String, Tally>,
    /// The time of the newest state each (connector, engine key) reported.
    last_state: HashMap<(String, String), i64>,
}

impl ConnectorStats {
    /// Whether a state the engine dated `at_ms` is newer than the last it reported for that
    /// key; an older one, arriving late (a retry, a reordering), is to be dropped.
    pub fn fresh_state(&self, connector: &str, key: &str, at_ms: i64) -> bool {
        let mut inner = self.0.lock().expect("not poisoned");
        let last = inner
            .last_state
            .entry((connector.to_string(), key.to_string()))
            .or_insert(i64::MIN);
        if at_ms < *last {
            return false;
        }
        *last = at_ms;
        true
    }

    pub fn taken(&self, connector: &str, now: i64, taken: Taken<'_>, body: &[u8]) {
        let mut inner = self.0.lock().expect("not poisoned");
        let t = inner.tallies.entry(connector.to_string()).or_default();
        t.stored += taken.stored;
        t.duplicates += taken.duplicates;
        t.states += taken.states;
        t.last_seen_at = Some(now);
        for (reason, n) in taken.skipped {
            *t.skipped.entry(reason).or_default() += *n as u64;
        }
        if let Some(reason) = taken.skipped.keys().next() {
            t.recent_skipped.push_front(SkippedSample {
                at: now,
                reason,
                body: merpati_engines::redact::redacted(body, SAMPLE_BYTES),
            });
            t.recent_skipped.truncate(RECENT_SKIPPED);
        }
    }

    pub fn rejected(&self, connector: &str) {
        let mut inner = self.0.lock().expect("not poisoned");
        inner
            .tallies
            .entry(connector.to_string())
            .or_default()
            .rejected += 1;
    }

    pub fn get(&self, connector: &str) -> Tally {
        let inner = self.0.lock().expect("not poisoned");
        inner.tallies.get(connector).cloned().unwrap_or_default()
    }

    pub fn forget(&self, connector: &str) {
        let mut inner = self.0.lock().expect("not poisoned");
        inner.tallies.remove(connector);
        inner.last_state.retain(|(c, _), _| c != connector);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_add_up_and_samples_stay_few_and_redacted() {
        let stats = ConnectorStats::default();
        let skipped: BTreeMap<&'static str, usize> = [("from_me", 1)].into();
        for i in 0..7 {
            stats.taken(
                "c",
                i,
                Taken {
                    stored: 1,
                    duplicates: 0,
                    states: 0,
                    skipped: &skipped,
                },
                br#"{"apikey":"SECRET","text":"x"}"#,
            );
        }
        stats.rejected("c");
        let t = stats.get("c");
        assert_eq!((t.stored, t.rejected, t.skipped["from_me"]), (7, 1, 7));
        assert_eq!(t.last_seen_at, Some(6));
        assert_eq!(t.recent_skipped.len(), RECENT_SKIPPED);
        assert_eq!(t.recent_skipped[0].at, 6);
        assert!(!t.recent_skipped[0].body.contains("SECRET"));
        stats.forget("c");
        assert_eq!(stats.get("c"), Tally::default());
    }

    #[test]
    fn states_older_than_the_last_are_not_fresh() {
        let stats = ConnectorStats::default();
        assert!(stats.fresh_state("c", "s1", 10));
        assert!(!stats.fresh_state("c", "s1", 9));
        assert!(
            stats.fresh_state("c", "s1", 10),
            "the same time again is a retry of it"
        );
        assert!(stats.fresh_state("c", "s2", 1), "each key on its own");
    }
}
