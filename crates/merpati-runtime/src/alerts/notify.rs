//! Sending one notification to one notifier: a Slack-compatible webhook, Telegram's
//! `sendMessage`, e-mail over SMTP, or a webhook signed per Standard Webhooks. HTTP goes
//! through the delivery client and its private-address guard; nothing here touches the
//! database.

use std::time::Duration;

use merpati_domain::alert::engine::SendResult;
use merpati_domain::alert::{Notification, Notifier, NotifierKind};
use merpati_webhooks::signing::{Webhook, HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP};

use crate::delivery::guard::Guard;
use crate::delivery::send::{self, Client, Posted};
use crate::mail::{MailError, Mailer};

/// What sending needs: the guarded client, the mailer (if SMTP is set up), the timeout.
pub struct Sender {
    pub client: Client,
    pub guard: Guard,
    pub mailer: Option<Mailer>,
    pub timeout: Duration,
}

/// The outcome of one attempt, and the answer (for `…/test`, which shows it).
#[derive(Debug, Clone)]
pub struct Attempted {
    pub result: SendResult,
    pub status_code: Option<u16>,
    pub answer: Option<String>,
}

impl Sender {
    pub async fn send(&self, notifier: &Notifier, n: &Notification, now_ms: i64) -> Attempted {
        let m = &n.message;
        match &notifier.kind {
            NotifierKind::Slack { url } => {
                let body = serde_json::to_vec(&m.slack()).expect("JSON");
                self.http(url, &[], body, false).await
            }
            NotifierKind::Telegram {
                bot_token,
                chat_id,
                api_url,
            } => {
                let url = format!(
                    "{}/bot{bot_token}/sendMessage",
                    api_url.trim_end_matches('/')
                );
                let body = serde_json::json!({
                    "chat_id": chat_id,
                    "text": m.telegram_html(),
                    "parse_mode": "HTML",
                    "link_preview_options": {"is_disabled": true},
                });
                let body = serde_json::to_vec(&body).expect("JSON");
                let mut attempted = self.http(&url, &[], body, true).await;
                // Never show the bot token in an error kept in the timeline.
                if let SendResult::Failed { error, .. } = &mut attempted.result {
                    *error = error.replace(bot_token.as_str(), "<bot token>");
                }
                attempted
            }
            NotifierKind::Webhook { url, secret } => {
                let timestamp = now_ms.div_euclid(1000);
                let body = serde_json::to_vec(&m.webhook(timestamp)).expect("JSON");
                let signature = match Webhook::new(secret) {
                    Ok(w) => w.sign(n.id.as_str(), timestamp, &body),
                    Err(e) => return failed(format!("the notifier's secret: {e}"), true, None),
                };
                let headers = [
                    (HEADER_ID, n.id.to_string()),
                    (HEADER_TIMESTAMP, timestamp.to_string()),
                    (HEADER_SIGNATURE, signature),
                ];
                self.http(url, &headers, body, false).await
            }
            NotifierKind::Email { to } => {
                let Some(mailer) = &self.mailer else {
                    return failed(
                        "e-mail is not set up: set alerts.smtp_url and alerts.smtp_from".into(),
                        true,
                        None,
                    );
                };
                match mailer.send(to, n).await {
                    Ok(reply) => Attempted {
                        result: SendResult::Sent,
                        status_code: None,
                        answer: Some(reply),
                    },
                    Err(MailError { message, permanent }) => failed(message, permanent, None),
                }
            }
        }
    }

    async fn http(
        &self,
        url: &str,
        headers: &[(&'static str, String)],
        body: Vec<u8>,
        telegram: bool,
    ) -> Attempted {
        let posted = send::post(&self.client, &self.guard, url, headers, body, self.timeout).await;
        verdict(posted, telegram)
    }
}

fn failed(error: String, permanent: bool, status: Option<u16>) -> Attempted {
    Attempted {
        result: SendResult::Failed {
            error,
            permanent,
            retry_after_ms: None,
        },
        status_code: status,
        answer: None,
    }
}

/// 2xx is sent; no answer, 408, 409, 425, 429 and 5xx are tried again (honouring
/// `Retry-After`, or Telegram's `parameters.retry_after`); any other answer will not change.
fn verdict(p: Posted, telegram: bool) -> Attempted {
    let Some(status) = p.status else {
        let (kind, why) = p.error.unwrap_or(("request", "no answer".into()));
        return failed(
            format!("{kind}: {why}"),
            kind == "forbidden_address" || kind == "request",
            None,
        );
    };
    if (200..300).contains(&status) {
        return Attempted {
            result: SendResult::Sent,
            status_code: Some(status),
            answer: Some(p.body),
        };
    }
    let mut retry_after_ms = p.retry_after.map(|d| d.as_millis() as i64);
    if telegram && retry_after_ms.is_none() {
        retry_after_ms = serde_json::from_str::<serde_json::Value>(&p.body)
            .ok()
            .and_then(|v| v["parameters"]["retry_after"].as_i64())
            .map(|s| s * 1000);
    }
    let transient = matches!(status, 408 | 409 | 425 | 429) || status >= 500;
    let snippet: String = p.body.chars().take(300).collect();
    Attempted {
        result: SendResult::Failed {
            error: format!("HTTP {status}: {snippet}"),
            permanent: !transient,
            retry_after_ms,
        },
        status_code: Some(status),
        answer: Some(p.body),
    }
}
