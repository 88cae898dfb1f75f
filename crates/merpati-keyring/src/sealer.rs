//! The sealer a store holds: a ring of keys from the setting or from the key file, the
//! latter read again when it changes.

use std::sync::{Arc, Mutex, RwLock};

use crate::file::{KeyFile, KeyFileError, Stamp};
use crate::ring_keys::{Key, KeyError, KeyRing, OpenError};

#[derive(Debug)]
enum Source {
    /// Keys given in the configuration: they change with it, at a restart.
    Fixed,
    File {
        file: KeyFile,
        stamp: Mutex<Option<Stamp>>,
    },
}

#[derive(Debug)]
pub struct Sealer {
    source: Source,
    ring: RwLock<Arc<KeyRing>>,
}

impl Sealer {
    /// The `secret_key` setting: keys separated by commas, the first sealing.
    pub fn from_setting(keys: &str) -> Result<Sealer, KeyError> {
        Ok(Sealer::fixed(KeyRing::parse(keys)?))
    }

    /// The key file, made on first use.
    pub fn from_file(file: KeyFile) -> Result<Sealer, KeyFileError> {
        let stamp = file.stamp();
        let ring = file.load_or_create()?;
        Ok(Sealer {
            source: Source::File {
                stamp: Mutex::new(stamp.or_else(|| file.stamp())),
                file,
            },
            ring: RwLock::new(Arc::new(ring)),
        })
    }

    /// A key of its own, kept in memory only: for tests.
    pub fn ephemeral() -> Sealer {
        Sealer::fixed(KeyRing::new(vec![Key::generate()]).expect("one key"))
    }

    fn fixed(ring: KeyRing) -> Sealer {
        Sealer {
            source: Source::Fixed,
            ring: RwLock::new(Arc::new(ring)),
        }
    }

    /// The ring as it is now (the key file read again if it changed).
    pub fn ring(&self) -> Arc<KeyRing> {
        self.refresh(false);
        self.current()
    }

    fn current(&self) -> Arc<KeyRing> {
        self.ring.read().expect("the ring's lock").clone()
    }

    /// Reads the key file again if it changed since it was read (or, `always`, in any case).
    /// A file that cannot be read now leaves the keys as they were.
    fn refresh(&self, always: bool) {
        let Source::File { file, stamp } = &self.source else {
            return;
        };
        let mut seen = stamp.lock().expect("the stamp's lock");
        let now = file.stamp();
        if !always && now == *seen {
            return;
        }
        if let Ok(ring) = file.load() {
            *self.ring.write().expect("the ring's lock") = Arc::new(ring);
            *seen = now;
        }
    }

    /// `plaintext` sealed for `context` with the first key of the ring as it is now.
    pub fn seal(&self, context: &str, plaintext: &str) -> String {
        self.ring().seal(context, plaintext.as_bytes())
    }

    pub fn open(&self, context: &str, sealed: &str) -> Result<String, OpenError> {
        let opened = match self.current().open(context, sealed) {
            Err(OpenError::UnknownKey(_)) => {
                self.refresh(true);
                self.current().open(context, sealed)
            }
            other => other,
        }?;
        String::from_utf8(opened).map_err(|_| OpenError::Corrupt)
    }

    /// The id of the key that seals now.
    pub fn sealing_key_id(&self) -> String {
        self.ring().primary().id().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealer_follows_a_rotation_of_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = KeyFile::new(dir.path().join("secret.key"));
        let sealer = Sealer::from_file(file.clone()).unwrap();
        let before = sealer.seal("c", "one");
        let rotating = file.begin_rotation().unwrap();
        // Seals with the new key at once, and still opens what the old one sealed.
        let after = sealer.seal("c", "two");
        assert_eq!(crate::sealed_key_id(&after), Some(rotating.primary().id()));
        assert_eq!(sealer.open("c", &before).unwrap(), "one");
        file.finish_rotation().unwrap();
        assert_eq!(sealer.ring().keys().len(), 1);
        assert_eq!(sealer.open("c", &after).unwrap(), "two");
        assert!(matches!(
            sealer.open("c", &before),
            Err(OpenError::UnknownKey(_))
        ));
    }

    #[test]
    fn a_sealer_opens_what_another_process_sealed_with_a_key_it_has_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = KeyFile::new(dir.path().join("secret.key"));
        let sealer = Sealer::from_file(file.clone()).unwrap();
        let rotated = file.begin_rotation().unwrap();
        let sealed_elsewhere = rotated.seal("c", b"three");
        assert_eq!(sealer.open("c", &sealed_elsewhere).unwrap(), "three");
    }

    #[test]
    fn a_setting_seals_with_its_first_key() {
        let a = Key::generate();
        let b = Key::generate();
        let sealer = Sealer::from_setting(&format!("{},{}", a.encoded(), b.encoded())).unwrap();
        assert_eq!(sealer.sealing_key_id(), a.id());
        let by_b = KeyRing::new(vec![b]).unwrap().seal("c", b"x");
        assert_eq!(sealer.open("c", &by_b).unwrap(), "x");
        assert!(Sealer::from_setting("").is_err());
    }
}

/// What a pass over a store's sealed values did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resealed {
    /// Values now sealed with the sealing key that were not (in clear, or under another key).
    pub values: usize,
    /// The key every value is now sealed with.
    pub key_id: String,
}
