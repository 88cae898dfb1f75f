//! Accounts (the merchants, "user" in the payloads) and their API keys.

use crate::ids::{AccountId, ApiKeyId, EndpointId};
use crate::storage::{Page, StoreResult};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub id: AccountId,
    pub name: String,
    /// The language of its notifications.
    pub language: crate::alert::Language,
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
    /// The account of a live (not revoked) key.
    async fn account_for_api_key(&self, hash: Vec<u8>) -> StoreResult<Option<AccountId>>;

    /// Opens a dashboard session for the live key of `key_hash`, stored by `session_hash`
    /// until `expires_at`; None (and nothing stored) when the key is not live. Sessions that
    /// ended by `now` go in the same write.
    async fn create_session(
        &self,
        session_hash: Vec<u8>,
        key_hash: Vec<u8>,
        now: i64,
        expires_at: i64,
    ) -> StoreResult<Option<AccountId>>;
    /// The account of a session that has not expired and whose key is still live.
    async fn session_account(
        &self,
        session_hash: Vec<u8>,
        now: i64,
    ) -> StoreResult<Option<AccountId>>;
    /// Signs a session out; nothing happens when there is no such session.
    async fn end_session(&self, session_hash: Vec<u8>) -> StoreResult<()>;
}
