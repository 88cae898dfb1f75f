//! Secrets at rest, in SQL: every connection gets `seal_secret(context, text)`,
//! `open_secret(context, sealed)` and `reseal_secret(context, value)`, closing over the
//! store's [`Sealer`]. Statements seal what they write and open what they read, so a
//! secret is in clear only in the process, and sealing happens inside the writer's
//! transaction, under the write lock: a rotation's pass, which takes that lock after the
//! key file changed, sees every value sealed with the old key.
//!
//! Each value's context is its column and its owner's id, so a value moved elsewhere does
//! not open.

use std::sync::Arc;

use merpati_domain::StoreError;
use merpati_keyring::{sealed_key_id, Resealed, Sealer};
use rusqlite::functions::{Context, FunctionFlags};
use rusqlite::types::ValueRef;
use rusqlite::Connection;

use crate::error::DbResult;

/// Every sealed column: the table, the column, the expression naming its context, and
/// which rows hold one.
const SEALED: &[(&str, &str, &str, &str)] = &[
    (
        "endpoint_secrets",
        "secret",
        "'endpoint_secrets.secret:' || endpoint_id",
        "1",
    ),
    ("endpoints", "headers", "'endpoints.headers:' || id", "1"),
    (
        "connector_secrets",
        "secret",
        "'connector_secrets.secret:' || connector_id",
        "1",
    ),
    (
        "connectors",
        "api_key",
        "'connectors.api_key:' || id",
        "api_key IS NOT NULL",
    ),
    (
        "notifiers",
        "body",
        "'notifiers.body:' || account_id || '/' || id",
        "1",
    ),
    (
        "alert_state",
        "value",
        "'alert_state.link_key'",
        "name = 'link_key'",
    ),
];

/// Gives `conn` the sealing functions.
pub(crate) fn register(conn: &Connection, sealer: &Arc<Sealer>) -> rusqlite::Result<()> {
    // Only statements may call them, not triggers or views a database could bring.
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DIRECTONLY;
    let s = sealer.clone();
    conn.create_scalar_function("seal_secret", 2, flags, move |ctx| {
        let context = ctx.get::<String>(0)?;
        Ok(text(ctx, 1)?.map(|plain| s.seal(&context, &plain)))
    })?;
    let s = sealer.clone();
    conn.create_scalar_function(
        "open_secret",
        2,
        flags | FunctionFlags::SQLITE_DETERMINISTIC,
        move |ctx| {
            let context = ctx.get::<String>(0)?;
            let Some(sealed) = text(ctx, 1)? else {
                return Ok(None);
            };
            s.open(&context, &sealed)
                .map(Some)
                .map_err(|e| failure(format!("{context}: {e}")))
        },
    )?;
    let s = sealer.clone();
    conn.create_scalar_function("reseal_secret", 2, flags, move |ctx| {
        let context = ctx.get::<String>(0)?;
        let Some(value) = text(ctx, 1)? else {
            return Ok(None);
        };
        let plain = if sealed_key_id(&value).is_some() {
            s.open(&context, &value)
                .map_err(|e| failure(format!("{context}: {e}")))?
        } else {
            value
        };
        Ok(Some(s.seal(&context, &plain)))
    })?;
    conn.create_scalar_function(
        "secret_key_id",
        1,
        flags | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| Ok(text(ctx, 0)?.and_then(|v| sealed_key_id(&v).map(str::to_string))),
    )?;
    Ok(())
}

