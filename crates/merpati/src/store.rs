//! Which storage backend serves: picked from `database_url` at run time, so one binary and
//! one test suite serve every backend. And the keys its secrets are sealed with: the
//! `secret_key` setting, or the key file in the data directory.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use merpati_domain::SharedStore;
use merpati_keyring::{KeyFile, Resealed, Sealer};
use merpati_postgres::PostgresStore;
use merpati_sqlite::SqliteStore;

use crate::config::{Config, Database};

pub const KEY_FILE: &str = "secret.key";

/// The key file's place: in the data directory, whatever the database's.
pub fn key_file(config: &Config) -> PathBuf {
    config.data_dir.join(KEY_FILE)
}

/// The sealer the configuration gives, and where its keys come from.
fn sealer(config: &Config) -> anyhow::Result<(Arc<Sealer>, String)> {
    if let Some(keys) = &config.secret_key {
        let sealer = Sealer::from_setting(keys.expose()).context("setting secret_key")?;
        return Ok((Arc::new(sealer), "the secret_key setting".into()));
    }
    let file = KeyFile::new(key_file(config));
    let shown = file.path().display().to_string();
    let sealer = Sealer::from_file(file)?;
    Ok((Arc::new(sealer), shown))
}

/// A store and what opening it did to the sealed secrets.
struct Opened {
    store: SharedStore,
    resealed: Resealed,
    /// The database, as the log may show it (never a password).
    shown: String,
}

async fn open_backend(config: &Config) -> anyhow::Result<Opened> {
    let (sealer, keys) = sealer(config)?;
    let opened = match config.database()? {
        Database::Sqlite(path) => {
            let store = SqliteStore::open(&path, &config.database, sealer)
                .await
                .with_context(|| format!("opening {} with the keys of {keys}", path.display()))?;
            Opened {
                resealed: store.resealed().clone(),
                store: Arc::new(store),
                shown: path.display().to_string(),
            }
        }
        Database::Postgres(url) => {
            let options = merpati_postgres::Options {
                read_connections: config.database.read_connections,
                writers: config.database_writers,
                idle_in_transaction: config.cluster.lease,
            };
            let shown = merpati_postgres::describe_url(&url);
            let store = PostgresStore::open(&url, &options, sealer)
                .await
                .with_context(|| format!("opening {shown} with the keys of {keys}"))?;
            Opened {
                resealed: store.resealed().clone(),
                store: Arc::new(store),
                shown,
            }
        }
    };
    let resealed = &opened.resealed;
    tracing::info!(key = %resealed.key_id, from = %keys, "secrets at rest are sealed");
    if resealed.values > 0 {
        tracing::info!(
            values = resealed.values,
            key = %resealed.key_id,
            "sealed secrets that were in clear or under another key"
        );
    }
    Ok(opened)
}

/// Opens (and migrates) the backend the configuration names.
pub async fn open(config: &Config) -> anyhow::Result<SharedStore> {
    Ok(open_backend(config).await?.store)
}

/// Opens the database (which migrates it) and closes it again: what it is, and its schema
/// version.
pub async fn migrate(config: &Config) -> anyhow::Result<(String, i64)> {
    let opened = open_backend(config).await?;
    let version = opened.store.schema_version().await;
    opened.store.close().await;
    Ok((opened.shown, version?))
}

/// Seals every secret with a new key, beside a running server or not: the key file gets
/// the new key first (a server reading it seals with it from then on, and still opens what
/// the old one sealed), every value is sealed again, and the old key is dropped.
pub async fn rotate_key(config: &Config) -> anyhow::Result<String> {
    if config.secret_key.is_some() {
        anyhow::bail!(
            "secret_key is set, so the keys are the configuration's: put a new key first in \
             secret_key (`openssl rand -base64 32`), keeping the old one after it, and restart; \
             merpati seals every secret with the new key as it starts. Then remove the old key."
        );
    }
    let file = KeyFile::new(key_file(config));
    anyhow::ensure!(
        file.path().exists(),
        "there is no key file at {}: merpati makes one when it first starts",
        file.path().display()
    );
    let old = file.load()?;
    let new = file.begin_rotation()?;
    let opened = open_backend(config).await?;
    let resealed = opened.resealed.clone();
    opened.store.close().await;
    file.finish_rotation()?;
    let old_ids: Vec<&str> = old.keys().iter().map(|k| k.id()).collect();
    Ok(format!(
        "{} secret(s) sealed with the new key {}; key(s) {} removed from {}",
        resealed.values,
        new.primary().id(),
        old_ids.join(", "),
        file.path().display()
    ))
}
