//! An engine's webhook body read as what merpati's device protocol carries. Messages become
//! items in the documents' shape (`{"type": "whatsapp" | "sms" | "notification", "rid",
//! …}`, the engine's own message id as `rid`, so its retries are one event); session
//! states become connected, pending, disconnected or logged out; anything else signed is a
//! sign of life, or skipped with its reason.

use serde_json::Value;

use crate::Engine;

mod android;
mod evolution;
mod slack;
mod telegram;
mod textbee;
mod waha;

/// What one request said.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// A message, as the item a device would post (`POST /v1/device/messages`).
    Item { key: Option<String>, item: Value },
    /// The engine's session changed state; `at_ms` when the engine dated it.
    State {
        key: Option<String>,
        state: State,
        at_ms: Option<i64>,
    },
    /// Alive and nothing more to say (a ping, an outbound receipt, a bot update).
    Alive { key: Option<String> },
    /// A message the receiver cannot use, or an event merpati does not read.
    Skipped { key: Option<String>, reason: Skip },
    /// Slack's `url_verification`: answer with the challenge.
    Challenge(String),
}

impl Inbound {
    /// The engine's name for the session it came from (which device it is).
    pub fn key(&self) -> Option<&str> {
        match self {
            Inbound::Item { key, .. }
            | Inbound::State { key, .. }
            | Inbound::Alive { key }
            | Inbound::Skipped { key, .. } => key.as_deref(),
            Inbound::Challenge(_) => None,
        }
    }
}

/// An engine's session state, as merpati's presence takes it. `Pending` is a transition
/// (starting, reconnecting): it starts the grace, so a quick reconnect is a blip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Connected,
    Pending,
    Disconnected,
    LoggedOut,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Skip {
    /// Sent by the account itself.
    FromMe,
    Group,
    StatusBroadcast,
    /// Media, a reaction, a sticker: no text to deliver.
    NoText,
    /// The sender has no phone number (a WhatsApp `@lid` without the number beside it).
    NoPhone,
    /// An event merpati does not read.
    UnknownEvent,
    /// A Telegram or Slack message, when the connector was not asked for notifications.
    NotRequested,
}

impl Skip {
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::FromMe => "from_me",
            Skip::Group => "group",
            Skip::StatusBroadcast => "status_broadcast",
            Skip::NoText => "no_text",
            Skip::NoPhone => "no_phone",
            Skip::UnknownEvent => "unknown_event",
            Skip::NotRequested => "not_requested",
        }
    }
}

/// A body that is not the engine's JSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(pub String);

#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Telegram and Slack messages as `notification` items.
    pub notifications: bool,
}

/// What `body` from `engine` says.
pub fn parse(engine: Engine, body: &[u8], options: Options) -> Result<Vec<Inbound>, Malformed> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| Malformed(format!("the body is not JSON: {e}")))?;
    if !v.is_object() {
        return Err(Malformed("the body is not a JSON object".into()));
    }
    match engine {
        Engine::Waha => waha::parse(&v),
        Engine::Evolution => evolution::parse(&v),
        Engine::AndroidSmsGateway => android::parse(&v),
        Engine::Textbee => textbee::parse(&v),
        Engine::Telegram => telegram::parse(&v, options),
        Engine::Slack => slack::parse(&v, options),
    }
}

/// The string at a path of object keys.
fn text<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_str)
}

/// A required string field, or what is wrong.
fn required<'a>(v: &'a Value, path: &[&str]) -> Result<&'a str, Malformed> {
    text(v, path)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Malformed(format!("{} is missing", path.join("."))))
}

/// Unix seconds given as a number (possibly with a fraction) or a string of digits.
fn unix_secs(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// A WhatsApp id's number in E.164 (`6281234@c.us`, `6281234@s.whatsapp.net` →
/// `+6281234`); `None` for groups, broadcasts and `@lid` ids, which carry no number.
fn whatsapp_number(jid: &str) -> Option<String> {
    let (user, server) = jid.split_once('@').unwrap_or((jid, "c.us"));
    // A device suffix (`6281234:12@s.whatsapp.net`) is not part of the number.
    let user = user.split(':').next().unwrap_or(user);
    let is_phone = matches!(server, "c.us" | "s.whatsapp.net")
        && (6..=15).contains(&user.len())
        && user.bytes().all(|b| b.is_ascii_digit());
    is_phone.then(|| format!("+{user}"))
}

/// Why a WhatsApp chat id cannot be a conversation with one phone, if it cannot.
fn whatsapp_skip(jid: &str) -> Option<Skip> {
    if jid == "status@broadcast" {
        Some(Skip::StatusBroadcast)
    } else if jid.ends_with("@g.us") || jid.ends_with("@broadcast") || jid.ends_with("@newsletter")
    {
        Some(Skip::Group)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whatsapp_ids_become_e164() {
        assert_eq!(
            whatsapp_number("6281234567@c.us").as_deref(),
            Some("+6281234567")
        );
        assert_eq!(
            whatsapp_number("6281234567:3@s.whatsapp.net").as_deref(),
            Some("+6281234567")
        );
        assert_eq!(whatsapp_number("123456789012345@lid"), None);
        assert_eq!(whatsapp_number("1203630@g.us"), None);
        assert_eq!(
            whatsapp_skip("status@broadcast"),
            Some(Skip::StatusBroadcast)
        );
        assert_eq!(whatsapp_skip("1203630@g.us"), Some(Skip::Group));
        assert_eq!(whatsapp_skip("62812@c.us"), None);
    }

    #[test]
    fn bodies_that_are_not_objects_are_malformed() {
        for body in [&b"nope"[..], b"[]", b"12"] {
            assert!(parse(Engine::Waha, body, Options::default()).is_err());
        }
    }
}
