//! Reading rows into the domain's types, and the columns that hold lists as JSON.

use rusqlite::types::Type;
use rusqlite::Row;

/// An id column as the domain's id type.
pub(crate) fn id<T: From<String>>(r: &Row<'_>, column: usize) -> rusqlite::Result<T> {
    Ok(T::from(r.get::<_, String>(column)?))
}

/// An optional id column.
pub(crate) fn opt_id<T: From<String>>(r: &Row<'_>, column: usize) -> rusqlite::Result<Option<T>> {
    Ok(r.get::<_, Option<String>>(column)?.map(T::from))
}

/// A text column holding one of a closed set of words, parsed by `parse`.
pub(crate) fn word<T>(
    r: &Row<'_>,
    column: usize,
    parse: fn(&str) -> Option<T>,
) -> rusqlite::Result<T> {
    let text: String = r.get(column)?;
    parse(&text).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            column,
            Type::Text,
            format!("unexpected value {text:?}").into(),
        )
    })
}

/// JSON text of a list, for the list columns.
pub(crate) fn json_list<T: serde::Serialize>(items: &[T]) -> String {
    serde_json::to_string(items).expect("lists serialize")
}

pub(crate) fn json_column<T: serde::de::DeserializeOwned>(text: &str) -> rusqlite::Result<T> {
    serde_json::from_str(text)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, Type::Text, Box::new(e)))
}

/// How many rows of `table` the account has (endpoints being deleted not counted).
pub(crate) fn count_of(
    c: &rusqlite::Connection,
    table: &str,
    account: &merpati_domain::ids::AccountId,
) -> crate::error::DbResult<u64> {
    let live = if table == "endpoints" {
        " AND deleted_at IS NULL"
    } else {
        ""
    };
    Ok(c.prepare_cached(&format!(
        "SELECT COUNT(*) FROM {table} WHERE account_id = ?1{live}"
    ))?
    .query_row([account.as_str()], |r| r.get(0))?)
}
