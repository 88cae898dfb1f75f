//! Accounts (the merchants, "user" in the payloads) and their API keys. Admin token only.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use merpati_domain::account::{Account, ApiKey};
use merpati_domain::alert::Language;
use merpati_domain::ids::{self, AccountId, ApiKeyId};
use merpati_domain::limits::AccountLimits;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::api::extract::{Admin, JsonBody, OptionalJsonBody, Query};
use crate::api::openapi::{ErrorBody, IfMatchHeader, IfNoneMatchHeader};
use crate::api::paging::{list_response, Listed, PageQuery};
use crate::api::revision::{self, IfMatch};
use crate::api::time::as_rfc3339;
use crate::api::validate::{check_name, id_or_new, parse_time};
use crate::api::{ApiError, ApiResult, AppState};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(read, update, remove))
        .routes(routes!(list_keys, create_key))
        .routes(routes!(revoke_key))
}

/// An account as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AccountView {
    #[schema(value_type = String)]
    pub id: AccountId,
    pub name: String,
    pub language: &'static str,
    /// The account's own limits; one not named is the server's default (`limits.*`).
    pub limits: LimitsView,
    #[serde(with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    #[serde(with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: i64,
}

/// An account's own limits over the server's defaults.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LimitsView {
    /// Events a second from all its devices together (a second's worth at once).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events_per_second: Option<u32>,
    /// Events a second from any one of its devices.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_events_per_second: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_devices: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_endpoints: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_alert_rules: Option<u32>,
}

impl From<&AccountLimits> for LimitsView {
    fn from(l: &AccountLimits) -> Self {
        LimitsView {
            events_per_second: l.events_per_second,
            device_events_per_second: l.device_events_per_second,
            max_devices: l.max_devices,
            max_endpoints: l.max_endpoints,
            max_alert_rules: l.max_alert_rules,
        }
    }
}

/// Applies a `limits` object: a number sets a limit, `null` gives it back to the default.
fn apply_limits(limits: &mut AccountLimits, patch: &Value) -> ApiResult<()> {
    let Value::Object(fields) = patch else {
        return Err(ApiError::invalid("limits must be an object"));
    };
    for (name, value) in fields {
        let slot = match name.as_str() {
            "events_per_second" => &mut limits.events_per_second,
            "device_events_per_second" => &mut limits.device_events_per_second,
            "max_devices" => &mut limits.max_devices,
            "max_endpoints" => &mut limits.max_endpoints,
            "max_alert_rules" => &mut limits.max_alert_rules,
            other => {
                return Err(ApiError::invalid(format!(
                    "limits.{other} is not a limit; expected events_per_second, \
                     device_events_per_second, max_devices, max_endpoints or max_alert_rules"
                )))
            }
        };
        *slot = match value {
            Value::Null => None,
            v => Some(
                v.as_u64()
                    .filter(|n| (1..=u64::from(u32::MAX)).contains(n))
                    .ok_or_else(|| {
                        ApiError::invalid(format!(
                            "limits.{name} must be a whole number from 1 to {}, or null",
                            u32::MAX
                        ))
                    })? as u32,
            ),
        };
    }
    Ok(())
}

impl From<&Account> for AccountView {
    fn from(a: &Account) -> Self {
        AccountView {
            id: a.id.clone(),
            name: a.name.clone(),
            language: a.language.as_str(),
            limits: LimitsView::from(&a.limits),
            created_at: a.created_at,
            updated_at: a.updated_at,
        }
    }
}

/// An API key as the API shows it (the key itself only once, at creation).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ApiKeyView {
    #[schema(value_type = String)]
    pub id: ApiKeyId,
    #[schema(value_type = String)]
    pub account_id: AccountId,
    /// The key's first characters, to tell keys apart without showing them.
    pub hint: String,
    #[serde(with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    #[serde(with = "as_rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub revoked_at: Option<i64>,
    /// Reads only: every other method is refused with 403.
    pub read_only: bool,
    /// Opens nothing from this time on.
    #[serde(with = "as_rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<i64>,
    /// When a request last used it, to the minute.
    #[serde(with = "as_rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_used_at: Option<i64>,
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
            read_only: k.read_only,
            expires_at: k.expires_at,
            last_used_at: k.last_used_at,
            key: None,
        }
    }
}

/// What a new key may do; an empty body makes a full key that never expires.
#[derive(Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewKey {
    /// Reads only (GET): every other method is refused with 403.
    #[serde(default)]
    read_only: bool,
    /// RFC 3339 or Unix seconds, in the future: the key opens nothing from then on.
    expires_at: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewAccount {
    id: Option<String>,
    name: String,
    language: Option<String>,
    /// Its own limits over the server's defaults.
    #[schema(value_type = Option<Object>)]
    limits: Option<Value>,
}

/// `language`: `en` or `id`, the language of the account's notifications.
fn language(raw: Option<&str>) -> ApiResult<Option<Language>> {
    raw.map(|l| {
        Language::parse(l).ok_or_else(|| ApiError::invalid("language must be \"en\" or \"id\""))
    })
    .transpose()
}

#[utoipa::path(post, path = "/v1/accounts", tag = "accounts", security(("admin_token" = [])),
    request_body = NewAccount,
    responses(
        (status = 201, description = "Created.", body = AccountView),
        (status = 409, description = "An account with this id exists.", body = ErrorBody),
    ))]
