//! Secrets at rest. Every credential merpati stores (endpoints' and connectors' signing
//! secrets, engines' API keys, notifiers' tokens) is sealed with an AEAD
//! (ChaCha20-Poly1305) under a key that is not in the database: the `secret_key` setting, or
//! a key file in the data directory, created on first start readable by its owner only. A
//! database copied without that key yields ciphertext only.
//!
//! A sealed value is text: `mp1:<key id>:<nonce, ciphertext and tag in base64url>`, the
//! key id being a hash of the key, so a ring of several keys knows which one opens a value.
//! The associated data is the value's *context* (its table, column and owner), so a sealed
//! value moved to another row or column no longer opens.
//!
//! Rotation: a ring holds one or more keys, the first of which seals; all of them open.
//! [`KeyFile::begin_rotation`] puts a new key first, a pass re-seals every value with it,
//! and [`KeyFile::finish_rotation`] drops the others. A [`Sealer`] reading a key file
//! notices the file changed before every seal, and on opening a value under a key it does
//! not hold, so a running server follows a rotation made beside it.

mod file;
mod ring_keys;
mod sealer;

pub use file::{KeyFile, KeyFileError};
pub use ring_keys::{random_key_hex, sealed_key_id, Key, KeyError, KeyRing, OpenError};
pub use sealer::{Resealed, Sealer};
