//! One account's rows of a table, as a type: list, read, and the answer to an update
//! kept only at the revision it was read at, or to a delete.

use merpati_domain::ids::AccountId;
use merpati_domain::{Page, StoreError};
use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::error::DbResult;

/// A table of an account's resources: where its rows are and how they read.
pub(crate) struct Table<T> {
    pub(crate) name: &'static str,
    pub(crate) columns: &'static str,
    /// What a missing row is called (`StoreError::NotFound`).
    pub(crate) what: &'static str,
    pub(crate) row: fn(&Row<'_>) -> rusqlite::Result<T>,
}

impl<T> Table<T> {
    pub(crate) fn list(
        &self,
        c: &Connection,
        account: &AccountId,
        page: &Page,
    ) -> DbResult<Vec<T>> {
        let mut s = c.prepare_cached(&format!(
            "SELECT {} FROM {} WHERE account_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
            self.columns, self.name
        ))?;
        let rows = s.query_map(
            params![
                account.as_str(),
                page.after.as_deref().unwrap_or(""),
                page.limit as i64
            ],
            self.row,
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub(crate) fn get(&self, c: &Connection, account: &AccountId, id: &str) -> DbResult<T> {
        Ok(c.prepare_cached(&format!(
            "SELECT {} FROM {} WHERE account_id = ?1 AND id = ?2",
            self.columns, self.name
        ))?
        .query_row(params![account.as_str(), id], self.row)
        .optional()?
        .ok_or(StoreError::NotFound(self.what))?)
    }

    /// NotFound when a statement that should have changed the row changed none.
    pub(crate) fn changed(&self, n: usize) -> DbResult<()> {
        if n == 0 {
            Err(StoreError::NotFound(self.what).into())
        } else {
            Ok(())
        }
    }

    /// The row as stored after an update made only if it was still at the revision it was
    /// read at: NotFound when it is gone, Stale when it changed since.
    pub(crate) fn updated(
        &self,
        c: &Connection,
        n: usize,
        account: &AccountId,
        id: &str,
    ) -> DbResult<T> {
        if n == 0 {
            return Err(if owned(c, self.name, account.as_str(), id)? {
                StoreError::Stale(self.what)
            } else {
                StoreError::NotFound(self.what)
            }
            .into());
        }
        self.get(c, account, id)
    }

    /// Every row of the account, oldest first.
    pub(crate) fn all(&self, c: &Connection, account: &AccountId) -> DbResult<Vec<T>> {
        let mut s = c.prepare_cached(&format!(
            "SELECT {} FROM {} WHERE account_id = ?1 ORDER BY created_at, id",
            self.columns, self.name
        ))?;
        let rows = s.query_map([account.as_str()], self.row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Deletes the row; NotFound when there is none.
    pub(crate) fn delete(&self, c: &Connection, account: &AccountId, id: &str) -> DbResult<()> {
        let n = c.execute(
            &format!(
                "DELETE FROM {} WHERE account_id = ?1 AND id = ?2",
                self.name
            ),
            params![account.as_str(), id],
        )?;
        self.changed(n)
    }
}

/// Whether `table` has a row (account, id).
pub(crate) fn owned(c: &Connection, table: &str, account: &str, id: &str) -> DbResult<bool> {
    Ok(c.prepare_cached(&format!(
        "SELECT 1 FROM {table} WHERE account_id = ?1 AND id = ?2"
    ))?
    .exists(params![account, id])?)
}

/// The table holding what an account owns of this kind.
pub(crate) fn table_of(kind: merpati_domain::storage::Owned) -> &'static str {
    use merpati_domain::storage::Owned;
    match kind {
        Owned::Business => "businesses",
        Owned::Channel => "channels",
        Owned::Device => "devices",
        Owned::Notifier => "notifiers",
    }
}
