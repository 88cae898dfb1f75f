//! What to do after an attempt: pure, so the whole policy is unit-tested without a network.

use std::time::Duration;

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    /// The receiver answered with this status.
    Status(u16),
    /// No usable answer (timeout, refused connection, broken response, …).
    NoAnswer,
    /// Something on our side makes retrying pointless (e.g. an unusable secret).
    Unsendable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextStep {
    Succeeded,
    RetryAt(i64),
    Failed,
}

/// The longest `Retry-After` honoured; a receiver asking for more is retried after this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Client errors that may go away on their own: timeout, conflict, too early, too many.
const RETRYABLE_4XX: &[u16] = &[408, 409, 425, 429];

/// `attempt` is the number of the attempt just made (1 for the first). `schedule[n-1]` is the
/// delay before attempt n+1, spread by ±20% with `jitter` in [0, 1) so that receivers coming
/// back from an outage are not hit by every retry at once. `Retry-After` on 429 and 503
/// replaces the scheduled delay.
pub fn next_step(
    attempt: i64,
    result: &AttemptResult,
    retry_after: Option<Duration>,
    schedule: &[Duration],
    now_ms: i64,
    jitter: f64,
) -> NextStep {
    match result {
        AttemptResult::Status(s) if (200..300).contains(s) => return NextStep::Succeeded,
        AttemptResult::Status(s) if (400..500).contains(s) && !RETRYABLE_4XX.contains(s) => {
            return NextStep::Failed
        }
        AttemptResult::Unsendable => return NextStep::Failed,
        _ => {}
    }
    let Some(scheduled) = usize::try_from(attempt - 1)
        .ok()
        .and_then(|i| schedule.get(i))
    else {
        return NextStep::Failed;
    };
    let honours_retry_after = matches!(result, AttemptResult::Status(429 | 503));
    let delay = match retry_after.filter(|_| honours_retry_after) {
        Some(asked) => asked.min(MAX_RETRY_AFTER),
        None => scheduled.mul_f64(0.8 + 0.4 * jitter.clamp(0.0, 1.0)),
    };
    NextStep::RetryAt(now_ms + delay.as_millis() as i64)
}

/// `Retry-After`: delay seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> Vec<Duration> {
        [5, 300, 1800]
            .into_iter()
            .map(Duration::from_secs)
            .collect()
    }

    #[test]
    fn success_is_final() {
        for s in [200, 201, 204, 299] {
            assert_eq!(
                next_step(1, &AttemptResult::Status(s), None, &schedule(), 0, 0.5),
                NextStep::Succeeded
            );
        }
    }

    #[test]
    fn most_client_errors_are_not_retried() {
        for s in [400, 401, 403, 404, 410, 413, 422] {
            assert_eq!(
                next_step(1, &AttemptResult::Status(s), None, &schedule(), 0, 0.5),
                NextStep::Failed,
                "{s}"
            );
        }
        for s in [408, 409, 425, 429] {
            assert_eq!(
                next_step(1, &AttemptResult::Status(s), None, &schedule(), 0, 0.5),
                NextStep::RetryAt(5000),
                "{s}"
            );
        }
    }

    #[test]
    fn server_errors_follow_the_schedule_with_jitter() {
        let r = AttemptResult::Status(500);
        assert_eq!(
            next_step(1, &r, None, &schedule(), 1000, 0.5),
            NextStep::RetryAt(6000)
        );
        assert_eq!(
            next_step(1, &r, None, &schedule(), 0, 0.0),
            NextStep::RetryAt(4000)
        );
        assert_eq!(
            next_step(1, &r, None, &schedule(), 0, 1.0),
            NextStep::RetryAt(6000)
        );
        assert_eq!(
            next_step(2, &r, None, &schedule(), 0, 0.5),
            NextStep::RetryAt(300_000)
        );
        assert_eq!(
            next_step(3, &AttemptResult::NoAnswer, None, &schedule(), 0, 0.5),
            NextStep::RetryAt(1_800_000)
        );
        assert_eq!(
            next_step(4, &r, None, &schedule(), 0, 0.5),
            NextStep::Failed
        );
        assert_eq!(next_step(1, &r, None, &[], 0, 0.5), NextStep::Failed);
    }

    #[test]
    fn retry_after_is_honoured_on_429_and_503_only() {
        let asked = Some(Duration::from_secs(42));
        for s in [429, 503] {
            assert_eq!(
                next_step(1, &AttemptResult::Status(s), asked, &schedule(), 0, 0.5),
                NextStep::RetryAt(42_000)
            );
        }
        assert_eq!(
            next_step(1, &AttemptResult::Status(500), asked, &schedule(), 0, 0.5),
            NextStep::RetryAt(5000)
        );
        let huge = Some(Duration::from_secs(10 * 24 * 3600));
        assert_eq!(
            next_step(1, &AttemptResult::Status(429), huge, &schedule(), 0, 0.5),
            NextStep::RetryAt(MAX_RETRY_AFTER.as_millis() as i64)
        );
        // Retry-After does not add retries beyond the schedule.
        assert_eq!(
            next_step(4, &AttemptResult::Status(429), asked, &schedule(), 0, 0.5),
            NextStep::Failed
        );
    }

    #[test]
    fn retry_after_parses_seconds_and_dates() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
