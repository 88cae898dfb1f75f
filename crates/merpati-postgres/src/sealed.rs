//! Secrets at rest: the server only ever holds them sealed. Statements bind values the
//! backend sealed (with their column and owner as context) and open what they read; this
//! is the pass, at open and by `rotate-key`, that seals again whatever another key sealed.

use merpati_domain::StoreError;
use merpati_keyring::{sealed_key_id, Resealed, Sealer};

use crate::conn::Conn;
use crate::error::DbResult;

/// Every sealed column: the table, the column, the expression naming its context, and
/// which rows hold one.
pub(crate) const SEALED: &[(&str, &str, &str, &str)] = &[
    (
        "endpoint_secrets",
        "secret",
        "'endpoint_secrets.secret:' || endpoint_id",
        "TRUE",
    ),
    ("endpoints", "headers", "'endpoints.headers:' || id", "TRUE"),
    (
        "connector_secrets",
        "secret",
        "'connector_secrets.secret:' || connector_id",
        "TRUE",
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
        "TRUE",
    ),
    (
        "alert_state",
        "value",
        "'alert_state.link_key'",
        "name = 'link_key'",
    ),
];

/// Seals again, in one transaction, every value sealed with another key than the one that
/// seals now. Fails, changing nothing, when a value is sealed with a key the sealer does
/// not hold, naming it.
pub(crate) fn reseal_all(conn: &mut Conn, sealer: &Sealer) -> DbResult<Resealed> {
    let key_id = sealer.sealing_key_id();
    conn.batch("BEGIN")?;
    let pass = pass(conn, sealer, &key_id);
    match pass {
        Ok(values) => {
            conn.batch("COMMIT")?;
            Ok(Resealed { values, key_id })
        }
        Err(e) => {
            let _ = conn.batch("ROLLBACK");
            Err(unknown_key(e))
        }
    }
}

fn pass(conn: &mut Conn, sealer: &Sealer, key_id: &str) -> DbResult<usize> {
    let mut values = 0;
    let current = format!("mp1:{key_id}:%");
    for (table, column, context, holds) in SEALED {
        let rows = conn.query(
            &format!(
                "SELECT ctid::TEXT, {context}, {column} FROM {table}
                 WHERE {holds} AND {column} NOT LIKE $1 FOR UPDATE"
            ),
            &[&current],
        )?;
        for r in rows {
            let (row, context, value): (String, String, String) = (r.get(0), r.get(1), r.get(2));
            let plain = if sealed_key_id(&value).is_some() {
                sealer
                    .open(&context, &value)
                    .map_err(|e| StoreError::Internal(format!("{context}: {e}")))?
            } else {
                value
            };
            conn.execute(
                &format!("UPDATE {table} SET {column} = $2 WHERE ctid = $1::TEXT::tid"),
                &[&row, &sealer.seal(&context, &plain)],
            )?;
            values += 1;
        }
    }
    Ok(values)
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
