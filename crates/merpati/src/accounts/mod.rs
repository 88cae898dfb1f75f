//! Accounts (the merchants, "user" in the payloads) and their API keys. Admin token only.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::api::extract::{Admin, JsonBody, Query};
use crate::api::{check_name, id_or_new, list_response, ApiResult, AppState, PageQuery};
use crate::clock::as_rfc3339;
use crate::ids;
use crate::store::{Page, StoreResult};

#[derive(Debug, Clone, Serialize)]
pub struct Account {
    pub id: String,
    pub name: String,
    #[serde(with = "as_rfc3339")]
    pub created_at: i64,
    #[serde(with = "as_rfc3339")]
    pub updated_at: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ApiKey {
    pub id: String,
    pub account_id: String,
    /// The key's first characters, to tell keys apart without showing them.
    pub hint: String,
    #[serde(with = "as_rfc3339")]
    pub created_at: i64,
    #[serde(with = "as_rfc3339::option")]
    pub revoked_at: Option<i64>,
}

#[async_trait::async_trait]
pub trait AccountStore: Send + Sync {
    /// Conflict when the id is taken.
    async fn create_account(&self, account: Account) -> StoreResult<Account>;
    async fn list_accounts(&self, page: Page) -> StoreResult<Vec<Account>>;
    async fn get_account(&self, id: String) -> StoreResult<Account>;
    async fn rename_account(&self, id: String, name: String, now: i64) -> StoreResult<Account>;
    /// Gone at once from every view, with its keys, devices, channels and businesses; its
    /// endpoints are deleted as endpoints are, and its events go later, through
    /// `purge_deleted_account`. Returns its endpoints' ids.
    async fn delete_account(&self, id: String, now: i64) -> StoreResult<Vec<String>>;
    /// Removes up to `limit` rows of a deleted account (its events, then itself once its
    /// endpoints are purged); returns how many, 0 when nothing can go now.
    async fn purge_deleted_account(&self, limit: usize) -> StoreResult<usize>;
    async fn create_api_key(&self, key: ApiKey, hash: Vec<u8>) -> StoreResult<ApiKey>;
    async fn list_api_keys(&self, account_id: String) -> StoreResult<Vec<ApiKey>>;
    async fn revoke_api_key(&self, account_id: String, key_id: String, now: i64)
        -> StoreResult<()>;
    /// The account of a live (not revoked) key.
    async fn account_for_api_key(&self, hash: Vec<u8>) -> StoreResult<Option<String>>;
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/accounts", get(list).post(create))
        .route("/v1/accounts/{id}", get(read).patch(update).delete(remove))
        .route(
            "/v1/accounts/{id}/api-keys",
            get(list_keys).post(create_key),
        )
        .route("/v1/accounts/{id}/api-keys/{key_id}", delete(revoke_key))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewAccount {
    id: Option<String>,
    name: String,
}

async fn create(
    _: Admin,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<NewAccount>,
) -> ApiResult<(StatusCode, Json<Account>)> {
    check_name("name", &body.name)?;
    let now = state.clock.now_ms();
    let account = Account {
        id: id_or_new("id", body.id, "acct")?,
        name: body.name,
        created_at: now,
        updated_at: now,
    };
    let account = state.store.create_account(account).await?;
    Ok((StatusCode::CREATED, Json(account)))
}

async fn list(
    _: Admin,
    State(state): State<AppState>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let page = q.page()?;
    let items = state.store.list_accounts(page.clone()).await?;
    Ok(list_response(items, &page, |a| a.id.clone()))
}

async fn read(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Account>> {
    Ok(Json(state.store.get_account(id).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountPatch {
    name: String,
}

async fn update(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<AccountPatch>,
) -> ApiResult<Json<Account>> {
    check_name("name", &body.name)?;
    let now = state.clock.now_ms();
    Ok(Json(state.store.rename_account(id, body.name, now).await?))
}

async fn remove(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let now = state.clock.now_ms();
    let endpoints = state.store.delete_account(id.clone(), now).await?;
    state.device_tokens.forget_account(&id);
    for endpoint in endpoints {
        state.handoff.endpoint_deleted(endpoint);
    }
    state.purge.notify_one();
    Ok(StatusCode::NO_CONTENT)
}

/// The key itself is in the answer this once (`key`); only its digest is stored.
async fn create_key(
    _: Admin,
    State(state): State<AppState>,
    Path(account_id): Path<String>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let secret = ids::new_token("mpk");
    let key = ApiKey {
        id: ids::new_id("key"),
        account_id,
        hint: secret[..8].to_string(),
        created_at: state.clock.now_ms(),
        revoked_at: None,
    };
    let key = state
        .store
        .create_api_key(key, ids::token_hash(&secret))
        .await?;
    let mut body = serde_json::to_value(&key).expect("keys serialize");
    body["key"] = secret.into();
    Ok((StatusCode::CREATED, Json(body)))
}

async fn list_keys(
    _: Admin,
    State(state): State<AppState>,
    Path(account_id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let keys = state.store.list_api_keys(account_id).await?;
    Ok(Json(serde_json::json!({"data": keys, "next_cursor": null})))
}

async fn revoke_key(
    _: Admin,
    State(state): State<AppState>,
    Path((account_id, key_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let now = state.clock.now_ms();
    state.store.revoke_api_key(account_id, key_id, now).await?;
    Ok(StatusCode::NO_CONTENT)
}
