//! Accounts and their API keys; a deleted account goes at once from every view, and its
//! events in the background.

use merpati_domain::account::{Account, AccountStore, ApiKey, KeyGrant};
use merpati_domain::alert::Language;
use merpati_domain::ids::{AccountId, ApiKeyId, EndpointId};
use merpati_domain::limits::AccountLimits;
use merpati_domain::{Page, StoreError, StoreResult};
use postgres::Row;

use crate::conn::Conn;
use crate::endpoints::purge_step;
use crate::error::DbResult;
use crate::events::delete_events;
use crate::rows::{json_column, word};
use crate::writer::Tx;
use crate::PostgresStore;

const ACCOUNT_COLUMNS: &str = "id, name, created_at, updated_at, revision, language, limits";

fn account_row(r: &Row) -> DbResult<Account> {
    Ok(Account {
        id: AccountId::from(r.get::<_, String>(0)),
        name: r.get(1),
        created_at: r.get(2),
        updated_at: r.get(3),
        revision: r.get(4),
        language: word(r.get(5), Language::parse)?,
        limits: json_column(r.get(6))?,
    })
}

fn limits_json(limits: &AccountLimits) -> String {
    serde_json::to_string(limits).expect("limits serialize")
}

fn key_row(r: &Row) -> ApiKey {
    ApiKey {
        id: ApiKeyId::from(r.get::<_, String>(0)),
        account_id: AccountId::from(r.get::<_, String>(1)),
        hint: r.get(2),
        created_at: r.get(3),
        revoked_at: r.get(4),
        read_only: r.get(5),
        expires_at: r.get(6),
        last_used_at: r.get(7),
    }
}

const KEY_COLUMNS: &str =
    "id, account_id, hint, created_at, revoked_at, read_only, expires_at, last_used_at";

/// A live key's grant: `k` is the key's row, the statement's `$2` is now.
const GRANT: &str = "SELECT k.id, k.account_id, k.read_only, k.last_used_at FROM api_keys k
     JOIN accounts a ON a.id = k.account_id";
const LIVE: &str = "k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > $2)
     AND a.deleted_at IS NULL";

fn grant_row(r: &Row) -> KeyGrant {
    KeyGrant {
        key_id: ApiKeyId::from(r.get::<_, String>(0)),
        account_id: AccountId::from(r.get::<_, String>(1)),
        read_only: r.get(2),
        last_used_at: r.get(3),
    }
}

pub(crate) fn account_exists(c: &mut Conn, id: &AccountId) -> DbResult<()> {
    let found = c
        .query_opt(
            "SELECT 1 FROM accounts WHERE id = $1 AND deleted_at IS NULL",
            &[&id.as_str()],
        )?
        .is_some();
    if found {
        Ok(())
    } else {
        Err(StoreError::NotFound("account").into())
    }
}

fn get_account(c: &mut Conn, id: &AccountId) -> DbResult<Account> {
    let row = c
        .query_opt(
            &format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = $1 AND deleted_at IS NULL"),
            &[&id.as_str()],
        )?
        .ok_or(StoreError::NotFound("account"))?;
    account_row(&row)
}

/// A deleted account still to purge.
pub(crate) const DELETED_ACCOUNT: &str =
    "SELECT id FROM accounts WHERE deleted_at IS NOT NULL LIMIT 1";

/// Up to $2 of an account's events, with what hangs off them (see `delete_events`).
fn account_events() -> String {
    delete_events("SELECT seq FROM events WHERE account_id = $1 LIMIT $2")
}

/// Removes up to `limit` events of a deleted account, or the account itself once it has no
/// events and its endpoints are purged (see `purge_deleted_endpoint`). Returns how many rows
/// it removed: 0 when there is nothing it can do now.
fn purge_deleted_account(c: &mut Tx<'_>, limit: usize) -> DbResult<usize> {
    let id = match purge_step(c, DELETED_ACCOUNT, &account_events(), limit)? {
        None => return Ok(0),
        Some((_, events)) if events > 0 => return Ok(events),
        Some((id, _)) => id,
    };
    let endpoints_left = c
        .query_opt("SELECT 1 FROM endpoints WHERE account_id = $1", &[&id])?
        .is_some();
    if endpoints_left {
        return Ok(0);
    }
    Ok(c.execute("DELETE FROM accounts WHERE id = $1", &[&id])? as usize)
}

