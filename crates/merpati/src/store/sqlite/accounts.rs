use rusqlite::{params, OptionalExtension, Row};

use super::endpoints::purge_step;
use super::{is_unique_violation, SqliteStore};
use crate::accounts::{Account, AccountStore, ApiKey};
use crate::store::{Page, StoreError, StoreResult};

const ACCOUNT_COLUMNS: &str = "id, name, created_at, updated_at";

fn account_row(r: &Row<'_>) -> rusqlite::Result<Account> {
    Ok(Account {
        id: r.get(0)?,
        name: r.get(1)?,
        created_at: r.get(2)?,
        updated_at: r.get(3)?,
    })
}

fn key_row(r: &Row<'_>) -> rusqlite::Result<ApiKey> {
    Ok(ApiKey {
        id: r.get(0)?,
        account_id: r.get(1)?,
        hint: r.get(2)?,
        created_at: r.get(3)?,
        revoked_at: r.get(4)?,
    })
}

fn account_exists(c: &rusqlite::Connection, id: &str) -> StoreResult<()> {
    let found = c
        .prepare_cached("SELECT 1 FROM accounts WHERE id = ?1 AND deleted_at IS NULL")?
        .exists([id])?;
    if found {
        Ok(())
    } else {
        Err(StoreError::NotFound("account"))
    }
}

/// A deleted account still to purge.
pub(super) const DELETED_ACCOUNT: &str =
    "SELECT id FROM accounts WHERE deleted_at IS NOT NULL LIMIT 1";

/// Up to ?2 of an account's events (their deliveries and attempts go with them).
pub(super) const ACCOUNT_EVENTS: &str = "DELETE FROM events WHERE seq IN
     (SELECT seq FROM events WHERE account_id = ?1 LIMIT ?2)";

/// Removes up to `limit` events of a deleted account, or the account itself once it has no
/// events and its endpoints are purged (see `purge_deleted_endpoint`). Returns how many rows
/// it removed: 0 when there is nothing it can do now.
fn purge_deleted_account(c: &rusqlite::Connection, limit: usize) -> StoreResult<usize> {
    let id = match purge_step(c, DELETED_ACCOUNT, ACCOUNT_EVENTS, limit)? {
        None => return Ok(0),
        Some((_, events)) if events > 0 => return Ok(events),
        Some((id, _)) => id,
    };
    let endpoints_left = c
        .prepare_cached("SELECT 1 FROM endpoints WHERE account_id = ?1")?
        .exists([&id])?;
    if endpoints_left {
        return Ok(0);
    }
    Ok(c.execute("DELETE FROM accounts WHERE id = ?1", [id])?)
}

#[async_trait::async_trait]
impl AccountStore for SqliteStore {
    async fn create_account(&self, a: Account) -> StoreResult<Account> {
        self.write(move |c| {
            c.execute(
                "INSERT INTO accounts (id, name, created_at, updated_at) VALUES (?1, ?2, ?3, ?4)",
                params![a.id, a.name, a.created_at, a.updated_at],
            )
            .map_err(|e| {
                if !is_unique_violation(&e) {
                    e.into()
                } else if account_exists(c, &a.id).is_ok() {
                    StoreError::Conflict(format!("account {:?} already exists", a.id))
                } else {
                    StoreError::Conflict(format!(
                        "account {:?} is still being deleted; try again shortly",
                        a.id
                    ))
                }
            })?;
            Ok(a)
        })
        .await
    }

