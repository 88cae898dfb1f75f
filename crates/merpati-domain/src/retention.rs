//! What retention may cut: events older than the retention's age, unless a delivery still
//! owes them (at least once outranks retention; see
//! [`crate::delivery::DeliveryStatus::is_owed`]).
//!
//! Events are numbered as they are stored, so their times rise with their numbers, and
//! [`first_young`] finds the first event too young to go by bisecting over the numbers: a
//! few dozen lookups, and no index on the time (which every event would write). Should the
//! clock have stepped back, an event out of step is pruned later than its age says, never
//! earlier: pruning still checks each event's time.

use std::time::Duration;

use crate::storage::StoreResult;

/// Events created before this may go.
pub fn cutoff(now: i64, max_age: Duration) -> i64 {
    now - max_age.as_millis() as i64
}

/// The number below which every event was created before `before`, given the numbers of
/// the first and last events and `at_or_after(n)`: the first event numbered `n` or more,
/// as (number, created at).
pub fn first_young(
    first: i64,
    last: i64,
    before: i64,
    mut at_or_after: impl FnMut(i64) -> StoreResult<Option<(i64, i64)>>,
) -> StoreResult<i64> {
    // Every event below `low` is old; the first at or after `high` is young, or there is
    // none.
    let (mut low, mut high) = (first, last + 1);
    while low < high {
        let middle = low + (high - low) / 2;
        match at_or_after(middle)? {
            Some((seq, created_at)) if created_at < before => low = seq + 1,
            _ => high = middle,
        }
    }
    Ok(low)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (number, created at) of each event, in number order.
    fn found(events: &[(i64, i64)], before: i64) -> Option<i64> {
        let (first, last) = (events.first()?.0, events.last()?.0);
        let lookup = |n: i64| Ok(events.iter().copied().find(|(seq, _)| *seq >= n));
        Some(first_young(first, last, before, lookup).unwrap())
    }

    #[test]
    fn the_first_young_event_is_found_across_gaps_in_the_numbers() {
        let events = [(3, 100), (4, 100), (7, 200), (10, 300), (11, 300)];
        assert_eq!(found(&events, 50), Some(3), "nothing is old");
        assert_eq!(found(&events, 101), Some(5), "3 and 4 are old");
        assert_eq!(found(&events, 200), Some(5));
        assert_eq!(found(&events, 201), Some(8));
        assert_eq!(found(&events, 300), Some(8));
        assert_eq!(found(&events, 301), Some(12), "everything is old");
    }

    /// With the clock stepped back, the bound may pass a young event (2 here): pruning
    /// checks each event's time, so it is kept.
    #[test]
    fn a_clock_stepped_back_may_put_the_bound_past_a_young_event() {
        let events = [(1, 100), (2, 500), (3, 100), (4, 600), (5, 100)];
        assert!(found(&events, 200).unwrap() > 2);
    }

    #[test]
    fn the_cut_is_the_age_before_now() {
        assert_eq!(cutoff(10_000, Duration::from_secs(3)), 7_000);
    }
}
