//! The webhooks of the engines people already run, read as merpati reads a device: each
//! engine's signature checked its own way ([`verify`]), and each body turned into what the
//! device protocol carries ([`parse`]): items in the documents' shape, states of the
//! engine's session, signs of life, and what was skipped and why.
//!
//! Pure: bytes, headers and a time in; no I/O, no clock, no storage. The server binds an
//! engine's session (its *key*: WAHA's session, Evolution's instance, the Android app's
//! device, …) to a merpati device and takes it from there.

use std::fmt;

pub mod parse;
pub mod redact;
pub mod status;
mod time;
pub mod verify;

pub use parse::{parse, Inbound, Malformed, Options, Skip, State};
pub use verify::{verify, Refused};

/// The engines merpati takes webhooks from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Engine {
    Waha,
    Evolution,
    AndroidSmsGateway,
    Textbee,
    Telegram,
    Slack,
}

pub const ENGINES: [Engine; 6] = [
    Engine::Waha,
    Engine::Evolution,
    Engine::AndroidSmsGateway,
    Engine::Textbee,
    Engine::Telegram,
    Engine::Slack,
];

impl Engine {
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Waha => "waha",
            Engine::Evolution => "evolution",
            Engine::AndroidSmsGateway => "android-sms-gateway",
            Engine::Textbee => "textbee",
            Engine::Telegram => "telegram",
            Engine::Slack => "slack",
        }
    }

    pub fn parse(s: &str) -> Option<Engine> {
        ENGINES.into_iter().find(|e| e.as_str() == s)
    }

    /// What its messages become: `whatsapp`, `sms`, or nothing by default (Telegram and
    /// Slack have no message type with a phone number; `notification` on request).
    pub fn item_type(self) -> Option<&'static str> {
        match self {
            Engine::Waha | Engine::Evolution => Some("whatsapp"),
            Engine::AndroidSmsGateway | Engine::Textbee => Some("sms"),
            Engine::Telegram | Engine::Slack => None,
        }
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request's headers, looked up case-insensitively.
#[derive(Debug, Default, Clone)]
pub struct Headers<'a>(Vec<(&'a str, &'a str)>);

impl<'a> Headers<'a> {
    pub fn new(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Headers(pairs.into_iter().collect())
    }

    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engines_read_back_their_names() {
        for e in ENGINES {
            assert_eq!(Engine::parse(e.as_str()), Some(e));
        }
        assert_eq!(Engine::parse("WAHA"), None);
    }

    #[test]
    fn headers_ignore_case() {
        let h = Headers::new([("X-Webhook-Hmac", "ab")]);
        assert_eq!(h.get("x-webhook-hmac"), Some("ab"));
        assert_eq!(h.get("x-other"), None);
    }
}
