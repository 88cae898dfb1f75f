use rusqlite::{params, OptionalExtension, Row};

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
        .prepare_cached("SELECT 1 FROM accounts WHERE id = ?1")?
        .exists([id])?;
    if found {
        Ok(())
    } else {
        Err(StoreError::NotFound("account"))
    }
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
                if is_unique_violation(&e) {
                    StoreError::Conflict(format!("account {:?} already exists", a.id))
                } else {
                    e.into()
                }
            })?;
            Ok(a)
        })
        .await
    }

    async fn list_accounts(&self, page: Page) -> StoreResult<Vec<Account>> {
        self.read(move |c| {
            let mut s = c.prepare_cached(&format!(
                "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id > ?1 ORDER BY id LIMIT ?2"
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
                "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = ?1"
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
                "UPDATE accounts SET name = ?2, updated_at = ?3 WHERE id = ?1
                 RETURNING {ACCOUNT_COLUMNS}"
            ))?
            .query_row(params![id, name, now], account_row)
            .optional()?
            .ok_or(StoreError::NotFound("account"))
        })
        .await
    }

    async fn delete_account(&self, id: String) -> StoreResult<Vec<String>> {
        self.write(move |c| {
            let endpoints = c
                .prepare("DELETE FROM endpoints WHERE account_id = ?1 RETURNING id")?
                .query_map([&id], |r| r.get(0))?
                .collect::<Result<Vec<String>, _>>()?;
            // Children first: channels and devices reference their parents without cascade
            // (deleting a business with channels is refused elsewhere), so clear them in order.
            for table in ["events", "devices", "channels", "businesses", "api_keys"] {
                c.execute(&format!("DELETE FROM {table} WHERE account_id = ?1"), [&id])?;
            }
            match c.execute("DELETE FROM accounts WHERE id = ?1", [&id])? {
                0 => Err(StoreError::NotFound("account")),
                _ => Ok(endpoints),
            }
        })
        .await
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
