//! Maintenance windows: one-off, or weekly (days, a local start time, a duration) in an
//! IANA time zone, crossing midnight allowed. Inside one, a device's drop alerts nobody;
//! its downtime is still recorded, and marked.

use serde::{Deserialize, Serialize};

use super::Match;
use crate::device::DeviceContext;
use crate::ids::WindowId;

/// The longest a window may last: a weekly one longer than a week would never end.
pub const MAX_DURATION_MS: i64 = 7 * 24 * 3_600_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Schedule {
    Once {
        starts_at: i64,
        ends_at: i64,
    },
    Weekly {
        /// Monday = 0 … Sunday = 6.
        days: Vec<u8>,
        /// Minutes after local midnight.
        start_minute: u16,
        duration_ms: i64,
        timezone: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceWindow {
    pub id: WindowId,
    pub name: Option<String>,
    #[serde(rename = "match")]
    pub matches: Match,
    pub schedule: Schedule,
    pub created_at: i64,
    pub updated_at: i64,
    pub revision: i64,
}

pub const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// A day's name (`mon` … `sun`) as its number.
pub fn parse_day(name: &str) -> Option<u8> {
    DAY_NAMES
        .iter()
        .position(|d| d.eq_ignore_ascii_case(name))
        .map(|i| i as u8)
}

/// The time zone, if the name is one.
pub fn time_zone(name: &str) -> Option<jiff::tz::TimeZone> {
    jiff::tz::TimeZone::get(name).ok()
}

fn weekday_number(w: jiff::civil::Weekday) -> u8 {
    w.to_monday_zero_offset() as u8
}

impl Schedule {
    /// Every occurrence that overlaps [from, to), as (start, end) in ms, in order.
    pub fn occurrences(&self, from: i64, to: i64) -> Vec<(i64, i64)> {
        match self {
            Schedule::Once { starts_at, ends_at } => {
                if *starts_at < to && *ends_at > from {
                    vec![(*starts_at, *ends_at)]
                } else {
                    Vec::new()
                }
            }
            Schedule::Weekly {
                days,
                start_minute,
                duration_ms,
                timezone,
            } => {
                let Some(tz) = time_zone(timezone) else {
                    return Vec::new();
                };
                let Ok(first) = jiff::Timestamp::from_millisecond(from - duration_ms) else {
                    return Vec::new();
                };
                let mut date = tz.to_datetime(first).date();
                let mut out = Vec::new();
                loop {
                    let Ok(start) = date
                        .at((start_minute / 60) as i8, (start_minute % 60) as i8, 0, 0)
                        .to_zoned_datetime(tz.clone())
                    else {
                        break;
                    };
                    let start = start.timestamp().as_millisecond();
                    if start >= to {
                        break;
                    }
                    let end = start + duration_ms;
                    if days.contains(&weekday_number(date.weekday())) && end > from {
                        out.push((start, end));
                    }
                    match date.tomorrow() {
                        Ok(next) => date = next,
                        Err(_) => break,
                    }
                }
                out
            }
        }
    }

    /// The occurrence `at` falls in, if any (the one ending last, should two overlap).
    pub fn active_at(&self, at: i64) -> Option<(i64, i64)> {
        self.occurrences(at, at + 1)
            .into_iter()
            .filter(|(s, e)| *s <= at && at < *e)
            .max_by_key(|(_, e)| *e)
    }
}

impl MaintenanceWindow {
    pub fn applies_to(&self, d: &DeviceContext) -> bool {
        self.matches.matches(d)
    }
}

/// The window `d` is in at `at`, and when the union of the windows covering it ends
/// (overlapping windows count as their union).
pub fn covering(
    windows: &[MaintenanceWindow],
    d: &DeviceContext,
    at: i64,
) -> Option<(crate::ids::WindowId, i64)> {
    let mine: Vec<&MaintenanceWindow> = windows.iter().filter(|w| w.applies_to(d)).collect();
    let mut found: Option<(crate::ids::WindowId, i64)> = None;
    let mut t = at;
    // Follow the chain: the end of one window may fall inside another.
    for _ in 0..64 {
        let next = mine
            .iter()
            .filter_map(|w| w.schedule.active_at(t).map(|(_, end)| (w.id.clone(), end)))
            .max_by_key(|(_, end)| *end);
        match next {
            Some((id, end)) if end > t => {
                found = Some((found.map_or(id, |(first, _)| first), end));
                t = end;
            }
            _ => break,
        }
    }
    found
}

/// The parts of [from, to) inside any of `windows` for `d`, merged, in order.
pub fn covered_spans(
    windows: &[MaintenanceWindow],
    d: &DeviceContext,
    from: i64,
    to: i64,
) -> Vec<(i64, i64)> {
    let mut spans: Vec<(i64, i64)> = windows
        .iter()
        .filter(|w| w.applies_to(d))
        .flat_map(|w| w.schedule.occurrences(from, to))
        .map(|(s, e)| (s.max(from), e.min(to)))
        .filter(|(s, e)| s < e)
        .collect();
    spans.sort();
    let mut merged: Vec<(i64, i64)> = Vec::new();
    for (s, e) in spans {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    merged
}

/// How much of [from, to) the spans cover.
pub fn overlap_ms(spans: &[(i64, i64)], from: i64, to: i64) -> i64 {
    spans
        .iter()
        .map(|(s, e)| (e.min(&to) - s.max(&from)).max(0))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(rfc3339: &str) -> i64 {
        rfc3339.parse::<jiff::Timestamp>().unwrap().as_millisecond()
    }

    fn weekly(days: &[&str], start: u16, hours: i64, tz: &str) -> Schedule {
        Schedule::Weekly {
            days: days.iter().map(|d| parse_day(d).unwrap()).collect(),
            start_minute: start,
            duration_ms: hours * 3_600_000,
            timezone: tz.into(),
        }
    }

    #[test]
    fn a_weekly_window_is_local_to_its_time_zone() {
        // Wednesdays 22:00 to 02:00 in Jakarta (UTC+7): 15:00 to 19:00 UTC.
        let s = weekly(&["wed"], 22 * 60, 4, "Asia/Jakarta");
        // 2026-12-02 is a Wednesday.
        assert_eq!(
            s.active_at(ms("2026-12-02T16:00:00Z")),
            Some((ms("2026-12-02T15:00:00Z"), ms("2026-12-02T19:00:00Z")))
        );
        assert_eq!(s.active_at(ms("2026-12-02T14:59:59Z")), None);
        assert_eq!(s.active_at(ms("2026-12-02T19:00:00Z")), None);
        // Crossing midnight: Thursday 01:00 local belongs to Wednesday's window.
        assert!(s.active_at(ms("2026-12-02T18:00:00Z")).is_some());
        assert_eq!(s.active_at(ms("2026-12-03T16:00:00Z")), None);
        assert_eq!(
            s.occurrences(ms("2026-12-01T00:00:00Z"), ms("2026-12-16T00:00:00Z"))
                .len(),
            2
        );
    }

    #[test]
    fn a_zone_with_daylight_saving_keeps_local_time() {
        // Sundays 01:00 for two hours in New York: 06:00 UTC in winter, 05:00 in summer.
        let s = weekly(&["sun"], 60, 2, "America/New_York");
        assert!(s.active_at(ms("2026-01-04T06:30:00Z")).is_some());
        assert!(s.active_at(ms("2026-07-05T05:30:00Z")).is_some());
        assert!(s.active_at(ms("2026-07-05T07:30:00Z")).is_none());
    }

    #[test]
    fn one_off_windows_and_their_union() {
        let d = crate::alert::test_device("wa");
        let w = |id: &str, s: &str, e: &str| MaintenanceWindow {
            id: WindowId::from(id),
            name: None,
            matches: Match::default(),
            schedule: Schedule::Once {
                starts_at: ms(s),
                ends_at: ms(e),
            },
            created_at: 0,
            updated_at: 0,
            revision: 0,
        };
        let windows = [
            w("a", "2026-12-01T10:00:00Z", "2026-12-01T11:00:00Z"),
            w("b", "2026-12-01T10:30:00Z", "2026-12-01T12:00:00Z"),
        ];
        let (id, end) = covering(&windows, &d, ms("2026-12-01T10:10:00Z")).unwrap();
        assert_eq!((id.as_str(), end), ("a", ms("2026-12-01T12:00:00Z")));
        assert_eq!(covering(&windows, &d, ms("2026-12-01T12:00:00Z")), None);
        let spans = covered_spans(
            &windows,
            &d,
            ms("2026-12-01T00:00:00Z"),
            ms("2026-12-02T00:00:00Z"),
        );
        assert_eq!(
            spans,
            vec![(ms("2026-12-01T10:00:00Z"), ms("2026-12-01T12:00:00Z"))]
        );
        assert_eq!(
            overlap_ms(
                &spans,
                ms("2026-12-01T11:00:00Z"),
                ms("2026-12-01T13:00:00Z")
            ),
            3_600_000
        );
    }

    #[test]
    fn unknown_zones_and_days_are_refused() {
        assert!(time_zone("Asia/Jakarta").is_some());
        assert!(time_zone("Mars/Olympus_Mons").is_none());
        assert_eq!(parse_day("Sun"), Some(6));
        assert_eq!(parse_day("someday"), None);
    }
}
