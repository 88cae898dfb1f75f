//! Times as engines send them: ISO 8601 with an offset (the Android app's `receivedAt`,
//! in the phone's own zone), read as Unix seconds.

use std::time::UNIX_EPOCH;

/// `2024-06-22T15:46:11.000+07:00` (or `Z`) as Unix seconds.
pub fn iso8601_secs(raw: &str) -> Option<i64> {
    let raw = raw.trim();
    let (local, offset_secs) = if let Some(local) = raw.strip_suffix('Z') {
        (local, 0)
    } else {
        let at = raw.len().checked_sub(6)?;
        let (local, offset) = raw.split_at(at);
        let sign = match offset.as_bytes().first()? {
            b'+' => 1,
            b'-' => -1,
            _ => return None,
        };
        let (h, m) = offset[1..].split_once(':')?;
        let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
        if h > 23 || m > 59 {
            return None;
        }
        (local, sign * (h * 3600 + m * 60))
    };
    let utc = humantime::parse_rfc3339_weak(local).ok()?;
    let secs = utc.duration_since(UNIX_EPOCH).ok()?.as_secs() as i64;
    Some(secs - offset_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_taken_away() {
        assert_eq!(
            iso8601_secs("2024-06-22T15:46:11.000+07:00"),
            Some(1_719_045_971)
        );
        assert_eq!(iso8601_secs("2024-06-22T08:46:11Z"), Some(1_719_045_971));
        assert_eq!(
            iso8601_secs("2024-06-22T03:46:11-05:00"),
            Some(1_719_045_971)
        );
        assert_eq!(iso8601_secs("yesterday"), None);
        assert_eq!(iso8601_secs("2024-06-22T15:46:11+25:00"), None);
    }
}
