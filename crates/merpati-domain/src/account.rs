//! Accounts (the merchants, "user" in the payloads) and their API keys.

use crate::ids::{AccountId, ApiKeyId, EndpointId};
use crate::storage::{Page, StoreResult};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub id: AccountId,
    pub name: String,
    /// The language of its notifications.
    pub language: crate::alert::Language,
    /// Its own rates and caps, over the server's defaults.
    pub limits: crate::limits::AccountLimits,
    pub created_at: i64,
    pub updated_at: i64,
    /// Counts the changes made to it: an update names the revision it was read at.
    pub revision: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: ApiKeyId,
    pub account_id: AccountId,
    /// The key's first characters, to tell keys apart without showing them.
    pub hint: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    /// Reads only: every write is refused (403).
    pub read_only: bool,
    /// Opens nothing from this time on (ms).
    pub expires_at: Option<i64>,
    /// When a request last used it, to [`LAST_USED_PRECISION_MS`].
    pub last_used_at: Option<i64>,
}

/// How stale a key's `last_used_at` may be: it is written at most once this often, so a
/// busy key costs one write a minute, not one a request.
pub const LAST_USED_PRECISION_MS: i64 = 60_000;

/// What a live key (not revoked, not expired) lets a request do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyGrant {
    pub key_id: ApiKeyId,
    pub account_id: AccountId,
    pub read_only: bool,
    pub last_used_at: Option<i64>,
}

impl KeyGrant {
    /// Whether a use at `now` should be recorded as the key's last.
    pub fn use_to_record(&self, now: i64) -> bool {
        self.last_used_at
            .is_none_or(|at| now - at >= LAST_USED_PRECISION_MS)
    }
}

/// Whether a key is live at `now`.
pub fn key_is_live(revoked_at: Option<i64>, expires_at: Option<i64>, now: i64) -> bool {
    revoked_at.is_none() && expires_at.is_none_or(|at| at > now)
}

#[async_trait::async_trait]
pub trait AccountStore: Send + Sync {
    /// Conflict when the id is taken.
    async fn create_account(&self, account: Account) -> StoreResult<Account>;
    async fn list_accounts(&self, page: Page) -> StoreResult<Vec<Account>>;
    async fn get_account(&self, id: AccountId) -> StoreResult<Account>;
    /// Stores the account's new name if it is still at `account.revision`; Stale when it
    /// changed since. Returns it as stored.
    async fn update_account(&self, account: Account) -> StoreResult<Account>;
    /// Gone at once from every view, with its keys, devices, channels and businesses; its
    /// endpoints are deleted as endpoints are, and its events go later, through
    /// `purge_deleted_account`. Returns its endpoints' ids.
    async fn delete_account(&self, id: AccountId, now: i64) -> StoreResult<Vec<EndpointId>>;
    /// Removes up to `limit` rows of a deleted account (its events, then itself once its
    /// endpoints are purged); returns how many, 0 when nothing can go now.
    async fn purge_deleted_account(&self, limit: usize) -> StoreResult<usize>;
    async fn create_api_key(&self, key: ApiKey, hash: Vec<u8>) -> StoreResult<ApiKey>;
    async fn list_api_keys(&self, account: AccountId) -> StoreResult<Vec<ApiKey>>;
    async fn revoke_api_key(&self, account: AccountId, key: ApiKeyId, now: i64) -> StoreResult<()>;
    /// What the key of `hash` grants, if it is live at `now` (not revoked, not expired).
    async fn api_key_grant(&self, hash: Vec<u8>, now: i64) -> StoreResult<Option<KeyGrant>>;
    /// Records a use of the key at `now`.
    async fn record_api_key_use(&self, key: ApiKeyId, now: i64) -> StoreResult<()>;

    /// Opens a dashboard session for the live key of `key_hash`, stored by `session_hash`
    /// until `expires_at`; None (and nothing stored) when the key is not live. Sessions that
    /// ended by `now` go in the same write.
    async fn create_session(
        &self,
        session_hash: Vec<u8>,
        key_hash: Vec<u8>,
        now: i64,
        expires_at: i64,
    ) -> StoreResult<Option<KeyGrant>>;
    /// What the key of a session that has not expired grants, while the key is live.
    async fn session_grant(&self, session_hash: Vec<u8>, now: i64)
        -> StoreResult<Option<KeyGrant>>;
    /// Signs a session out; nothing happens when there is no such session.
    async fn end_session(&self, session_hash: Vec<u8>) -> StoreResult<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_live_until_revoked_or_expired() {
        assert!(key_is_live(None, None, 5));
        assert!(key_is_live(None, Some(6), 5));
        assert!(!key_is_live(None, Some(5), 5));
        assert!(!key_is_live(Some(1), None, 5));
    }

    #[test]
    fn a_use_is_recorded_at_most_once_a_minute() {
        let grant = |last| KeyGrant {
            key_id: "k".into(),
            account_id: "a".into(),
            read_only: false,
            last_used_at: last,
        };
        assert!(grant(None).use_to_record(0));
        assert!(!grant(Some(1_000)).use_to_record(1_000 + LAST_USED_PRECISION_MS - 1));
        assert!(grant(Some(1_000)).use_to_record(1_000 + LAST_USED_PRECISION_MS));
    }
}
