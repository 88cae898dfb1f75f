//! One attempt to an e-mail endpoint (`mailto:`): a readable summary of the event, and its
//! exact JSON payload attached, through the server's SMTP settings. Its outcome is recorded
//! as an HTTP attempt's is: the server's 2xx reply is a success, 5xx will not change, and
//! anything else is tried again on the same schedule.

use std::time::{Duration, Instant};

use merpati_domain::delivery::DueDelivery;
use merpati_domain::retry::AttemptResult;
use serde_json::Value;

use super::send::{render_body, AttemptReport};
use crate::mail::Mailer;

/// A reply's first part kept in the attempt log, as an HTTP answer's is.
const REPLY_BYTES: usize = 4096;

pub(crate) async fn attempt(
    mailer: Option<&Mailer>,
    job: &DueDelivery,
    recipients: Result<Vec<String>, String>,
    timeout: Duration,
    started_at_ms: i64,
) -> AttemptReport {
    let clock = Instant::now();
    let mut report = AttemptReport::begun(started_at_ms);
    let (Some(mailer), Ok(to)) = (mailer, recipients) else {
        report.result = AttemptResult::Unsendable;
        report.error_kind = Some("smtp");
        report.error = Some("no SMTP settings, or no valid address".into());
        return report;
    };
    let (json, _) = render_body(&job.payload, job.endpoint.format, None);
    let (subject, text) = summary(&job.payload, job.event_id.as_str());
    let sent = tokio::time::timeout(
        timeout,
        mailer.send_event(
            &to,
            &subject,
            &format!("{}.{}", job.event_id, job.attempt),
            text,
            &format!("{}.json", job.event_id),
            json,
        ),
    )
    .await;
    match sent {
        Ok(Ok(reply)) => {
            report.result = AttemptResult::Status(250);
            report.status_code = Some(250);
            report.response_body = Some(reply.chars().take(REPLY_BYTES).collect());
        }
        Ok(Err(e)) => {
            report.result = if e.permanent {
                AttemptResult::Unsendable
            } else {
                AttemptResult::NoAnswer
            };
            report.error_kind = Some("smtp");
            report.error = Some(e.message);
        }
        Err(_) => {
            report.result = AttemptResult::NoAnswer;
            report.error_kind = Some("timeout");
            report.error = Some(format!("no reply within {timeout:?}"));
        }
    }
    report.duration_ms = clock.elapsed().as_millis() as i64;
    report
}

/// A subject and a plain-text summary of a payload: its type, then each field of its data
/// (or of itself) on a line.
pub(crate) fn summary(payload: &str, event_id: &str) -> (String, String) {
    let v: Value = serde_json::from_str(payload).unwrap_or(Value::Null);
    let kind = v["type"]
        .as_str()
        .or_else(|| v["event"].as_str())
        .unwrap_or("event");
    let fields = if v["data"].is_object() {
        &v["data"]
    } else {
        &v
    };
    let mut text = format!("merpati: {kind}\nwebhook-id: {event_id}\n\n");
    let mut about = None;
    if let Some(map) = fields.as_object() {
        for (k, value) in map {
            let shown = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if about.is_none() && matches!(k.as_str(), "phone" | "device" | "title") {
                about = Some(shown.clone());
            }
            text.push_str(&format!("{k}: {shown}\n"));
        }
    }
    text.push_str("\nThe exact payload is attached.\n");
    let subject = match about {
        Some(a) => format!("merpati: {kind} from {a}"),
        None => format!("merpati: {kind}"),
    };
    (subject, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_reads_the_payload_s_fields() {
        let (subject, text) = summary(
            r#"{"type":"sms","data":{"id":2,"phone":"+6281","message":"Halo"}}"#,
            "evt_1",
        );
        assert_eq!(subject, "merpati: sms from +6281");
        assert!(text.contains("webhook-id: evt_1\n"), "{text}");
        assert!(text.contains("message: Halo\n"), "{text}");
        let (subject, _) = summary(r#"{"event":"device.connected","device":"d1"}"#, "evt_2");
        assert_eq!(subject, "merpati: device.connected from d1");
    }
}
