//! The key file: keys one a line, the first sealing, readable by its owner only.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::ring_keys::{Key, KeyError, KeyRing};

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key file {path}: {source}")]
    Invalid { path: PathBuf, source: KeyError },
}

/// What tells one version of the file from the next: it is replaced, never written in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    #[cfg(unix)]
    inode: u64,
}

#[derive(Debug, Clone)]
pub struct KeyFile {
    path: PathBuf,
}

impl KeyFile {
    pub fn new(path: impl Into<PathBuf>) -> KeyFile {
        KeyFile { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's keys, making the file with a new key first if there is none. An existing
    /// file is made its owner's alone.
    pub fn load_or_create(&self) -> Result<KeyRing, KeyFileError> {
        match std::fs::metadata(&self.path) {
            Ok(_) => {
                restrict(&self.path).map_err(|e| self.io("restrict", e))?;
                self.load()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Key::generate();
                self.write(std::slice::from_ref(&key), true)?;
                Ok(KeyRing::new(vec![key]).expect("one key"))
            }
            Err(e) => Err(self.io("read", e)),
        }
    }

    pub fn load(&self) -> Result<KeyRing, KeyFileError> {
        let text = std::fs::read_to_string(&self.path).map_err(|e| self.io("read", e))?;
        KeyRing::parse(&text).map_err(|source| KeyFileError::Invalid {
            path: self.path.clone(),
            source,
        })
    }

    pub(crate) fn stamp(&self) -> Option<Stamp> {
        let meta = std::fs::metadata(&self.path).ok()?;
        Some(Stamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            #[cfg(unix)]
            inode: std::os::unix::fs::MetadataExt::ino(&meta),
        })
    }

    /// Puts a new key first, keeping the others to open what they sealed; answers the new
    /// ring.
    pub fn begin_rotation(&self) -> Result<KeyRing, KeyFileError> {
        let current = self.load()?;
        let mut keys = vec![Key::generate()];
        keys.extend(
            current
                .keys()
                .iter()
                .map(|k| Key::parse(&k.encoded()).expect("a key it wrote")),
        );
        self.write(&keys, false)?;
        Ok(KeyRing::new(keys).expect("new keys"))
    }

    /// Keeps only the first key, once nothing is sealed with the others.
    pub fn finish_rotation(&self) -> Result<KeyRing, KeyFileError> {
        let current = self.load()?;
        let primary = Key::parse(&current.primary().encoded()).expect("a key it wrote");
        self.write(std::slice::from_ref(&primary), false)?;
        Ok(KeyRing::new(vec![primary]).expect("one key"))
    }

    /// Writes the keys to a new file (0600) and moves it over the old one, so a reader sees
    /// one version or the other, and a crash leaves one whole.
    fn write(&self, keys: &[Key], first: bool) -> Result<(), KeyFileError> {
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if first {
            std::fs::create_dir_all(dir).map_err(|e| self.io("create the directory of", e))?;
        }
        let mut text = String::from(
            "# merpati's keys for secrets at rest: the first seals, every one opens.\n\
             # Without them the secrets in the database cannot be read. Keep a copy apart from it.\n",
        );
        for key in keys {
            text.push_str(&key.encoded());
            text.push('\n');
        }
        let temporary = self.path.with_extension("new");
        let _ = std::fs::remove_file(&temporary);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&temporary).map_err(|e| self.io("create", e))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| self.io("write", e))?;
        std::fs::rename(&temporary, &self.path).map_err(|e| self.io("replace", e))?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    fn io(&self, what: &'static str, source: std::io::Error) -> KeyFileError {
        KeyFileError::Io {
            what,
            path: self.path.clone(),
            source,
        }
    }
}

#[cfg(unix)]
fn restrict(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)?.permissions().mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn restrict(_: &Path) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_new_file_is_made_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let file = KeyFile::new(dir.path().join("data/secret.key"));
        let made = file.load_or_create().unwrap();
        let again = file.load_or_create().unwrap();
        assert_eq!(made.primary().id(), again.primary().id());
        #[cfg(unix)]
        assert_eq!(mode(file.path()), 0o600);
    }

    #[cfg(unix)]
    #[test]
    fn a_file_others_can_read_is_made_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = KeyFile::new(dir.path().join("secret.key"));
        std::fs::write(file.path(), format!("{}\n", Key::generate().encoded())).unwrap();
        std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
        file.load_or_create().unwrap();
        assert_eq!(mode(file.path()), 0o600);
    }

    #[test]
    fn a_rotation_puts_a_new_key_first_and_then_keeps_only_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = KeyFile::new(dir.path().join("secret.key"));
        let old = file.load_or_create().unwrap();
        let sealed = old.seal("c", b"v");
        let before = file.stamp();
        let rotating = file.begin_rotation().unwrap();
        assert_ne!(file.stamp(), before);
        assert_eq!(rotating.keys().len(), 2);
        assert_eq!(rotating.keys()[1].id(), old.primary().id());
        assert_eq!(file.load().unwrap().open("c", &sealed).unwrap(), b"v");
        let done = file.finish_rotation().unwrap();
        assert_eq!(done.keys().len(), 1);
        assert_eq!(done.primary().id(), rotating.primary().id());
        assert!(file.load().unwrap().open("c", &sealed).is_err());
        #[cfg(unix)]
        assert_eq!(mode(file.path()), 0o600);
    }

    #[test]
    fn a_broken_file_is_an_error_that_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = KeyFile::new(dir.path().join("secret.key"));
        std::fs::write(file.path(), "garbage\n").unwrap();
        let e = file.load_or_create().unwrap_err().to_string();
        assert!(e.contains("secret.key"), "{e}");
    }
}
