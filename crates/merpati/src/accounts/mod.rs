//! Accounts (the merchants, "user" in the payloads) and their API keys. Admin token only.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{delete, get};
use axum::{Json, Router};
use merpati_domain::account::{Account, ApiKey};
use merpati_domain::alert::Language;
use merpati_domain::ids::{self, AccountId, ApiKeyId};
use serde::{Deserialize, Serialize};

use crate::api::extract::{Admin, JsonBody, Query};
use crate::api::paging::{list_response, PageQuery};
use crate::api::revision::{self, IfMatch};
use crate::api::time::as_rfc3339;
use crate::api::validate::{check_name, id_or_new};
use crate::api::{ApiError, ApiResult, AppState};

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

/// An account as the API shows it.
#[derive(Debug, Serialize)]
pub struct AccountView {
    pub id: AccountId,
    pub name: String,
    pub language: &'static str,
    #[serde(with = "as_rfc3339")]
    pub created_at: i64,
    #[serde(with = "as_rfc3339")]
    pub updated_at: i64,
}

impl From<&Account> for AccountView {
    fn from(a: &Account) -> Self {
        AccountView {
            id: a.id.clone(),
            name: a.name.clone(),
            language: a.language.as_str(),
            created_at: a.created_at,
            updated_at: a.updated_at,
        }
    }
}

/// An API key as the API shows it (the key itself only once, at creation).
#[derive(Debug, Serialize)]
pub struct ApiKeyView {
    pub id: ApiKeyId,
    pub account_id: AccountId,
    /// The key's first characters, to tell keys apart without showing them.
    pub hint: String,
    #[serde(with = "as_rfc3339")]
    pub created_at: i64,
    #[serde(with = "as_rfc3339::option")]
    pub revoked_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl From<&ApiKey> for ApiKeyView {
    fn from(k: &ApiKey) -> Self {
        ApiKeyView {
            id: k.id.clone(),
            account_id: k.account_id.clone(),
            hint: k.hint.clone(),
            created_at: k.created_at,
            revoked_at: k.revoked_at,
            key: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewAccount {
    id: Option<String>,
    name: String,
    language: Option<String>,
}

/// `language`: `en` or `id`, the language of the account's notifications.
fn language(raw: Option<&str>) -> ApiResult<Option<Language>> {
    raw.map(|l| {
        Language::parse(l).ok_or_else(|| ApiError::invalid("language must be \"en\" or \"id\""))
    })
    .transpose()
}

async fn create(
    _: Admin,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<NewAccount>,
) -> ApiResult<(StatusCode, Json<AccountView>)> {
    check_name("name", &body.name)?;
    let now = state.clock.now_ms();
    let account = Account {
        id: id_or_new("id", body.id, AccountId::generate, AccountId::parse)?,
        name: body.name,
        language: language(body.language.as_deref())?.unwrap_or_default(),
        created_at: now,
        updated_at: now,
        revision: 0,
    };
    let account = state.store.create_account(account).await?;
    Ok((StatusCode::CREATED, Json((&account).into())))
}

async fn list(
    _: Admin,
    State(state): State<AppState>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let page = q.page()?;
    let items: Vec<AccountView> = state
        .store
        .list_accounts(page.clone())
        .await?
        .iter()
        .map(AccountView::from)
        .collect();
    Ok(list_response(items, &page, |a| a.id.to_string()))
}

async fn read(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let account = state.store.get_account(id.into()).await?;
    Ok(revision::read(&headers, AccountView::from(&account)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountPatch {
    name: Option<String>,
    language: Option<String>,
}

async fn update(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
    if_match: IfMatch,
    JsonBody(body): JsonBody<AccountPatch>,
) -> ApiResult<Response> {
    if let Some(name) = &body.name {
        check_name("name", name)?;
    }
    let new_language = language(body.language.as_deref())?;
    let id = AccountId::from(id);
    revision::patch(
        &if_match,
        "account",
        || state.store.get_account(id.clone()),
        |a: &Account| AccountView::from(a),
        |a: &mut Account| {
            if let Some(name) = &body.name {
                a.name = name.clone();
            }
            if let Some(l) = new_language {
                a.language = l;
            }
            a.updated_at = state.clock.now_ms();
            Ok(())
        },
        |a, _| async { revision::saved(state.store.update_account(a).await) },
    )
    .await
}

async fn remove(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = AccountId::from(id);
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
) -> ApiResult<(StatusCode, Json<ApiKeyView>)> {
    let secret = ids::new_token("mpk");
    let key = ApiKey {
        id: ApiKeyId::generate(),
        account_id: account_id.into(),
        hint: secret[..8].to_string(),
        created_at: state.clock.now_ms(),
        revoked_at: None,
    };
    let key = state
        .store
        .create_api_key(key, ids::token_hash(&secret))
        .await?;
    let mut view = ApiKeyView::from(&key);
    view.key = Some(secret);
    Ok((StatusCode::CREATED, Json(view)))
}

async fn list_keys(
    _: Admin,
    State(state): State<AppState>,
    Path(account_id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let keys: Vec<ApiKeyView> = state
        .store
        .list_api_keys(account_id.into())
        .await?
        .iter()
        .map(ApiKeyView::from)
        .collect();
    Ok(Json(serde_json::json!({"data": keys, "next_cursor": null})))
}

async fn revoke_key(
    _: Admin,
    State(state): State<AppState>,
    Path((account_id, key_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let now = state.clock.now_ms();
    state
        .store
        .revoke_api_key(account_id.into(), key_id.into(), now)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
