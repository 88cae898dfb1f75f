//! Each engine's own proof that a request is its: a MAC of the body (WAHA, the Android app,
//! textbee), of the body with a timestamp (the Android app, Slack, both with a bounded
//! clock skew), or a shared secret sent as a header (Telegram, and Evolution, which cannot
//! sign). Every comparison is in constant time, and a connector's secrets are tried in
//! turn, so a rotation keeps the old one working through its grace.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

use crate::{Engine, Headers};

/// How far a signed timestamp may be from now, either way.
pub const MAX_SKEW_SECS: i64 = 300;

/// The header Evolution API is told to send (it has no signature of its own).
pub const EVOLUTION_SECRET_HEADER: &str = "X-Merpati-Secret";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    #[error("{0} is not a valid signature")]
    Malformed(&'static str),
    #[error("the signature does not match")]
    Mismatch,
    #[error("the signed timestamp is more than 5 minutes from now")]
    Stale,
}

/// Whether `body` with `headers` was sent by the engine holding one of `secrets`, at
/// `now_secs`.
pub fn verify(
    engine: Engine,
    headers: &Headers,
    body: &[u8],
    secrets: &[&str],
    now_secs: i64,
) -> Result<(), Refused> {
    match engine {
        Engine::Waha => {
            let sig = hex_header(headers, "X-Webhook-Hmac")?;
            any_mac::<Hmac<Sha512>>(secrets, &[body], &sig)
        }
        Engine::AndroidSmsGateway => {
            let sig = hex_header(headers, "X-Signature")?;
            let ts = timestamp(headers, "X-Timestamp", now_secs)?;
            any_mac::<Hmac<Sha256>>(secrets, &[body, ts.as_bytes()], &sig)
        }
        Engine::Textbee => {
            let sig = hex_header(headers, "X-Signature")?;
            any_mac::<Hmac<Sha256>>(secrets, &[body], &sig)
        }
        Engine::Slack => {
            let raw = headers
                .get("X-Slack-Signature")
                .ok_or(Refused::MissingHeader("X-Slack-Signature"))?;
            let hex_sig = raw
                .strip_prefix("v0=")
                .ok_or(Refused::Malformed("X-Slack-Signature"))?;
            let sig = hex::decode(hex_sig).map_err(|_| Refused::Malformed("X-Slack-Signature"))?;
            let ts = timestamp(headers, "X-Slack-Request-Timestamp", now_secs)?;
            let prefix = format!("v0:{ts}:");
            any_mac::<Hmac<Sha256>>(secrets, &[prefix.as_bytes(), body], &sig)
        }
        Engine::Telegram => shared_secret(headers, "X-Telegram-Bot-Api-Secret-Token", secrets),
        Engine::Evolution => shared_secret(headers, EVOLUTION_SECRET_HEADER, secrets),
    }
}

fn hex_header(headers: &Headers, name: &'static str) -> Result<Vec<u8>, Refused> {
    let raw = headers.get(name).ok_or(Refused::MissingHeader(name))?;
    hex::decode(raw.trim()).map_err(|_| Refused::Malformed(name))
}

/// The timestamp header as sent (it is signed as text), if within the skew.
fn timestamp<'a>(
    headers: &Headers<'a>,
    name: &'static str,
    now_secs: i64,
) -> Result<&'a str, Refused> {
    let raw = headers.get(name).ok_or(Refused::MissingHeader(name))?;
    let secs: i64 = raw.trim().parse().map_err(|_| Refused::Malformed(name))?;
    if secs.abs_diff(now_secs) > MAX_SKEW_SECS.unsigned_abs() {
        return Err(Refused::Stale);
    }
    Ok(raw)
}

fn any_mac<M: Mac + hmac::digest::KeyInit>(
    secrets: &[&str],
    parts: &[&[u8]],
    signature: &[u8],
) -> Result<(), Refused> {
    let mut ok = false;
    for secret in secrets {
        let mut mac = <M as Mac>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
        for part in parts {
            mac.update(part);
        }
        // Every secret is tried, so the time taken does not tell which matched.
        ok |= mac.verify_slice(signature).is_ok();
    }
    if ok {
        Ok(())
    } else {
        Err(Refused::Mismatch)
    }
}

/// A secret sent as is: compared by digest, in constant time.
fn shared_secret(headers: &Headers, name: &'static str, secrets: &[&str]) -> Result<(), Refused> {
    let given = headers.get(name).ok_or(Refused::MissingHeader(name))?;
    let given = Sha256::digest(given.as_bytes());
    let mut ok = false;
    for secret in secrets {
        ok |= bool::from(Sha256::digest(secret.as_bytes()).ct_eq(&given));
    }
    if ok {
        Ok(())
    } else {
        Err(Refused::Mismatch)
    }
}

