//! What the worker knows of when deliveries in the store are due: the store's answer, and
//! the times the worker scheduled itself (retries and parks), kept apart because their
//! writes may still be on the way when a claim finds nothing due.

use std::collections::BTreeSet;

use merpati_domain::clock::earliest;

pub(super) struct DueTimes {
    /// Whether deliveries may be due now (woken, or the last claim was full).
    pub known_due: bool,
    /// The next due time the store told, or a time to look again after an error.
    next_due: Option<i64>,
    /// The retries and parks this worker scheduled, apart from `next_due`: the recorder or
    /// the lanes' writer may not have written one yet when a claim finds nothing due, and a
    /// later one folded into `next_due` would be dropped with the earlier time it hid
    /// behind.
    scheduled: Scheduled,
    /// Whether `next_due` may be out of date, and when the store was last asked.
    pub stale: bool,
    pub read_at: i64,
    /// When the worker last looked for due deliveries without being told: other nodes
    /// wake it, and a wake lost costs at most a second.
    pub polled_at: i64,
}

impl Default for DueTimes {
    fn default() -> Self {
        DueTimes {
            known_due: true,
            next_due: None,
            scheduled: Scheduled::default(),
            stale: true,
            read_at: i64::MIN / 2,
            polled_at: i64::MIN / 2,
        }
    }
}

impl DueTimes {
    /// When the worker should claim next, as far as it knows.
    pub fn next(&self) -> Option<i64> {
        earliest(self.next_due, self.scheduled.first())
    }

    /// A retry or a park of this worker's is due at `at`.
    pub fn schedule(&mut self, at: i64) {
        self.scheduled.add(at);
    }

    /// The store's next due time.
    pub fn read(&mut self, at: Option<i64>) {
        self.next_due = earliest(at, self.next_due);
    }

    /// The store could not be asked or claimed from: look again in a second.
    pub fn look_again_in_a_second(&mut self, now: i64) {
        self.next_due = Some(now + 1000);
    }

    /// A claim at `now` found less than it asked for: nothing else is due by then, and what
    /// is due later is still known. A retry due by now whose record was not written yet is
    /// not lost: the recorder wakes the worker once it is.
    pub fn caught_up(&mut self, now: i64) {
        self.next_due = self.next_due.filter(|at| *at > now);
        self.scheduled.forget_until(now);
        self.stale = true;
    }
}

/// The times the worker scheduled itself: the earliest `MAX` of them, and the earliest of
/// those let go to stay that small. The worker wakes then and claims, and the store's next
/// due time (read whenever a claim finds less than it asked for) has the rest, whose
/// records were written long before.
#[derive(Default)]
struct Scheduled {
    soon: BTreeSet<i64>,
    let_go: Option<i64>,
}

impl Scheduled {
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

    /// Forgets the times at `now` or before: a claim at `now` took what was due then.
    fn forget_until(&mut self, now: i64) {
        self.soon = self.soon.split_off(&(now + 1));
        self.let_go = self.let_go.filter(|at| *at > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduled_times_are_remembered_apart_until_a_claim_takes_them() {
        let mut scheduled = Scheduled::default();
        assert_eq!(scheduled.first(), None);
        scheduled.add(655);
        scheduled.add(529);
        assert_eq!(scheduled.first(), Some(529));
        // A claim at 535 took what was due; the retry at 655 is still to come.
        scheduled.forget_until(535);
        assert_eq!(scheduled.first(), Some(655));
        scheduled.forget_until(655);
        assert_eq!(scheduled.first(), None);
        // The earliest are kept, and of the rest the earliest time.
        let max = Scheduled::MAX as i64;
        for at in 0..2 * max {
            scheduled.add(at);
        }
        assert_eq!(scheduled.soon.len(), Scheduled::MAX);
        assert_eq!(scheduled.first(), Some(0));
        scheduled.forget_until(max - 1);
        assert_eq!(scheduled.first(), Some(max), "the earliest let go");
        scheduled.forget_until(max);
        assert_eq!(scheduled.first(), None);
    }

    /// A takeover: the store says deliveries are due now (100); they are claimed and their
    /// lane parks one until its breaker's pause ends (8_000). A second claim finds nothing
    /// more before that park is written, and the store, read again meanwhile, knows only
    /// the claims' leases (300_000). The park's time must survive.
    #[test]
    fn a_park_still_being_written_is_not_lost_behind_an_earlier_due_time() {
        let mut due = DueTimes::default();
        due.read(Some(100));
        due.schedule(8_000);
        assert_eq!(due.next(), Some(100));
        due.caught_up(150);
        due.read(Some(300_000));
        assert_eq!(
            due.next(),
            Some(8_000),
            "the probe parked until the pause's end"
        );
        due.caught_up(8_000);
        assert_eq!(due.next(), Some(300_000), "then when the store said");
    }
}
