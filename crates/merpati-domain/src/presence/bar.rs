//! Uptime bars: a window cut into equal segments, each told as one state, the way an
//! operator reads a device's last day or month at a glance.
//!
//! A segment is `down` when the device was down in it outside maintenance, `maintenance`
//! when it was down only inside maintenance, `pending` when it was lost and back inside the
//! grace (a blip) and never announced down, `up` when it was up, and `none` when nothing was
//! observed (before the device was first seen, or still to come).

use super::history::overlap;
use super::{Blip, Period, PeriodState};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentState {
    None,
    Up,
    Pending,
    Down,
    Maintenance,
}

impl SegmentState {
    pub fn as_str(self) -> &'static str {
        match self {
            SegmentState::None => "none",
            SegmentState::Up => "up",
            SegmentState::Pending => "pending",
            SegmentState::Down => "down",
            SegmentState::Maintenance => "maintenance",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub start: i64,
    pub end: i64,
    pub state: SegmentState,
    pub up_ms: i64,
    /// Down outside maintenance.
    pub down_ms: i64,
    /// Down inside maintenance.
    pub maintenance_ms: i64,
    /// Disconnections that came back inside the grace.
    pub blips: usize,
}

/// One device's bar over [from, to) in `segments` equal parts (the last takes the rest).
/// `maintenance` are the device's merged maintenance spans; an open period runs until `now`.
pub fn uptime_bar(
    periods: &[Period],
    blips: &[Blip],
    maintenance: &[(i64, i64)],
    from: i64,
    to: i64,
    now: i64,
    segments: usize,
) -> Vec<Segment> {
    let segments = segments.max(1);
    let width = ((to - from) / segments as i64).max(1);
    (0..segments)
        .map(|i| {
            let start = from + width * i as i64;
            let end = if i + 1 == segments { to } else { start + width };
            segment(periods, blips, maintenance, start, end, now)
        })
        .collect()
}

fn segment(
    periods: &[Period],
    blips: &[Blip],
    maintenance: &[(i64, i64)],
    from: i64,
    to: i64,
    now: i64,
) -> Segment {
    let mut s = Segment {
        start: from,
        end: to,
        state: SegmentState::None,
        up_ms: 0,
        down_ms: 0,
        maintenance_ms: 0,
        blips: 0,
    };
    for p in periods {
        let start = p.started_at.max(from);
        let end = p.ended_at.unwrap_or(now).min(to);
        if end <= start {
            continue;
        }
        match p.state {
            PeriodState::Up => s.up_ms += end - start,
            PeriodState::Down => {
                let inside = overlap(maintenance, start, end);
                s.maintenance_ms += inside;
                s.down_ms += end - start - inside;
            }
        }
    }
    s.blips = blips
        .iter()
        .filter(|b| b.started_at < to && b.ended_at > from)
        .count();
    s.state = if s.down_ms > 0 {
        SegmentState::Down
    } else if s.maintenance_ms > 0 {
        SegmentState::Maintenance
    } else if s.blips > 0 {
        SegmentState::Pending
    } else if s.up_ms > 0 {
        SegmentState::Up
    } else {
        SegmentState::None
    };
    s
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

    fn blip(start: i64, end: i64) -> Blip {
        Blip {
            device_id: "d".into(),
            started_at: start,
            ended_at: end,
            reason: "link_closed".into(),
        }
    }

    fn states(bar: &[Segment]) -> Vec<&'static str> {
        bar.iter().map(|s| s.state.as_str()).collect()
    }

    #[test]
    fn each_segment_tells_the_worst_that_happened_in_it() {
        // First seen at 100; down 350–420; a blip at 520; up since, now is 800.
        let periods = [
            period("up", 100, Some(350)),
            period("down", 350, Some(420)),
            period("up", 420, None),
        ];
        let blips = [blip(520, 525)];
        let bar = uptime_bar(&periods, &blips, &[], 0, 1000, 800, 10);
        assert_eq!(
            states(&bar),
            ["none", "up", "up", "down", "down", "pending", "up", "up", "none", "none"]
        );
        assert_eq!((bar[3].up_ms, bar[3].down_ms), (50, 50));
        assert_eq!((bar[4].up_ms, bar[4].down_ms), (80, 20));
        assert_eq!(bar[5].blips, 1);
        // The open period runs until now, not past it.
        assert_eq!(bar[7].up_ms, 100);
        assert_eq!(bar[8].up_ms, 0);
    }

    #[test]
    fn downtime_inside_maintenance_is_told_apart() {
        let periods = [period("up", 0, Some(100)), period("down", 100, Some(300))];
        // Maintenance covers 100–200 only: the first down segment is maintenance, the second down.
        let bar = uptime_bar(&periods, &[], &[(100, 200)], 0, 300, 300, 3);
        assert_eq!(states(&bar), ["up", "maintenance", "down"]);
        assert_eq!(bar[1].maintenance_ms, 100);
        assert_eq!(bar[2].down_ms, 100);
    }

    #[test]
    fn the_last_segment_takes_the_rest() {
        let bar = uptime_bar(&[period("up", 0, None)], &[], &[], 0, 10, 10, 3);
        let bounds: Vec<_> = bar.iter().map(|s| (s.start, s.end)).collect();
        assert_eq!(bounds, [(0, 3), (3, 6), (6, 10)]);
        assert_eq!(bar.iter().map(|s| s.up_ms).sum::<i64>(), 10);
    }
}