#[async_trait::async_trait]
impl AccountStore for PostgresStore {
    async fn create_account(&self, a: Account) -> StoreResult<Account> {
        self.write(move |c| {
            let inserted = c.execute(
                "INSERT INTO accounts (id, name, created_at, updated_at, revision, language, limits)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING",
                &[
                    &a.id.as_str(),
                    &a.name,
                    &a.created_at,
                    &a.updated_at,
                    &a.revision,
                    &a.language.as_str(),
                    &limits_json(&a.limits),
                ],
            )?;
            if inserted == 0 {
                return Err(if account_exists(c.conn(), &a.id).is_ok() {
                    StoreError::Conflict(format!("account {:?} already exists", a.id.as_str()))
                } else {
                    StoreError::Conflict(format!(
                        "account {:?} is still being deleted; try again shortly",
                        a.id.as_str()
                    ))
                }
                .into());
            }
            Ok(a)
        })
        .await
    }

    async fn list_accounts(&self, page: Page) -> StoreResult<Vec<Account>> {
        self.read(move |c| {
            c.query(
                &format!(
                    "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id > $1 AND deleted_at IS NULL
                     ORDER BY id LIMIT $2"
                ),
                &[&page.after.unwrap_or_default(), &(page.limit as i64)],
            )?
            .iter()
            .map(account_row)
            .collect()
        })
        .await
    }

    async fn get_account(&self, id: AccountId) -> StoreResult<Account> {
        self.read(move |c| get_account(c, &id)).await
    }

    async fn update_account(&self, a: Account) -> StoreResult<Account> {
        self.write(move |c| {
            account_exists(c.conn(), &a.id)?;
            let n = c.execute(
                "UPDATE accounts SET name = $2, updated_at = $3, language = $5, limits = $6,
                     revision = revision + 1
                 WHERE id = $1 AND deleted_at IS NULL AND revision = $4",
                &[
                    &a.id.as_str(),
                    &a.name,
                    &a.updated_at,
                    &a.revision,
                    &a.language.as_str(),
                    &limits_json(&a.limits),
                ],
            )?;
            if n == 0 {
                return Err(StoreError::Stale("account").into());
            }
            get_account(c.conn(), &a.id)
        })
        .await
    }

    async fn delete_account(&self, id: AccountId, now: i64) -> StoreResult<Vec<EndpointId>> {
        self.write(move |c| {
            let marked = c.execute(
                "UPDATE accounts SET deleted_at = $2 WHERE id = $1 AND deleted_at IS NULL",
                &[&id.as_str(), &now],
            )?;
            if marked == 0 {
                return Err(StoreError::NotFound("account").into());
            }
            // Its endpoints go as deleted endpoints do: marked now, purged in the background.
            let endpoints = c
                .query(
                    "UPDATE endpoints SET deleted_at = $2, disabled = TRUE
                     WHERE account_id = $1 AND deleted_at IS NULL RETURNING id",
                    &[&id.as_str(), &now],
                )?
                .iter()
                .map(|r| EndpointId::from(r.get::<_, String>(0)))
                .collect();
            // What lets anyone in (keys, device tokens, connectors) goes now, with the few
            // rows that hang off devices. Children first: channels and devices reference
            // their parents without cascade. The events, the bulk, go in the background.
            for table in [
                "connectors",
                "devices",
                "channels",
                "businesses",
                "api_keys",
            ] {
                c.execute(
                    &format!("DELETE FROM {table} WHERE account_id = $1"),
                    &[&id.as_str()],
                )?;
            }
            Ok(endpoints)
        })
        .await
    }

