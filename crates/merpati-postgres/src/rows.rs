//! Reading rows into the domain's types, and the columns that hold lists as JSON.

use merpati_domain::StoreError;

use crate::error::DbResult;

/// A text column holding one of a closed set of words, parsed by `parse`.
pub(crate) fn word<T>(text: &str, parse: fn(&str) -> Option<T>) -> DbResult<T> {
    parse(text)
        .ok_or_else(|| StoreError::Internal(format!("unexpected stored value {text:?}")).into())
}

/// JSON text of a list, for the list columns.
pub(crate) fn json_list<T: serde::Serialize>(items: &[T]) -> String {
    serde_json::to_string(items).expect("lists serialize")
}

pub(crate) fn json_column<T: serde::de::DeserializeOwned>(text: &str) -> DbResult<T> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Internal(format!("a stored JSON column: {e}")).into())
}

/// How many rows of `table` the account has (endpoints being deleted not counted).
pub(crate) fn count_of(
    c: &mut crate::conn::Conn,
    table: &str,
    account: &merpati_domain::ids::AccountId,
) -> DbResult<u64> {
    let live = if table == "endpoints" {
        " AND deleted_at IS NULL"
    } else {
        ""
    };
    let n: i64 = c
        .query_one(
            &format!("SELECT COUNT(*) FROM {table} WHERE account_id = $1{live}"),
            &[&account.as_str()],
        )?
        .get(0);
    Ok(n as u64)
}

/// Bytes from hexadecimal text.
pub(crate) fn unhex(hex: &str) -> DbResult<Vec<u8>> {
    if hex.len() % 2 != 0 {
        return Err(StoreError::Internal("a stored key is not hexadecimal".into()).into());
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&hex[i..i + 2], 16)
                .map_err(|_| StoreError::Internal("a stored key is not hexadecimal".into()).into())
        })
        .collect()
}
