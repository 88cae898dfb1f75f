//! Availability over a window, from announced periods. Time before a device was first seen
//! is not observed and counts neither way; an open period runs until now.

use std::collections::HashMap;

use super::{Period, PeriodState};
use crate::ids::DeviceId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Availability {
    pub up_ms: i64,
    pub down_ms: i64,
    /// Down periods overlapping the window.
    pub outages: usize,
    /// Left out of both: inside maintenance windows (with `availability_outside`).
    pub maintenance_ms: i64,
}

impl Availability {
    /// Up time as a share of observed time, in percent with three decimals; `None` when
    /// nothing was observed in the window.
    pub fn percent(&self) -> Option<f64> {
        let observed = self.up_ms + self.down_ms;
        (observed > 0).then(|| {
            let p = self.up_ms as f64 * 100.0 / observed as f64;
            (p * 1000.0).round() / 1000.0
        })
    }
}

/// Sums the periods' overlap with [from, to). Periods of several devices add up, which makes
/// a channel's or a business's availability the share of device-time that was up.
pub fn availability(periods: &[Period], from: i64, to: i64, now: i64) -> Availability {
    availability_outside(periods, from, to, now, &HashMap::new())
}

/// As [`availability`], with the time each device spent inside its maintenance windows
/// (`maintenance`: merged spans per device) left out of both up and down time, and an
/// outage wholly inside maintenance not counted.
pub fn availability_outside(
    periods: &[Period],
    from: i64,
    to: i64,
    now: i64,
    maintenance: &HashMap<DeviceId, Vec<(i64, i64)>>,
) -> Availability {
    let mut a = Availability::default();
    for p in periods {
        let end = p.ended_at.unwrap_or(now).min(to);
        let start = p.started_at.max(from);
        if end <= start {
            continue;
        }
        let inside = maintenance
            .get(&p.device_id)
            .map_or(0, |spans| overlap(spans, start, end));
        let outside = end - start - inside;
        a.maintenance_ms += inside;
        match p.state {
            PeriodState::Up => a.up_ms += outside,
            PeriodState::Down => {
                a.down_ms += outside;
                if outside > 0 {
                    a.outages += 1;
                }
            }
        }
    }
    a
}

/// How much of [from, to) the (merged) spans cover.
pub fn overlap(spans: &[(i64, i64)], from: i64, to: i64) -> i64 {
    spans
        .iter()
        .map(|(s, e)| (*e.min(&to) - *s.max(&from)).max(0))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn period(state: &str, start: i64, end: Option<i64>) -> Period {
        Period {
            device_id: "d".into(),
            state: PeriodState::parse(state).unwrap(),
            started_at: start,
            ended_at: end,
            reason: None,
        }
    }

    #[test]
    fn a_scripted_day() {
        // Up 0–600, down 600–1000 (7 min…), up from 1000 on.
        let periods = [
            period("up", 0, Some(600)),
            period("down", 600, Some(1000)),
            period("up", 1000, None),
        ];
        let a = availability(&periods, 0, 2000, 2000);
        assert_eq!((a.up_ms, a.down_ms, a.outages), (1600, 400, 1));
        assert_eq!(a.percent(), Some(80.0));
        // A window inside the outage.
        let a = availability(&periods, 700, 900, 2000);
        assert_eq!((a.up_ms, a.down_ms), (0, 200));
        assert_eq!(a.percent(), Some(0.0));
        // An open period runs until now, not to the window's end.
        let a = availability(&periods, 0, 5000, 1500);
        assert_eq!((a.up_ms, a.down_ms), (1100, 400));
    }

    #[test]
    fn nothing_observed_is_no_figure() {
        assert_eq!(availability(&[], 0, 10, 10).percent(), None);
        let before = [period("up", 100, None)];
        assert_eq!(availability(&before, 0, 50, 200).percent(), None);
    }

    #[test]
    fn thirds_round_to_three_decimals() {
        let periods = [period("up", 0, Some(2)), period("down", 2, Some(3))];
        assert_eq!(availability(&periods, 0, 3, 3).percent(), Some(66.667));
    }

    #[test]
    fn maintenance_is_left_out_of_both_sides() {
        // Up 0–600, down 600–1000 inside a window 500–1100, up after.
        let periods = [
            period("up", 0, Some(600)),
            period("down", 600, Some(1000)),
            period("up", 1000, None),
        ];
        let mut spans = HashMap::new();
        spans.insert(DeviceId::from("d"), vec![(500, 1100)]);
        let a = availability_outside(&periods, 0, 2000, 2000, &spans);
        assert_eq!(
            (a.up_ms, a.down_ms, a.maintenance_ms, a.outages),
            (1400, 0, 600, 0)
        );
        assert_eq!(a.percent(), Some(100.0));
        let plain = availability(&periods, 0, 2000, 2000);
        assert_eq!((plain.up_ms, plain.down_ms), (1600, 400));
    }
}
