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

/// One part of an event log kept in parts that retention drops whole (PostgreSQL's): a
/// range of event numbers, with the deliveries and attempts numbered in the same range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogPart {
    /// When its newest event was created; None when it holds none.
    pub newest_event_at: Option<i64>,
    /// Whether a delivery of one of its events, or one numbered in it, is still owed.
    pub owed: bool,
}

/// What retention does with a part that the numbers have moved past.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartFate {
    /// Some of its events are younger than the cut: it stays whole (and so do the parts
    /// after it).
    Keep,
    /// Every event is older than the cut, but a delivery still owes one: the events nothing
    /// owes go a chunk at a time, and the part stays until the last owed one is settled.
    Thin,
    /// Every event is older than the cut and nothing is owed: the part is dropped whole.
    Drop,
}

/// What becomes of `part` given the cut (`before`).
pub fn part_fate(part: LogPart, before: i64) -> PartFate {
    match part.newest_event_at {
        Some(newest) if newest >= before => PartFate::Keep,
        _ if part.owed => PartFate::Thin,
        _ => PartFate::Drop,
    }
}

/// Whether the numbers should move onto the next part: the one in use was opened a span
/// ago, or half its numbers are used (a day busier than a part holds, which then lasts
/// less than a day). A zero span moves them at every look, whatever the clocks say.
pub fn part_turn_due(opened_at: i64, now: i64, span: Duration, used: i64, size: i64) -> bool {
    span.is_zero() || now.saturating_sub(opened_at) >= span.as_millis() as i64 || used >= size / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_goes_whole_once_all_of_it_is_old_and_nothing_in_it_is_owed() {
        let part = |newest, owed| LogPart {
            newest_event_at: newest,
            owed,
        };
        assert_eq!(part_fate(part(Some(99), false), 100), PartFate::Drop);
        assert_eq!(part_fate(part(None, false), 100), PartFate::Drop, "empty");
        assert_eq!(part_fate(part(Some(99), true), 100), PartFate::Thin);
        assert_eq!(part_fate(part(Some(100), false), 100), PartFate::Keep);
        assert_eq!(part_fate(part(Some(100), true), 100), PartFate::Keep);
    }

    #[test]
    fn the_numbers_move_on_after_a_span_or_when_half_a_part_is_used() {
        let day = Duration::from_secs(86_400);
        assert!(!part_turn_due(0, 86_399_999, day, 10, 1000));
        assert!(part_turn_due(0, 86_400_000, day, 10, 1000));
        assert!(part_turn_due(0, 1, day, 500, 1000), "half used");
        assert!(!part_turn_due(5_000, 1_000, day, 0, 1000), "a clock behind");
        assert!(
            part_turn_due(5_000, 1_000, Duration::ZERO, 0, 1000),
            "every look"
        );
    }

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