    async fn list_accounts(&self, page: Page) -> StoreResult<Vec<Account>> {
        self.read(move |c| {
            let mut s = c.prepare_cached(&format!(
                "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id > ?1 AND deleted_at IS NULL
                 ORDER BY id LIMIT ?2"
            ))?;
            let rows = s.query_map(
                params![page.after.unwrap_or_default(), page.limit as i64],
                account_row,
            )?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn get_account(&self, id: String) -> StoreResult<Account> {
        self.read(move |c| {
            c.prepare_cached(&format!(
                "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = ?1 AND deleted_at IS NULL"
            ))?
            .query_row([id], account_row)
            .optional()?
            .ok_or(StoreError::NotFound("account"))
        })
        .await
    }

    async fn rename_account(&self, id: String, name: String, now: i64) -> StoreResult<Account> {
        self.write(move |c| {
            c.prepare_cached(&format!(
                "UPDATE accounts SET name = ?2, updated_at = ?3
                 WHERE id = ?1 AND deleted_at IS NULL
                 RETURNING {ACCOUNT_COLUMNS}"
            ))?
            .query_row(params![id, name, now], account_row)
            .optional()?
            .ok_or(StoreError::NotFound("account"))
        })
        .await
    }

    async fn delete_account(&self, id: String, now: i64) -> StoreResult<Vec<String>> {
        self.write(move |c| {
            let marked = c.execute(
                "UPDATE accounts SET deleted_at = ?2 WHERE id = ?1 AND deleted_at IS NULL",
                params![id, now],
            )?;
            if marked == 0 {
                return Err(StoreError::NotFound("account"));
            }
            // Its endpoints go as deleted endpoints do: marked now, purged in the background.
            let endpoints = c
                .prepare(
                    "UPDATE endpoints SET deleted_at = ?2, disabled = 1
                     WHERE account_id = ?1 AND deleted_at IS NULL RETURNING id",
                )?
                .query_map(params![id, now], |r| r.get(0))?
                .collect::<Result<Vec<String>, _>>()?;
            // What lets anyone in (keys, device tokens) goes now, with the few rows that hang
            // off devices. Children first: channels and devices reference their parents
            // without cascade. The events, the bulk, go in the background.
            for table in ["devices", "channels", "businesses", "api_keys"] {
                c.execute(&format!("DELETE FROM {table} WHERE account_id = ?1"), [&id])?;
            }
            Ok(endpoints)
        })
        .await
    }

    async fn purge_deleted_account(&self, limit: usize) -> StoreResult<usize> {
        self.write(move |c| purge_deleted_account(c, limit)).await
    }

    async fn create_api_key(&self, key: ApiKey, hash: Vec<u8>) -> StoreResult<ApiKey> {
        self.write(move |c| {
            account_exists(c, &key.account_id)?;
            c.execute(
                "INSERT INTO api_keys (id, account_id, key_hash, hint, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![key.id, key.account_id, hash, key.hint, key.created_at],
            )?;
            Ok(key)
        })
        .await
    }

    async fn list_api_keys(&self, account_id: String) -> StoreResult<Vec<ApiKey>> {
        self.read(move |c| {
            account_exists(c, &account_id)?;
            let mut s = c.prepare_cached(
                "SELECT id, account_id, hint, created_at, revoked_at FROM api_keys
                 WHERE account_id = ?1 ORDER BY id",
            )?;
            let rows = s.query_map([account_id], key_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn revoke_api_key(
        &self,
        account_id: String,
        key_id: String,
        now: i64,
    ) -> StoreResult<()> {
        self.write(move |c| {
            let n = c.execute(
                "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?3)
                 WHERE account_id = ?1 AND id = ?2",
                params![account_id, key_id, now],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound("api key"));
            }
            Ok(())
        })
        .await
    }

    async fn account_for_api_key(&self, hash: Vec<u8>) -> StoreResult<Option<String>> {
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT account_id FROM api_keys WHERE key_hash = ?1 AND revoked_at IS NULL",
            )?
            .query_row([hash], |r| r.get(0))
            .optional()?)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::{assert_whole, column, count, insert_endpoint, schema_with_account};

    #[test]
    fn a_deleted_account_goes_a_chunk_at_a_time_once_its_endpoints_are_gone() {
        let c = schema_with_account();
        c.execute(
            "INSERT INTO accounts (id, name, created_at, updated_at) VALUES ('b', 'b', 0, 0)",
            [],
        )
        .unwrap();
        insert_endpoint(&c, "a", "ep");
        for (seq, account) in [(1, "a"), (2, "b"), (3, "a"), (4, "a")] {
            c.execute(
                "INSERT INTO events (seq, id, account_id, type, payload, created_at)
                 VALUES (?1, 'evt_' || ?1, ?2, 'sms', '{}', 0)",
                params![seq, account],
            )
            .unwrap();
            c.execute(
                "INSERT INTO deliveries (event_seq, endpoint_id, status, created_at)
                 VALUES (?1, 'ep', 'succeeded', 0)",
                [seq],
            )
            .unwrap();
        }
        assert_eq!(purge_deleted_account(&c, 2).unwrap(), 0, "nothing deleted");
        c.execute("UPDATE accounts SET deleted_at = 1 WHERE id = 'a'", [])
            .unwrap();
        assert!(account_exists(&c, "a").is_err());

        assert_eq!(purge_deleted_account(&c, 2).unwrap(), 2);
        assert_eq!(purge_deleted_account(&c, 2).unwrap(), 1);
        assert_eq!(
            purge_deleted_account(&c, 2).unwrap(),
            0,
            "its endpoint is not purged yet"
        );
        c.execute("DELETE FROM endpoints WHERE id = 'ep'", [])
            .unwrap();
        assert_eq!(
            purge_deleted_account(&c, 2).unwrap(),
            1,
            "the account itself"
        );
        assert_eq!(purge_deleted_account(&c, 2).unwrap(), 0);
        let accounts: Vec<String> = column(&c, "SELECT id FROM accounts");
        assert_eq!(accounts, ["b"]);
        let events: Vec<i64> = column(&c, "SELECT seq FROM events");
        assert_eq!(events, [2], "another account's events stay");
        assert_eq!(count(&c, "SELECT COUNT(*) FROM deliveries"), 0);
        assert_whole(&c);
    }
}
