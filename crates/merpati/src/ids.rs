//! Identifiers, tokens and cursors.
//!
//! Ids a user supplies are kept as given (after validation); ids merpati makes carry a prefix
//! (`evt_`, `ep_`, …) and sort by creation time. Tokens are random, shown once and stored as
//! SHA-256 digests: they carry enough entropy that a slow hash would buy nothing.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::distr::{Alphanumeric, SampleString};
use sha2::{Digest, Sha256};

pub const MAX_ID_BYTES: usize = 128;

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
    fn cursors_round_trip() {
        assert_eq!(decode_cursor(&encode_cursor("42")).as_deref(), Some("42"));
        assert_eq!(decode_cursor("!!"), None);
    }
}