    async fn purge_deleted_account(&self, limit: usize) -> StoreResult<usize> {
        self.write_aside(move |c| purge_deleted_account(c, limit))
            .await
    }

    async fn create_api_key(&self, key: ApiKey, hash: Vec<u8>) -> StoreResult<ApiKey> {
        self.write(move |c| {
            account_exists(c.conn(), &key.account_id)?;
            c.execute(
                "INSERT INTO api_keys (id, account_id, key_hash, hint, created_at, read_only,
                     expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &key.id.as_str(),
                    &key.account_id.as_str(),
                    &hash,
                    &key.hint,
                    &key.created_at,
                    &key.read_only,
                    &key.expires_at,
                ],
            )?;
            Ok(key)
        })
        .await
    }

    async fn list_api_keys(&self, account: AccountId) -> StoreResult<Vec<ApiKey>> {
        self.read(move |c| {
            account_exists(c, &account)?;
            Ok(c.query(
                &format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE account_id = $1 ORDER BY id"),
                &[&account.as_str()],
            )?
            .iter()
            .map(key_row)
            .collect())
        })
        .await
    }

    async fn revoke_api_key(&self, account: AccountId, key: ApiKeyId, now: i64) -> StoreResult<()> {
        self.write(move |c| {
            let n = c.execute(
                "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $3)
                 WHERE account_id = $1 AND id = $2",
                &[&account.as_str(), &key.as_str(), &now],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound("api key").into());
            }
            Ok(())
        })
        .await
    }

    async fn api_key_grant(&self, hash: Vec<u8>, now: i64) -> StoreResult<Option<KeyGrant>> {
        self.read(move |c| {
            Ok(c.query_opt(
                &format!("{GRANT} WHERE k.key_hash = $1 AND {LIVE}"),
                &[&hash, &now],
            )?
            .as_ref()
            .map(grant_row))
        })
        .await
    }

    async fn record_api_key_use(&self, key: ApiKeyId, now: i64) -> StoreResult<()> {
        self.write_checked(move |c| {
            c.execute(
                "UPDATE api_keys SET last_used_at = GREATEST(COALESCE(last_used_at, 0), $2)
                 WHERE id = $1",
                &[&key.as_str(), &now],
            )?;
            Ok(())
        })
        .await
    }

    async fn create_session(
        &self,
        session_hash: Vec<u8>,
        key_hash: Vec<u8>,
        now: i64,
        expires_at: i64,
    ) -> StoreResult<Option<KeyGrant>> {
        self.write(move |c| {
            c.execute(
                "DELETE FROM dashboard_sessions WHERE expires_at <= $1",
                &[&now],
            )?;
            let key = c
                .query_opt(
                    &format!("{GRANT} WHERE k.key_hash = $1 AND {LIVE}"),
                    &[&key_hash, &now],
                )?
                .as_ref()
                .map(grant_row);
            let Some(grant) = key else {
                return Ok(None);
            };
            c.execute(
                "INSERT INTO dashboard_sessions (token_hash, api_key_id, created_at, expires_at)
                 VALUES ($1, $2, $3, $4)",
                &[&session_hash, &grant.key_id.as_str(), &now, &expires_at],
            )?;
            Ok(Some(grant))
        })
        .await
    }

    async fn session_grant(
        &self,
        session_hash: Vec<u8>,
        now: i64,
    ) -> StoreResult<Option<KeyGrant>> {
        self.read(move |c| {
            Ok(c.query_opt(
                &format!(
                    "{GRANT} JOIN dashboard_sessions s ON s.api_key_id = k.id
                         WHERE s.token_hash = $1 AND s.expires_at > $2 AND {LIVE}"
                ),
                &[&session_hash, &now],
            )?
            .as_ref()
            .map(grant_row))
        })
        .await
    }

    async fn end_session(&self, session_hash: Vec<u8>) -> StoreResult<()> {
        self.write(move |c| {
            c.execute(
                "DELETE FROM dashboard_sessions WHERE token_hash = $1",
                &[&session_hash],
            )?;
            Ok(())
        })
        .await
    }
}
