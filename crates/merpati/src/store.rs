//! Which storage backend serves: picked from `database_url` at run time, so one binary and
//! one test suite serve every backend.

use std::sync::Arc;

use merpati_domain::{SharedStore, Store};
use merpati_sqlite::SqliteStore;

use crate::config::Config;

/// Opens (and migrates) the backend the configuration names.
pub async fn open(config: &Config) -> anyhow::Result<SharedStore> {
    let path = config.sqlite_path()?;
    let store = SqliteStore::open(&path, &config.database).await?;
    Ok(Arc::new(store))
}

/// Opens the database (which migrates it) and closes it again: what it is, and its schema
/// version.
pub async fn migrate(config: &Config) -> anyhow::Result<(String, i64)> {
    let path = config.sqlite_path()?;
    let store = SqliteStore::open(&path, &config.database).await?;
    let version = store.schema_version().await;
    store.close().await;
    Ok((path.display().to_string(), version?))
}
