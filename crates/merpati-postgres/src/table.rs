//! One account's rows of a table, as a type: list, read, and the answer to an update
//! kept only at the revision it was read at, or to a delete.

use merpati_domain::ids::AccountId;
use merpati_domain::{Page, StoreError};
use postgres::Row;

use crate::conn::Conn;
use crate::error::DbResult;

/// A table of an account's resources: where its rows are and how they read.
pub(crate) struct Table<T> {
    pub(crate) name: &'static str,
    pub(crate) columns: &'static str,
    /// What a missing row is called (`StoreError::NotFound`).
    pub(crate) what: &'static str,
    pub(crate) row: fn(&Conn, &Row) -> DbResult<T>,
}

impl<T> Table<T> {
    pub(crate) fn list(&self, c: &mut Conn, account: &AccountId, page: &Page) -> DbResult<Vec<T>> {
        let rows = c.query(
            &format!(
                "SELECT {} FROM {} WHERE account_id = $1 AND id > $2 ORDER BY id LIMIT $3",
                self.columns, self.name
            ),
            &[
                &account.as_str(),
                &page.after.as_deref().unwrap_or(""),
                &(page.limit as i64),
            ],
        )?;
        rows.iter().map(|r| (self.row)(c, r)).collect()
    }

    pub(crate) fn get(&self, c: &mut Conn, account: &AccountId, id: &str) -> DbResult<T> {
        let row = c
            .query_opt(
                &format!(
                    "SELECT {} FROM {} WHERE account_id = $1 AND id = $2",
                    self.columns, self.name
                ),
                &[&account.as_str(), &id],
            )?
            .ok_or(StoreError::NotFound(self.what))?;
        (self.row)(c, &row)
    }

    /// NotFound when a statement that should have changed the row changed none.
    pub(crate) fn changed(&self, n: u64) -> DbResult<()> {
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
        c: &mut Conn,
        n: u64,
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
    pub(crate) fn all(&self, c: &mut Conn, account: &AccountId) -> DbResult<Vec<T>> {
        let rows = c.query(
            &format!(
                "SELECT {} FROM {} WHERE account_id = $1 ORDER BY created_at, id",
                self.columns, self.name
            ),
            &[&account.as_str()],
        )?;
        rows.iter().map(|r| (self.row)(c, r)).collect()
    }

    /// Deletes the row; NotFound when there is none.
    pub(crate) fn delete(&self, c: &mut Conn, account: &AccountId, id: &str) -> DbResult<()> {
        let n = c.execute(
            &format!(
                "DELETE FROM {} WHERE account_id = $1 AND id = $2",
                self.name
            ),
            &[&account.as_str(), &id],
        )?;
        self.changed(n)
    }
}

/// Whether `table` has a row (account, id).
pub(crate) fn owned(c: &mut Conn, table: &str, account: &str, id: &str) -> DbResult<bool> {
    Ok(c.query_opt(
        &format!("SELECT 1 FROM {table} WHERE account_id = $1 AND id = $2"),
        &[&account, &id],
    )?
    .is_some())
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
