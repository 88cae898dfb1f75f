//! Identifiers, tokens and cursors.
//!
//! Ids a user supplies are kept as given (after validation); ids merpati makes carry a prefix
//! (`evt_`, `ep_`, …) and sort by creation time. Each kind of id is a type of its own, so that
//! an account's id handed where a device's is expected does not compile. Tokens are random,
//! shown once and stored as SHA-256 digests: they carry enough entropy that a slow hash would
//! buy nothing.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::distr::{Alphanumeric, SampleString};
use sha2::{Digest, Sha256};

pub const MAX_ID_BYTES: usize = 128;

/// An id of one kind of thing: a string, kept as given.
macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// The prefix of the ids merpati makes of this kind.
            pub const PREFIX: &'static str = $prefix;

            /// A new id of this kind, e.g. `evt_01j…`.
            pub fn generate() -> Self {
                $name(new_id($prefix))
            }

            /// A user-supplied id, checked against the id rules ([`validate_id`]).
            pub fn parse(raw: impl Into<String>) -> Result<Self, String> {
                let raw = raw.into();
                validate_id(&raw)?;
                Ok($name(raw))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        /// As given: an id only looked up (from a path, or a row) needs no check.
        impl From<String> for $name {
            fn from(id: String) -> Self {
                $name(id)
            }
        }

        impl From<&str> for $name {
            fn from(id: &str) -> Self {
                $name(id.to_owned())
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

string_id!(
    /// A merchant ("user" in the payloads).
    AccountId,
    "acct"
);
string_id!(
    /// An account's API key (its id, not the key).
    ApiKeyId,
    "key"
);
string_id!(
    /// A business ("bisnis" in the payloads).
    BusinessId,
    "biz"
);
string_id!(ChannelId, "ch");
string_id!(DeviceId, "dev");
string_id!(EndpointId, "ep");
string_id!(EventId, "evt");
string_id!(JobId, "job");
string_id!(AlertRuleId, "rule");
string_id!(NotifierId, "ntf");
string_id!(WindowId, "mw");
string_id!(IncidentId, "inc");
string_id!(NotificationId, "msg");
string_id!(
    /// A connector: where an engine (WAHA, Evolution API, …) sends its webhooks.
    ConnectorId,
    "con"
);

/// A delivery: one event to one endpoint. Numbered by the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct DeliveryId(pub i64);

impl std::fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Why a user-supplied id was refused.
pub fn validate_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("must not be empty".into());
    }
    if id.len() > MAX_ID_BYTES {
        return Err(format!("must be at most {MAX_ID_BYTES} bytes"));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')))
    {
        return Err(format!("contains {c:?}; allowed are A-Z a-z 0-9 _ . : -"));
    }
    Ok(())
}

/// A new time-ordered id with a prefix, e.g. `evt_01J…`.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", ulid::Ulid::new().to_string().to_lowercase())
}

/// A new secret token with a prefix naming its kind, e.g. `mpk_…` for an API key.
pub fn new_token(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        Alphanumeric.sample_string(&mut rand::rng(), 40)
    )
}

pub fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Opaque pagination cursor.
pub fn encode_cursor(position: &str) -> String {
    URL_SAFE_NO_PAD.encode(position)
}

pub fn decode_cursor(cursor: &str) -> Option<String> {
    let bytes = URL_SAFE_NO_PAD.decode(cursor).ok()?;
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        assert!(validate_id("device_abc123").is_ok());
        assert!(validate_id("00000000-0000-0000-d57d-f30cb6a89289").is_ok());
        assert!(validate_id("a.b:c").is_ok());
        assert!(validate_id("").is_err());
        assert!(validate_id("has space").is_err());
        assert!(validate_id("slash/").is_err());
        assert!(validate_id("é").is_err());
        assert!(validate_id(&"x".repeat(128)).is_ok());
        assert!(validate_id(&"x".repeat(129)).is_err());
    }

    #[test]
    fn generated_ids_and_tokens_have_prefixes() {
        let id = new_id("evt");
        assert!(id.starts_with("evt_") && validate_id(&id).is_ok());
        assert!(new_token("mpk").starts_with("mpk_"));
        assert_ne!(new_token("mpk"), new_token("mpk"));
    }

    #[test]
    fn typed_ids_are_checked_when_parsed_and_generated_with_their_prefix() {
        assert_eq!(DeviceId::parse("dev:1").unwrap(), "dev:1");
        assert!(DeviceId::parse("has space").is_err());
        assert!(EventId::generate().as_str().starts_with("evt_"));
        assert_eq!(
            serde_json::to_string(&AccountId::from("a")).unwrap(),
            "\"a\""
        );
    }

    #[test]
    fn cursors_round_trip() {
        assert_eq!(decode_cursor(&encode_cursor("42")).as_deref(), Some("42"));
        assert_eq!(decode_cursor("!!"), None);
    }
}