async fn create(
    _: Admin,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<NewAccount>,
) -> ApiResult<(StatusCode, Json<AccountView>)> {
    check_name("name", &body.name)?;
    let now = state.clock.now_ms();
    let mut limits = AccountLimits::default();
    if let Some(patch) = &body.limits {
        apply_limits(&mut limits, patch)?;
    }
    let account = Account {
        id: id_or_new("id", body.id, AccountId::generate, AccountId::parse)?,
        name: body.name,
        language: language(body.language.as_deref())?.unwrap_or_default(),
        limits,
        created_at: now,
        updated_at: now,
        revision: 0,
    };
    let account = state.store.create_account(account).await?;
    Ok((StatusCode::CREATED, Json((&account).into())))
}

#[utoipa::path(get, path = "/v1/accounts", tag = "accounts", security(("admin_token" = [])),
    params(PageQuery),
    responses((status = 200, description = "A page of accounts.", body = Listed<AccountView>)))]
async fn list(
    _: Admin,
    State(state): State<AppState>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<Listed<AccountView>>> {
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

#[utoipa::path(get, path = "/v1/accounts/{id}", tag = "accounts", security(("admin_token" = [])),
    params(("id" = String, Path, description = "The account's id."), IfNoneMatchHeader),
    responses((status = 200, description = "The account, with its `ETag`.", body = AccountView)))]
async fn read(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let account = state.store.get_account(id.into()).await?;
    Ok(revision::read(&headers, AccountView::from(&account)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct AccountPatch {
    name: Option<String>,
    language: Option<String>,
    /// Limits to set (a number) or give back to the default (`null`); others unchanged.
    #[schema(value_type = Option<Object>)]
    limits: Option<Value>,
}

#[utoipa::path(patch, path = "/v1/accounts/{id}", tag = "accounts", security(("admin_token" = [])),
    params(("id" = String, Path, description = "The account's id."), IfMatchHeader),
    request_body = AccountPatch,
    responses((status = 200, description = "Changed.", body = AccountView)))]
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
    if let Some(patch) = &body.limits {
        apply_limits(&mut AccountLimits::default(), patch)?;
    }
    let id = AccountId::from(id);
    let answer = revision::patch(
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
            if let Some(patch) = &body.limits {
                apply_limits(&mut a.limits, patch)?;
            }
            a.updated_at = state.clock.now_ms();
            Ok(())
        },
        |a, _| async { revision::saved(state.store.update_account(a).await) },
    )
    .await;
    // Its devices' cached contexts carry its limits: they are read again.
    state.device_tokens.forget_account(&id);
    answer
}

#[utoipa::path(delete, path = "/v1/accounts/{id}", tag = "accounts", security(("admin_token" = [])),
    params(("id" = String, Path, description = "The account's id.")),
    responses((status = 204, description = "Deleted, with everything of it; its events are purged after.")))]
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
#[utoipa::path(post, path = "/v1/accounts/{id}/api-keys", tag = "accounts", security(("admin_token" = [])),
    params(("id" = String, Path, description = "The account's id.")),
    request_body(content = Option<NewKey>, description = "Optional: a read-only key, an expiry."),
    responses((status = 201, description = "A new key; `key` is shown this once.", body = ApiKeyView)))]
async fn create_key(
    _: Admin,
    State(state): State<AppState>,
    Path(account_id): Path<String>,
    OptionalJsonBody(body): OptionalJsonBody<NewKey>,
) -> ApiResult<(StatusCode, Json<ApiKeyView>)> {
    let now = state.clock.now_ms();
    let expires_at = body
        .expires_at
        .as_deref()
        .map(|raw| parse_time("expires_at", raw))
        .transpose()?;
    if expires_at.is_some_and(|at| at <= now) {
        return Err(ApiError::invalid("expires_at must be in the future"));
    }
    let secret = ids::new_token("mpk");
    let key = ApiKey {
        id: ApiKeyId::generate(),
        account_id: account_id.into(),
        hint: secret[..8].to_string(),
        created_at: now,
        revoked_at: None,
        read_only: body.read_only,
        expires_at,
        last_used_at: None,
    };
    let key = state
        .store
        .create_api_key(key, ids::token_hash(&secret))
        .await?;
    let mut view = ApiKeyView::from(&key);
    view.key = Some(secret);
    Ok((StatusCode::CREATED, Json(view)))
}

#[utoipa::path(get, path = "/v1/accounts/{id}/api-keys", tag = "accounts", security(("admin_token" = [])),
    params(("id" = String, Path, description = "The account's id.")),
    responses((status = 200, description = "The account's keys, revoked ones too.", body = Listed<ApiKeyView>)))]
async fn list_keys(
    _: Admin,
    State(state): State<AppState>,
    Path(account_id): Path<String>,
) -> ApiResult<Json<Listed<ApiKeyView>>> {
    let keys: Vec<ApiKeyView> = state
        .store
        .list_api_keys(account_id.into())
        .await?
        .iter()
        .map(ApiKeyView::from)
        .collect();
    Ok(Listed::all(keys))
}

#[utoipa::path(delete, path = "/v1/accounts/{id}/api-keys/{key_id}", tag = "accounts", security(("admin_token" = [])),
    params(("id" = String, Path, description = "The account's id."), ("key_id" = String, Path, description = "The key's id.")),
    responses((status = 204, description = "Revoked: it opens nothing from now on.")))]
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
