//! The storage contract suite (merpati-store-contract), on SQLite: each case on a fresh
//! database file in a directory of its own.

use std::sync::Arc;

use merpati_sqlite::{Options, SqliteStore};
use merpati_store_contract::{contract_suite, Fixture};

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let options = Options {
        // The contract is about what is stored, not about power loss.
        synchronous_full: false,
        read_connections: 2,
    };
    let sealer = Arc::new(merpati_keyring::Sealer::ephemeral());
    let store = SqliteStore::open(&dir.path().join("merpati.db"), &options, sealer)
        .await
        .expect("a fresh database");
    Fixture::new(Arc::new(store), dir)
}

contract_suite!(fixture);
