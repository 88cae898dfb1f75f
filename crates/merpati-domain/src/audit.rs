//! The audit trail: every change made through the API, who made it (which key, the admin,
//! or a dashboard session), from which address, what (the route, the object, the names of
//! the fields sent, never their values) and when.

use crate::ids::AccountId;
use crate::storage::StoreResult;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Given by the store, in the order entries were recorded.
    pub id: i64,
    /// The account the change was made in (for the admin's, the account it was about).
    pub account_id: Option<AccountId>,
    /// `admin`, `api_key:<key id>` or `dashboard:<key id>`.
    pub actor: String,
    pub address: Option<String>,
    pub method: String,
    /// The route as the API documents it (`/v1/endpoints/{id}`).
    pub route: String,
    pub object_id: Option<String>,
    /// The names of the body's fields, sorted; never a value.
    pub fields: Vec<String>,
    pub status: u16,
    pub at: i64,
}

#[async_trait::async_trait]
pub trait AuditStore: Send + Sync {
    /// Stores the entry; its `id` is ignored and the stored one returned.
    async fn record_audit(&self, entry: AuditEntry) -> StoreResult<AuditEntry>;
    /// An account's entries, newest first, those with an id below `before` if given.
    async fn list_audit(
        &self,
        account: AccountId,
        before: Option<i64>,
        limit: usize,
    ) -> StoreResult<Vec<AuditEntry>>;
    /// Deletes up to `limit` entries recorded before `before` (ms); how many went.
    async fn prune_audit(&self, before: i64, limit: usize) -> StoreResult<usize>;
}
