//! Helpers for the backend's own tests: databases in memory with the whole schema, and
//! looks at what is stored.

use rusqlite::Connection;

use crate::endpoint_cache::EndpointCache;
use crate::writer::WriterState;

/// A database in memory with the whole schema and one account, `a`, for the tests of the
/// statements that store events.
pub(crate) fn schema_with_account() -> Connection {
    let mut c = Connection::open_in_memory().unwrap();
    crate::migrations::migrate(&mut c).unwrap();
    let sealer = std::sync::Arc::new(merpati_keyring::Sealer::ephemeral());
    crate::sealed::register(&c, &sealer).unwrap();
    c.execute(
        "INSERT INTO accounts (id, name, created_at, updated_at) VALUES ('a', 'a', 0, 0)",
        [],
    )
    .unwrap();
    c
}

/// The writer's state for a connection of a test, watching it as the writer's does.
pub(crate) fn writer_state(c: &Connection) -> WriterState {
    WriterState::new(EndpointCache::watching(c))
}

/// The first column of every row `sql` returns, for tests that look at what is stored.
pub(crate) fn column<T: rusqlite::types::FromSql>(c: &Connection, sql: &str) -> Vec<T> {
    c.prepare(sql)
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// The single number `sql` gives (a count, say).
pub(crate) fn count(c: &Connection, sql: &str) -> i64 {
    c.query_row(sql, [], |r| r.get(0)).unwrap()
}

/// An endpoint `id` of `account` with the least every column needs, and a secret.
pub(crate) fn insert_endpoint(c: &Connection, account: &str, id: &str) {
    c.execute(
        "INSERT INTO endpoints (account_id, id, url, business_ids, channel_ids, device_ids,
             format, secret_in_body, headers, created_at, updated_at)
         VALUES (?1, ?2, 'https://example.com', '[]', '[]', '[]', 'json', 0,
                 seal_secret('endpoints.headers:' || ?2, '{}'), 0, 0)",
        [account, id],
    )
    .unwrap();
    c.execute(
        "INSERT INTO endpoint_secrets (endpoint_id, secret, created_at)
         VALUES (?1, seal_secret('endpoint_secrets.secret:' || ?1, 's'), 0)",
        [id],
    )
    .unwrap();
}

/// SQLite's own check that the database is whole, for the tests of the log's writes and of
/// checkpoints, which work on connections of their own.
pub(crate) fn assert_whole(conn: &Connection) {
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}
