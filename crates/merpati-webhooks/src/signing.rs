//! Standard Webhooks signatures: `webhook-signature: v1,<base64 HMAC-SHA256("id.ts.body")>`.
//!
//! A [`Webhook`] holds one or more secrets. Signing emits one signature per secret (space
//! separated), which is how a secret rotation stays invisible to receivers; verification
//! accepts a request when any signature matches any secret.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

pub const HEADER_ID: &str = "webhook-id";
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
pub const HEADER_SIGNATURE: &str = "webhook-signature";
pub const SECRET_PREFIX: &str = "whsec_";
/// How far a request's timestamp may be from the receiver's clock.
pub const DEFAULT_TOLERANCE_SECONDS: i64 = 5 * 60;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("secret is not \"whsec_\" followed by base64")]
    InvalidSecret,
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("header {0} is not valid")]
    InvalidHeader(&'static str),
    #[error("timestamp outside the tolerance window")]
    TimestampOutOfTolerance,
    #[error("no signature matches")]
    NoMatchingSignature,
    #[error("legacy secret missing or wrong")]
    LegacySecretMismatch,
}

/// Signs and verifies with one or more `whsec_…` secrets.
#[derive(Clone)]
pub struct Webhook {
    keys: Vec<Vec<u8>>,
    tolerance_seconds: i64,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl Webhook {
    /// One secret, `whsec_<base64>` (the bare base64 is accepted too, as other libraries do).
    pub fn new(secret: &str) -> Result<Self, VerifyError> {
        Self::with_secrets([secret])
    }

    /// Several secrets, e.g. the new and the old one during a rotation.
    pub fn with_secrets<'a>(
        secrets: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, VerifyError> {
        let keys = secrets
            .into_iter()
            .map(decode_secret)
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err(VerifyError::InvalidSecret);
        }
        Ok(Webhook {
            keys,
            tolerance_seconds: DEFAULT_TOLERANCE_SECONDS,
        })
    }

    pub fn with_tolerance(mut self, seconds: i64) -> Self {
        self.tolerance_seconds = seconds;
        self
    }

    /// The value of `webhook-signature`: one `v1,…` per secret, separated by spaces.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut out = String::new();
        for key in &self.keys {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str("v1,");
            out.push_str(&STANDARD.encode(mac(key, msg_id, timestamp, body)));
        }
        out
    }

    /// Verifies a request's headers and raw body against the current time.
    pub fn verify(&self, headers: &http::HeaderMap, body: &[u8]) -> Result<(), VerifyError> {
        self.verify_at(headers, body, unix_now())
    }

    /// Verifies as if the time were `now` (Unix seconds).
    pub fn verify_at(
        &self,
        headers: &http::HeaderMap,
        body: &[u8],
        now: i64,
    ) -> Result<(), VerifyError> {
        let header = |name: &'static str| {
            headers
                .get(name)
                .ok_or(VerifyError::MissingHeader(name))?
                .to_str()
                .map_err(|_| VerifyError::InvalidHeader(name))
        };
        let msg_id = header(HEADER_ID)?;
        let timestamp: i64 = header(HEADER_TIMESTAMP)?
            .parse()
            .map_err(|_| VerifyError::InvalidHeader(HEADER_TIMESTAMP))?;
        let signatures = header(HEADER_SIGNATURE)?;
        // A timestamp at either end of i64 is far from now, not an overflow.
        if now.abs_diff(timestamp) > self.tolerance_seconds.unsigned_abs() {
            return Err(VerifyError::TimestampOutOfTolerance);
        }
        let expected: Vec<[u8; 32]> = self
            .keys
            .iter()
            .map(|k| mac(k, msg_id, timestamp, body))
            .collect();
        for candidate in signatures.split(' ') {
            let Some(("v1", b64)) = candidate.split_once(',') else {
                continue;
            };
            let Ok(given) = STANDARD.decode(b64) else {
                continue;
            };
            if expected.iter().any(|e| bool::from(e[..].ct_eq(&given))) {
                return Ok(());
            }
        }
        Err(VerifyError::NoMatchingSignature)
    }
}

/// Makes a new random-looking secret from 24 bytes the caller provides.
pub fn encode_secret(key: &[u8]) -> String {
    format!("{SECRET_PREFIX}{}", STANDARD.encode(key))
}

/// True when `secret` is `whsec_` followed by base64 of at least 24 bytes.
pub fn is_valid_secret(secret: &str) -> bool {
    secret.starts_with(SECRET_PREFIX) && decode_secret(secret).is_ok_and(|k| k.len() >= 24)
}

fn decode_secret(secret: &str) -> Result<Vec<u8>, VerifyError> {
    let b64 = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
    let key = STANDARD
        .decode(b64)
        .map_err(|_| VerifyError::InvalidSecret)?;
    if key.is_empty() {
        return Err(VerifyError::InvalidSecret);
    }
    Ok(key)
}

