//! The storage contract suite (merpati-store-contract), on PostgreSQL: a private server
//! for the whole run, each case on a database of its own copied from a migrated template.

use std::sync::{Arc, OnceLock};

use merpati_postgres::scratch::{ScratchOptions, ScratchServer};
use merpati_postgres::{Options, PostgresStore};
use merpati_store_contract::{contract_suite, Fixture};

fn server() -> &'static ScratchServer {
    static SERVER: OnceLock<ScratchServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        ScratchServer::start(ScratchOptions::default()).expect("a private PostgreSQL server")
    })
}

async fn fixture() -> Fixture {
    let url = tokio::task::spawn_blocking(|| {
        server()
            .fresh_database(|url| {
                PostgresStore::migrate(url)
                    .map(drop)
                    .map_err(|e| e.to_string())
            })
            .expect("a fresh database")
    })
    .await
    .unwrap();
    // Two writers: every case must hold with other writers beside (as other nodes are).
    let options = Options {
        read_connections: 2,
        writers: 2,
    };
    let sealer = Arc::new(merpati_keyring::Sealer::ephemeral());
    let store = PostgresStore::open(&url, &options, sealer)
        .await
        .expect("the store opens");
    Fixture::new(Arc::new(store), ())
}

contract_suite!(fixture);
