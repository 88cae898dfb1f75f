//! Notifiers: where an account's alerts go (a Slack-compatible chat webhook, a Telegram
//! bot, e-mail, a signed webhook), their health, and the schedule notifications retry on.

use serde::{Deserialize, Serialize};

use super::Language;
use crate::ids::NotifierId;

/// Telegram's public Bot API.
pub const TELEGRAM_API: &str = "https://api.telegram.org";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum NotifierKind {
    Slack {
        url: String,
    },
    Telegram {
        bot_token: String,
        chat_id: String,
        api_url: String,
    },
    Email {
        to: Vec<String>,
    },
    Webhook {
        url: String,
        /// `whsec_…`: signs every request per Standard Webhooks.
        secret: String,
    },
}

impl NotifierKind {
    pub fn name(&self) -> &'static str {
        match self {
            NotifierKind::Slack { .. } => "slack",
            NotifierKind::Telegram { .. } => "telegram",
            NotifierKind::Email { .. } => "email",
            NotifierKind::Webhook { .. } => "webhook",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifierHealth {
    pub last_success_at: Option<i64>,
    pub last_failure_at: Option<i64>,
    /// Notifications given up in a row since the last one sent.
    pub failures_in_row: i64,
    pub last_error: Option<String>,
}

impl NotifierHealth {
    pub fn failing(&self) -> bool {
        self.failures_in_row > 0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notifier {
    pub id: NotifierId,
    pub name: String,
    #[serde(flatten)]
    pub kind: NotifierKind,
    /// Over the account's language.
    pub language: Option<Language>,
    #[serde(default)]
    pub health: NotifierHealth,
    pub created_at: i64,
    pub updated_at: i64,
    pub revision: i64,
}

/// Whether a Telegram bot token has the shape Telegram gives them: the bot's number, a
/// colon, and 35 characters of `[A-Za-z0-9_-]`.
pub fn is_telegram_token(token: &str) -> bool {
    let Some((bot, secret)) = token.split_once(':') else {
        return false;
    };
    !bot.is_empty()
        && bot.len() <= 20
        && bot.bytes().all(|b| b.is_ascii_digit())
        && (30..=64).contains(&secret.len())
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A Telegram chat id: a number (negative for groups) or `@channelname`.
pub fn is_telegram_chat(chat: &str) -> bool {
    let digits = chat.strip_prefix('-').unwrap_or(chat);
    (!digits.is_empty() && digits.len() <= 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        || chat.strip_prefix('@').is_some_and(|name| {
            (4..=32).contains(&name.len())
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
}

/// An address an e-mail can go to: `local@domain`, nothing a header could be bent with.
pub fn is_email_address(addr: &str) -> bool {
    let Some((local, domain)) = addr.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && local.len() <= 64
        && domain.contains('.')
        && domain.len() <= 253
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && addr
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"<>,;\"()[]\\".contains(&b))
}

/// Delays after each failed attempt of a notification: alerts are urgent, so faster than
/// deliveries' (about 5 s, 15 s, 1 min, 5 min, 15 min, 30 min), then it is given up.
pub const RETRY_SCHEDULE_MS: [i64; 6] = [5_000, 15_000, 60_000, 300_000, 900_000, 1_800_000];

/// When attempt number `attempts` (1 = the first) failed at `now`: the next try, or None
/// to give up. A `Retry-After` is honoured when it asks for longer, up to an hour.
pub fn next_try(attempts: i64, now: i64, retry_after_ms: Option<i64>) -> Option<i64> {
    let delay = *RETRY_SCHEDULE_MS.get(usize::try_from(attempts - 1).ok()?)?;
    let asked = retry_after_ms.unwrap_or(0).clamp(0, 3_600_000);
    Some(now + delay.max(asked))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn telegram_tokens_and_chats_have_their_shapes() {
        assert!(is_telegram_token(
            "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw_"
        ));
        assert!(!is_telegram_token("123456789"));
        assert!(!is_telegram_token(
            "bot:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw_"
        ));
        assert!(!is_telegram_token("123:short"));
        assert!(!is_telegram_token(
            "123:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsa/w"
        ));
        assert!(is_telegram_chat("-1001234567890"));
        assert!(is_telegram_chat("@merpati_ops"));
        assert!(!is_telegram_chat("ops room"));
    }

    #[test]
    fn email_addresses_cannot_carry_headers() {
        assert!(is_email_address("ops@example.com"));
        assert!(!is_email_address("ops@localhost"));
        assert!(!is_email_address("ops@example.com\r\nBcc: x@y.z"));
        assert!(!is_email_address("Ops <ops@example.com>"));
    }

    #[test]
    fn notifications_retry_fast_then_give_up() {
        assert_eq!(next_try(1, 0, None), Some(5_000));
        assert_eq!(next_try(2, 0, None), Some(15_000));
        assert_eq!(next_try(3, 0, Some(120_000)), Some(120_000));
        assert_eq!(next_try(6, 0, None), Some(1_800_000));
        assert_eq!(next_try(7, 0, None), None);
    }
}