fn mac(key: &[u8], msg_id: &str, timestamp: i64, body: &[u8]) -> [u8; 32] {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(msg_id.as_bytes());
    m.update(b".");
    m.update(timestamp.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    m.finalize().into_bytes().into()
}

/// The legacy check of the gateway document: the body carries `"secret"` at top level
/// (`$request["secret"] == $secret`). Works on a parsed JSON or form body.
pub fn verify_legacy_secret(body: &serde_json::Value, secret: &str) -> Result<(), VerifyError> {
    let given = body
        .get("secret")
        .and_then(|s| s.as_str())
        .ok_or(VerifyError::LegacySecretMismatch)?;
    if bool::from(given.as_bytes().ct_eq(secret.as_bytes())) {
        Ok(())
    } else {
        Err(VerifyError::LegacySecretMismatch)
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_id_that_is_not_visible_ascii_is_an_invalid_header() {
        // Found by the fuzzer: such an id can be signed but not carried in a header.
        let hook = super::Webhook::new(&super::encode_secret(&[7; 24])).unwrap();
        let mut h = http::HeaderMap::new();
        h.insert("webhook-id", http::HeaderValue::from_str("msg-é").unwrap());
        h.insert("webhook-timestamp", "100".parse().unwrap());
        h.insert(
            "webhook-signature",
            hook.sign("msg-é", 100, b"x").parse().unwrap(),
        );
        assert_eq!(
            hook.verify_at(&h, b"x", 100),
            Err(super::VerifyError::InvalidHeader("webhook-id"))
        );
    }

    #[test]
    fn a_timestamp_at_the_ends_of_i64_is_out_of_tolerance() {
        // Found by the property test: `now - timestamp` overflowed.
        let hook = super::Webhook::new(&super::encode_secret(&[7; 24])).unwrap();
        for (ts, now) in [(i64::MIN, 1), (i64::MAX, -1), (i64::MIN, i64::MAX)] {
            let mut h = http::HeaderMap::new();
            h.insert("webhook-id", "msg".parse().unwrap());
            h.insert("webhook-timestamp", ts.to_string().parse().unwrap());
            h.insert(
                "webhook-signature",
                hook.sign("msg", ts, b"x").parse().unwrap(),
            );
            assert_eq!(
                hook.verify_at(&h, b"x", now),
                Err(super::VerifyError::TimestampOutOfTolerance)
            );
        }
    }

    use super::*;

    // The example from the Standard Webhooks specification.
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TS: i64 = 1614265330;
    const SPEC_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SPEC_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn headers(id: &str, ts: i64, sig: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(HEADER_ID, id.parse().unwrap());
        h.insert(HEADER_TIMESTAMP, ts.to_string().parse().unwrap());
        h.insert(HEADER_SIGNATURE, sig.parse().unwrap());
        h
    }

    #[test]
    fn matches_the_specification_example() {
        let wh = Webhook::new(SPEC_SECRET).unwrap();
        assert_eq!(wh.sign(SPEC_ID, SPEC_TS, SPEC_BODY), SPEC_SIG);
        wh.verify_at(&headers(SPEC_ID, SPEC_TS, SPEC_SIG), SPEC_BODY, SPEC_TS)
            .unwrap();
    }

    #[test]
    fn rotation_sends_both_and_either_secret_verifies() {
        let old = encode_secret(&[1u8; 24]);
        let new = encode_secret(&[2u8; 24]);
        let both = Webhook::with_secrets([new.as_str(), old.as_str()]).unwrap();
        let sig = both.sign("evt_1", 100, b"{}");
        assert_eq!(sig.split(' ').count(), 2);
        for secret in [&old, &new] {
            Webhook::new(secret)
                .unwrap()
                .verify_at(&headers("evt_1", 100, &sig), b"{}", 100)
                .unwrap();
        }
    }

    #[test]
    fn tampering_and_stale_timestamps_are_refused() {
        let wh = Webhook::new(SPEC_SECRET).unwrap();
        let h = headers(SPEC_ID, SPEC_TS, SPEC_SIG);
        assert_eq!(
            wh.verify_at(&h, b"{\"test\": 1}", SPEC_TS),
            Err(VerifyError::NoMatchingSignature)
        );
        assert_eq!(
            wh.verify_at(&h, SPEC_BODY, SPEC_TS + 301),
            Err(VerifyError::TimestampOutOfTolerance)
        );
        assert_eq!(
            wh.verify_at(&http::HeaderMap::new(), SPEC_BODY, SPEC_TS),
            Err(VerifyError::MissingHeader(HEADER_ID))
        );
        let other = Webhook::new(&encode_secret(&[9u8; 24])).unwrap();
        assert_eq!(
            other.verify_at(&h, SPEC_BODY, SPEC_TS),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn secrets_are_validated() {
        assert!(Webhook::new("whsec_!!!").is_err());
        assert!(Webhook::new("whsec_").is_err());
        assert!(is_valid_secret(SPEC_SECRET));
        assert!(!is_valid_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"));
        assert!(!is_valid_secret("whsec_AAAA"));
    }

    #[test]
    fn legacy_secret_check() {
        let body = serde_json::json!({"type": "sms", "secret": "s3cret"});
        assert!(verify_legacy_secret(&body, "s3cret").is_ok());
        assert!(verify_legacy_secret(&body, "other").is_err());
        assert!(verify_legacy_secret(&serde_json::json!({}), "s3cret").is_err());
    }
}