/// Argument `i` as text: a blob (the link key before it was sealed) as hex.
fn text(ctx: &Context<'_>, i: usize) -> rusqlite::Result<Option<String>> {
    Ok(match ctx.get_raw(i) {
        ValueRef::Null => None,
        ValueRef::Blob(b) => Some(b.iter().map(|b| format!("{b:02x}")).collect()),
        ValueRef::Text(t) => Some(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Integer(n) => Some(n.to_string()),
        ValueRef::Real(r) => Some(r.to_string()),
    })
}

fn failure(message: String) -> rusqlite::Error {
    rusqlite::Error::UserFunctionError(message.into())
}

/// Seals every value that is in clear or sealed with another key than the one that seals
/// now. Fails, changing nothing, when a value is sealed with a key the sealer does not
/// hold. Rewrites the freed pages with zeros while it runs.
pub(crate) fn reseal_all(conn: &Connection, sealer: &Sealer) -> DbResult<Resealed> {
    let key_id = sealer.sealing_key_id();
    conn.execute_batch("PRAGMA secure_delete = ON; BEGIN IMMEDIATE;")?;
    let pass = || -> DbResult<usize> {
        let mut values = 0;
        for (table, column, context, holds) in SEALED {
            values += conn.execute(
                &format!(
                    "UPDATE {table} SET {column} = reseal_secret({context}, {column})
                     WHERE {holds} AND secret_key_id({column}) IS NOT ?1"
                ),
                [&key_id],
            )?;
        }
        Ok(values)
    };
    let outcome = pass().and_then(|values| {
        conn.execute_batch("COMMIT")?;
        Ok(values)
    });
    if outcome.is_err() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    let _ = conn.execute_batch("PRAGMA secure_delete = OFF");
    let values = outcome.map_err(unknown_key)?;
    if values > 0 {
        // What the log held of the values before, it no longer does (when no other
        // process reads it now; otherwise its frames are overwritten as it is reused).
        let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    }
    Ok(Resealed { values, key_id })
}

/// A pass that fails on a value it cannot open says which key is missing.
fn unknown_key(e: crate::error::DbError) -> crate::error::DbError {
    match StoreError::from(e) {
        StoreError::Internal(message) => StoreError::Internal(format!(
            "a secret in the database does not open with the keys given \
             (the secret_key setting, or the key file in the data directory): {message}"
        ))
        .into(),
        other => other.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{column, schema_with_account};
    use merpati_keyring::Key;

    fn sealer(keys: &[&Key]) -> Arc<Sealer> {
        let text: Vec<String> = keys.iter().map(|k| k.encoded()).collect();
        Arc::new(Sealer::from_setting(&text.join(",")).unwrap())
    }

    /// A database as it was before secrets were sealed: every secret in clear.
    fn stored_in_clear() -> Connection {
        let c = schema_with_account();
        c.execute_batch(
            "INSERT INTO endpoints (account_id, id, url, business_ids, channel_ids, device_ids,
                 format, secret_in_body, headers, created_at, updated_at)
             VALUES ('a', 'ep_1', 'https://example.com', '[]', '[]', '[]', 'json', 0,
                     '{\"Authorization\":\"Bearer hdr-token\"}', 0, 0);
             INSERT INTO endpoint_secrets (endpoint_id, secret, created_at)
             VALUES ('ep_1', 'whsec_clear', 0);
             INSERT INTO notifiers (account_id, id, body, created_at)
             VALUES ('a', 'ntf_1', '{\"bot_token\":\"123:clear-token\"}', 0);",
        )
        .unwrap();
        c
    }

    fn stored(c: &Connection) -> Vec<String> {
        let mut all: Vec<String> = Vec::new();
        for (table, col, _, holds) in SEALED {
            all.extend(column::<String>(
                c,
                &format!("SELECT CAST({col} AS TEXT) FROM {table} WHERE {holds}"),
            ));
        }
        all
    }

    #[test]
    fn a_pass_seals_what_was_in_clear_and_it_opens_as_it_was() {
        let c = stored_in_clear();
        let key = Key::generate();
        let s = sealer(&[&key]);
        register(&c, &s).unwrap();
        let link_before: Vec<u8> = c
            .query_row(
                "SELECT value FROM alert_state WHERE name = 'link_key'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let pass = reseal_all(&c, &s).unwrap();
        // The header, the secret, the notifier, the link key.
        assert_eq!(pass.values, 4);
        assert_eq!(pass.key_id, key.id());
        for value in stored(&c) {
            assert_eq!(sealed_key_id(&value), Some(key.id()), "{value}");
            assert!(!value.contains("clear"), "{value}");
        }
        let opened = column::<String>(
            &c,
            "SELECT open_secret('endpoint_secrets.secret:' || endpoint_id, secret)
             FROM endpoint_secrets",
        );
        assert_eq!(opened, ["whsec_clear"]);
        let link_after: Vec<u8> = c
            .query_row(
                "SELECT unhex(open_secret('alert_state.link_key', value))
                 FROM alert_state WHERE name = 'link_key'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(link_after, link_before);
        // A second pass has nothing to do.
        assert_eq!(reseal_all(&c, &s).unwrap().values, 0);
    }

    #[test]
    fn a_pass_reseals_with_the_first_key_what_another_sealed() {
        let c = stored_in_clear();
        let (old, new) = (Key::generate(), Key::generate());
        register(&c, &sealer(&[&old])).unwrap();
        reseal_all(&c, &sealer(&[&old])).unwrap();
        let both = sealer(&[&new, &old]);
        register(&c, &both).unwrap();
        assert_eq!(reseal_all(&c, &both).unwrap().values, 4);
        for value in stored(&c) {
            assert_eq!(sealed_key_id(&value), Some(new.id()));
        }
        // Only the new key now: everything still opens.
        let only_new = sealer(&[&new]);
        register(&c, &only_new).unwrap();
        let body = column::<String>(
            &c,
            "SELECT open_secret('notifiers.body:' || account_id || '/' || id, body) FROM notifiers",
        );
        assert_eq!(body, [r#"{"bot_token":"123:clear-token"}"#]);
    }

    #[test]
    fn a_pass_without_the_key_fails_naming_it_and_changes_nothing() {
        let c = stored_in_clear();
        let old = Key::generate();
        register(&c, &sealer(&[&old])).unwrap();
        reseal_all(&c, &sealer(&[&old])).unwrap();
        let before = stored(&c);
        let stranger = sealer(&[&Key::generate()]);
        register(&c, &stranger).unwrap();
        let e = StoreError::from(reseal_all(&c, &stranger).unwrap_err()).to_string();
        assert!(e.contains(old.id()), "{e}");
        assert_eq!(stored(&c), before);
        let opened = c.query_row(
            "SELECT open_secret('endpoint_secrets.secret:' || endpoint_id, secret)
             FROM endpoint_secrets",
            [],
            |r| r.get::<_, String>(0),
        );
        assert!(opened.is_err());
    }

    #[test]
    fn a_value_moved_to_another_row_does_not_open() {
        let c = stored_in_clear();
        let s = sealer(&[&Key::generate()]);
        register(&c, &s).unwrap();
        reseal_all(&c, &s).unwrap();
        c.execute_batch(
            "INSERT INTO endpoints (account_id, id, url, business_ids, channel_ids, device_ids,
                 format, secret_in_body, headers, created_at, updated_at)
             SELECT account_id, 'ep_2', url, business_ids, channel_ids, device_ids, format,
                    secret_in_body, headers, created_at, updated_at FROM endpoints;",
        )
        .unwrap();
        let e = c
            .query_row(
                "SELECT open_secret('endpoints.headers:' || id, headers) FROM endpoints
                 WHERE id = 'ep_2'",
                [],
                |r| r.get::<_, String>(0),
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not open"), "{e}");
    }
}
