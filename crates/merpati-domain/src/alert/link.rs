//! Signed acknowledgement links: every notification carries one, valid 7 days. The token
//! names the incident and its expiry, signed with the hub's link key (HMAC-SHA256), so the
//! link needs no login and cannot be forged or stretched.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::ids::IncidentId;

pub const LINK_TTL_MS: i64 = 7 * 24 * 3_600_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkError {
    /// Not a token this hub signed.
    Invalid,
    /// Signed, but past its expiry.
    Expired(IncidentId),
}

fn mac(key: &[u8], payload: &str) -> Hmac<Sha256> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key");
    m.update(payload.as_bytes());
    m
}

/// A token acknowledging `incident`, valid until `expires_at` (ms).
pub fn sign(key: &[u8], incident: &IncidentId, expires_at: i64) -> String {
    let payload = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(incident.as_str()),
        expires_at / 1000
    );
    let tag = mac(key, &payload).finalize().into_bytes();
    format!("{payload}.{}", URL_SAFE_NO_PAD.encode(&tag[..20]))
}

/// The incident a token names, if this hub signed it and it has not expired at `now`.
pub fn verify(key: &[u8], token: &str, now: i64) -> Result<IncidentId, LinkError> {
    let mut parts = token.rsplitn(2, '.');
    let (Some(tag), Some(payload)) = (parts.next(), parts.next()) else {
        return Err(LinkError::Invalid);
    };
    let tag = URL_SAFE_NO_PAD
        .decode(tag)
        .map_err(|_| LinkError::Invalid)?;
    // Constant time: a forger learns nothing from how long the comparison took.
    if tag.len() != 20 || mac(key, payload).verify_truncated_left(&tag).is_err() {
        return Err(LinkError::Invalid);
    }
    let (id, expires) = payload.split_once('.').ok_or(LinkError::Invalid)?;
    let id = URL_SAFE_NO_PAD
        .decode(id)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or(LinkError::Invalid)?;
    let expires: i64 = expires.parse().map_err(|_| LinkError::Invalid)?;
    let incident = IncidentId::from(id);
    if now / 1000 >= expires {
        return Err(LinkError::Expired(incident));
    }
    Ok(incident)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_link_names_its_incident_until_it_expires() {
        let key = b"0123456789abcdef0123456789abcdef";
        let id = IncidentId::from("inc_01abc");
        let token = sign(key, &id, 10_000_000);
        assert_eq!(verify(key, &token, 9_000_000), Ok(id.clone()));
        assert_eq!(verify(key, &token, 10_000_000), Err(LinkError::Expired(id)));
        assert_eq!(verify(b"another key", &token, 0), Err(LinkError::Invalid));
        let stretched = token.replace(".10000.", ".99999.");
        assert_eq!(verify(key, &stretched, 0), Err(LinkError::Invalid));
        assert_eq!(verify(key, "garbage", 0), Err(LinkError::Invalid));
    }
}
