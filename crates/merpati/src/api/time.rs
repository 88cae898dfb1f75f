//! Times and durations as the API shows them: RFC 3339 with milliseconds, in UTC (payload
//! timestamps stay Unix seconds, as the documents say), and durations like `"1m 30s"`.

use std::time::{Duration, UNIX_EPOCH};

pub fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// A time given as RFC 3339 or as Unix seconds, in ms; `None` when it is neither.
pub fn parse_time(raw: &str) -> Option<i64> {
    if let Ok(secs) = raw.parse::<i64>() {
        return Some(secs * 1000);
    }
    humantime::parse_rfc3339_weak(raw)
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64)
}

/// A millisecond setting as a duration like `"1m 30s"`.
pub fn duration(ms: i64) -> String {
    humantime::format_duration(Duration::from_millis(ms.max(0) as u64)).to_string()
}

/// `serialize_with` helpers for millisecond fields shown as RFC 3339.
pub mod as_rfc3339 {
    pub fn serialize<S: serde::Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::rfc3339(*ms))
    }

    pub mod option {
        pub fn serialize<S: serde::Serializer>(ms: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
            match ms {
                Some(ms) => s.serialize_str(&super::super::rfc3339(*ms)),
                None => s.serialize_none(),
            }
        }
    }
}

/// `serialize_with` helper for millisecond settings shown as durations.
pub mod as_duration {
    pub mod option {
        pub fn serialize<S: serde::Serializer>(ms: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
            match ms {
                Some(ms) => s.serialize_str(&super::super::duration(*ms)),
                None => s.serialize_none(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_and_show() {
        assert_eq!(rfc3339(1_645_684_231_500), "2022-02-24T06:30:31.500Z");
        assert_eq!(parse_time("1645684231"), Some(1_645_684_231_000));
        assert_eq!(
            parse_time("2022-02-24T06:30:31.500Z"),
            Some(1_645_684_231_500)
        );
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(duration(90_000), "1m 30s");
    }
}