/// The signature an engine would send, for tests and for the setup's examples.
pub fn sign(engine: Engine, secret: &str, body: &[u8], timestamp: i64) -> String {
    fn mac<M: Mac + hmac::digest::KeyInit>(secret: &str, parts: &[&[u8]]) -> String {
        let mut mac = <M as Mac>::new_from_slice(secret.as_bytes()).expect("any key");
        for part in parts {
            mac.update(part);
        }
        hex::encode(mac.finalize().into_bytes())
    }
    match engine {
        Engine::Waha => mac::<Hmac<Sha512>>(secret, &[body]),
        Engine::AndroidSmsGateway => {
            mac::<Hmac<Sha256>>(secret, &[body, timestamp.to_string().as_bytes()])
        }
        Engine::Textbee => mac::<Hmac<Sha256>>(secret, &[body]),
        Engine::Slack => format!(
            "v0={}",
            mac::<Hmac<Sha256>>(secret, &[format!("v0:{timestamp}:").as_bytes(), body])
        ),
        Engine::Telegram | Engine::Evolution => secret.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example in WAHA's documentation (waha-docs, content/docs/how-to/events/index.md,
    /// "HMAC authentication").
    #[test]
    fn waha_s_published_vector_verifies() {
        let body = br#"{"event":"message","session":"default","engine":"WEBJS"}"#;
        let sig = "208f8a55dde9e05519e898b10b89bf0d0b3b0fdf11fdbf09b6b90476301b98d8\
                   097c462b2b17a6ce93b6b47a136cf2e78a33a63f6752c2c1631777076153fa89";
        let h = Headers::new([
            ("X-Webhook-Hmac", sig),
            ("X-Webhook-Hmac-Algorithm", "sha512"),
        ]);
        assert_eq!(
            verify(Engine::Waha, &h, body, &["my-secret-key"], 0),
            Ok(())
        );
        assert_eq!(sign(Engine::Waha, "my-secret-key", body, 0), sig);
        assert_eq!(
            verify(Engine::Waha, &h, body, &["other-key"], 0),
            Err(Refused::Mismatch)
        );
        let tampered = br#"{"event":"message","session":"other","engine":"WEBJS"}"#;
        assert_eq!(
            verify(Engine::Waha, &h, tampered, &["my-secret-key"], 0),
            Err(Refused::Mismatch)
        );
    }

    #[test]
    fn any_live_secret_verifies() {
        let body = b"{}";
        let sig = sign(Engine::Textbee, "old-secret-of-twenty-chars", body, 0);
        let h = Headers::new([("X-Signature", sig.as_str())]);
        let secrets = ["new-secret-of-twenty-chars", "old-secret-of-twenty-chars"];
        assert_eq!(verify(Engine::Textbee, &h, body, &secrets, 0), Ok(()));
        assert_eq!(
            verify(Engine::Textbee, &h, body, &secrets[..1], 0),
            Err(Refused::Mismatch)
        );
    }

    #[test]
    fn timestamps_are_signed_and_bounded() {
        let body = br#"{"event":"sms:received"}"#;
        let now = 1_700_000_000;
        let sig = sign(Engine::AndroidSmsGateway, "k", body, now);
        let ts = now.to_string();
        let h = Headers::new([("X-Signature", sig.as_str()), ("X-Timestamp", ts.as_str())]);
        assert_eq!(
            verify(Engine::AndroidSmsGateway, &h, body, &["k"], now + 10),
            Ok(())
        );
        assert_eq!(
            verify(Engine::AndroidSmsGateway, &h, body, &["k"], now + 301),
            Err(Refused::Stale)
        );
        let later = (now + 1).to_string();
        let moved = Headers::new([
            ("X-Signature", sig.as_str()),
            ("X-Timestamp", later.as_str()),
        ]);
        assert_eq!(
            verify(Engine::AndroidSmsGateway, &moved, body, &["k"], now),
            Err(Refused::Mismatch)
        );
        let unsigned = Headers::new([("X-Timestamp", ts.as_str())]);
        assert_eq!(
            verify(Engine::AndroidSmsGateway, &unsigned, body, &["k"], now),
            Err(Refused::MissingHeader("X-Signature"))
        );
    }

    #[test]
    fn slack_signs_version_timestamp_and_body() {
        let body = b"token=x&team_id=T1";
        let now = 1_531_420_618;
        let sig = sign(Engine::Slack, "8f742231b10e8888abcd99yyyzzz85a5", body, now);
        let ts = now.to_string();
        let h = Headers::new([
            ("X-Slack-Signature", sig.as_str()),
            ("X-Slack-Request-Timestamp", ts.as_str()),
        ]);
        let secrets = ["8f742231b10e8888abcd99yyyzzz85a5"];
        assert_eq!(verify(Engine::Slack, &h, body, &secrets, now), Ok(()));
        assert_eq!(
            verify(Engine::Slack, &h, body, &secrets, now + 600),
            Err(Refused::Stale)
        );
        let bare = Headers::new([
            ("X-Slack-Signature", &sig[3..]),
            ("X-Slack-Request-Timestamp", ts.as_str()),
        ]);
        assert_eq!(
            verify(Engine::Slack, &bare, body, &secrets, now),
            Err(Refused::Malformed("X-Slack-Signature"))
        );
    }

    #[test]
    fn shared_secrets_must_be_exact() {
        let h = Headers::new([("X-Telegram-Bot-Api-Secret-Token", "s3cret")]);
        assert_eq!(verify(Engine::Telegram, &h, b"{}", &["s3cret"], 0), Ok(()));
        assert_eq!(
            verify(Engine::Telegram, &h, b"{}", &["s3cret2"], 0),
            Err(Refused::Mismatch)
        );
        assert_eq!(
            verify(Engine::Evolution, &h, b"{}", &["s3cret"], 0),
            Err(Refused::MissingHeader(EVOLUTION_SECRET_HEADER))
        );
    }

    #[test]
    fn signatures_that_are_not_hex_are_malformed() {
        let h = Headers::new([("X-Webhook-Hmac", "zz")]);
        assert_eq!(
            verify(Engine::Waha, &h, b"{}", &["k"], 0),
            Err(Refused::Malformed("X-Webhook-Hmac"))
        );
    }
}
