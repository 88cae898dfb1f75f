//! Keys, rings of keys, and the sealed format.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};

const PREFIX: &str = "mp1:";
const KEY_LEN: usize = 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("a key must be 32 bytes in base64 (44 characters); one is not")]
    Malformed,
    #[error("no key given")]
    Empty,
    #[error("the same key is given twice")]
    Repeated,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpenError {
    #[error("the value is not sealed")]
    NotSealed,
    #[error("the value is sealed with key {0}, which this server does not hold")]
    UnknownKey(String),
    #[error("the sealed value does not open: altered, or moved from another place")]
    Corrupt,
}

/// One 256-bit key.
pub struct Key {
    id: String,
    bytes: [u8; KEY_LEN],
    aead: LessSafeKey,
}

impl Key {
    pub fn generate() -> Key {
        let mut bytes = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut bytes)
            .expect("the system's random source fails");
        Key::from_bytes(bytes)
    }

    fn from_bytes(bytes: [u8; KEY_LEN]) -> Key {
        let digest = Sha256::new()
            .chain_update(b"merpati key id\0")
            .chain_update(bytes)
            .finalize();
        let id = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        let aead =
            LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &bytes).expect("a 32-byte key"));
        Key { id, bytes, aead }
    }

    /// A key as written in the setting or the key file: 32 bytes in standard base64.
    pub fn parse(text: &str) -> Result<Key, KeyError> {
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|_| KeyError::Malformed)?;
        let bytes: [u8; KEY_LEN] = bytes.try_into().map_err(|_| KeyError::Malformed)?;
        Ok(Key::from_bytes(bytes))
    }

    pub fn encoded(&self) -> String {
        STANDARD.encode(self.bytes)
    }

    /// Names the key without revealing it.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({})", self.id)
    }
}

/// Keys, the first of which seals.
#[derive(Debug)]
pub struct KeyRing {
    keys: Vec<Key>,
}

impl KeyRing {
    pub fn new(keys: Vec<Key>) -> Result<KeyRing, KeyError> {
        if keys.is_empty() {
            return Err(KeyError::Empty);
        }
        for (i, k) in keys.iter().enumerate() {
            if keys[..i].iter().any(|other| other.id == k.id) {
                return Err(KeyError::Repeated);
            }
        }
        Ok(KeyRing { keys })
    }

    /// Keys separated by commas, whitespace or lines; `#` starts a comment to the end of
    /// its line.
    pub fn parse(text: &str) -> Result<KeyRing, KeyError> {
        let keys = text
            .lines()
            .map(|line| line.split('#').next().unwrap_or_default())
            .flat_map(|line| line.split([',', ' ', '\t']))
            .filter(|word| !word.trim().is_empty())
            .map(Key::parse)
            .collect::<Result<Vec<_>, _>>()?;
        KeyRing::new(keys)
    }

    pub fn primary(&self) -> &Key {
        &self.keys[0]
    }

    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    /// `plaintext` sealed with the first key, for `context`.
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> String {
        let key = self.primary();
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .expect("the system's random source fails");
        let mut buffer = plaintext.to_vec();
        key.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut buffer,
            )
            .expect("a plaintext within the AEAD's limits");
        let mut packed = Vec::with_capacity(NONCE_LEN + buffer.len());
        packed.extend_from_slice(&nonce);
        packed.extend_from_slice(&buffer);
        format!("{PREFIX}{}:{}", key.id, URL_SAFE_NO_PAD.encode(packed))
    }

    pub fn open(&self, context: &str, sealed: &str) -> Result<Vec<u8>, OpenError> {
        let id = sealed_key_id(sealed).ok_or(OpenError::NotSealed)?;
        let key = self
            .keys
            .iter()
            .find(|k| k.id == id)
            .ok_or_else(|| OpenError::UnknownKey(id.to_string()))?;
        let packed = URL_SAFE_NO_PAD
            .decode(&sealed[PREFIX.len() + id.len() + 1..])
            .map_err(|_| OpenError::Corrupt)?;
        if packed.len() < NONCE_LEN {
            return Err(OpenError::Corrupt);
        }
        let (nonce, ciphertext) = packed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| OpenError::Corrupt)?;
        let mut buffer = ciphertext.to_vec();
        let plaintext = key
            .aead
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut buffer)
            .map_err(|_| OpenError::Corrupt)?;
        Ok(plaintext.to_vec())
    }
}

/// The id of the key that sealed `value`, if it is a sealed value.
pub fn sealed_key_id(value: &str) -> Option<&str> {
    let rest = value.strip_prefix(PREFIX)?;
    let (id, _) = rest.split_once(':')?;
    (id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// A new random secret of 32 bytes, in hexadecimal: for keys the store makes itself (the
/// acknowledgement links' key), sealed like every other secret.
pub fn random_key_hex() -> String {
    let mut bytes = [0u8; KEY_LEN];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system's random source fails");
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_only_with_its_key_and_context() {
        let ring = KeyRing::new(vec![Key::generate()]).unwrap();
        let sealed = ring.seal("endpoint_secrets.secret:ep_1", b"whsec_abc");
        assert!(!sealed.contains("whsec_abc"));
        assert_eq!(sealed_key_id(&sealed), Some(ring.primary().id()));
        assert_eq!(
            ring.open("endpoint_secrets.secret:ep_1", &sealed).unwrap(),
            b"whsec_abc"
        );
        assert_eq!(
            ring.open("endpoint_secrets.secret:ep_2", &sealed),
            Err(OpenError::Corrupt)
        );
        let other = KeyRing::new(vec![Key::generate()]).unwrap();
        assert_eq!(
            other.open("endpoint_secrets.secret:ep_1", &sealed),
            Err(OpenError::UnknownKey(ring.primary().id().to_string()))
        );
        assert_eq!(ring.open("x", "whsec_abc"), Err(OpenError::NotSealed));
    }

    #[test]
    fn sealing_twice_gives_two_values() {
        let ring = KeyRing::new(vec![Key::generate()]).unwrap();
        assert_ne!(ring.seal("c", b"same"), ring.seal("c", b"same"));
    }

    #[test]
    fn an_altered_value_does_not_open() {
        let ring = KeyRing::new(vec![Key::generate()]).unwrap();
        let sealed = ring.seal("c", b"secret");
        let mut bytes = sealed.clone().into_bytes();
        let last = bytes.len() - 2;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(bytes).unwrap();
        assert_eq!(ring.open("c", &altered), Err(OpenError::Corrupt));
        let cut = &sealed[..sealed.len() - 10];
        assert_eq!(ring.open("c", cut), Err(OpenError::Corrupt));
        let prefix = format!("mp1:{}:", ring.primary().id());
        assert_eq!(ring.open("c", &prefix), Err(OpenError::Corrupt));
        assert_eq!(
            ring.open("c", &format!("{prefix}!!")),
            Err(OpenError::Corrupt)
        );
    }

    #[test]
    fn every_key_of_a_ring_opens_and_the_first_seals() {
        let old = Key::generate();
        let old_ring = KeyRing::new(vec![Key::parse(&old.encoded()).unwrap()]).unwrap();
        let sealed_old = old_ring.seal("c", b"one");
        let new = Key::generate();
        let new_id = new.id().to_string();
        let ring = KeyRing::parse(&format!(
            "{}\n{} # retiring\n",
            new.encoded(),
            old.encoded()
        ))
        .unwrap();
        assert_eq!(ring.primary().id(), new_id);
        assert_eq!(ring.open("c", &sealed_old).unwrap(), b"one");
        assert_eq!(
            sealed_key_id(&ring.seal("c", b"two")),
            Some(new_id.as_str())
        );
    }

    #[test]
    fn rings_are_parsed_strictly() {
        let a = Key::generate().encoded();
        let b = Key::generate().encoded();
        assert_eq!(KeyRing::parse(&format!("{a},{b}")).unwrap().keys().len(), 2);
        assert_eq!(
            KeyRing::parse(&format!(" {a}  {b} ")).unwrap().keys().len(),
            2
        );
        assert_eq!(KeyRing::parse("").unwrap_err(), KeyError::Empty);
        assert_eq!(
            KeyRing::parse("# only a comment").unwrap_err(),
            KeyError::Empty
        );
        assert_eq!(KeyRing::parse("c2hvcnQ=").unwrap_err(), KeyError::Malformed);
        assert_eq!(
            KeyRing::parse("not base64!").unwrap_err(),
            KeyError::Malformed
        );
        assert_eq!(
            KeyRing::parse(&format!("{a},{a}")).unwrap_err(),
            KeyError::Repeated
        );
    }

    #[test]
    fn a_key_is_never_shown_by_debug() {
        let key = Key::generate();
        let shown = format!(
            "{key:?} {:?}",
            KeyRing::new(vec![Key::parse(&key.encoded()).unwrap()])
        );
        assert!(!shown.contains(&key.encoded()));
        assert!(shown.contains(key.id()));
    }
}
