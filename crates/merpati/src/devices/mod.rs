//! The device tree of an account: businesses ("bisnis"), their channels, and the devices on
//! each channel, with the device tokens the device API authenticates with.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::api::extract::{Account, JsonBody, Query};
use crate::api::{
    check_id, check_name, double_option, id_or_new, list_response, ApiError, ApiResult, AppState,
    PageQuery,
};
use crate::clock::as_rfc3339;
use crate::ids;
use crate::store::{Page, StoreResult};

pub mod token_cache;

#[derive(Debug, Clone, Serialize)]
pub struct Business {
    pub id: String,
    pub name: String,
    #[serde(with = "as_rfc3339")]
    pub created_at: i64,
    #[serde(with = "as_rfc3339")]
    pub updated_at: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Channel {
    pub id: String,
    pub name: String,
    pub engine: String,
    pub business_id: String,
    pub backup_channel_id: Option<String>,
    /// Lease settings for the devices of this channel (over the engine's and the defaults).
    #[serde(with = "as_duration::option")]
    pub heartbeat_timeout: Option<i64>,
    #[serde(with = "as_duration::option")]
    pub presence_grace: Option<i64>,
    #[serde(with = "as_rfc3339")]
    pub created_at: i64,
    #[serde(with = "as_rfc3339")]
    pub updated_at: i64,
}

/// Millisecond settings shown as durations like `"1m 30s"`.
mod as_duration {
    pub mod option {
        pub fn serialize<S: serde::Serializer>(ms: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
            match ms {
                Some(ms) => s.serialize_str(
                    &humantime::format_duration(std::time::Duration::from_millis(*ms as u64))
                        .to_string(),
                ),
                None => s.serialize_none(),
            }
        }
    }
}

/// A lease setting as given in a request: `"90s"`, `"5m"`, … at least 1 s, at most a day.
fn parse_lease(field: &str, raw: &str) -> ApiResult<i64> {
    let d = humantime::parse_duration(raw).map_err(|_| {
        ApiError::invalid(format!("{field} {raw:?} is not a duration like \"90s\""))
    })?;
    if d < std::time::Duration::from_secs(1) || d > std::time::Duration::from_secs(86_400) {
        return Err(ApiError::invalid(format!("{field} must be from 1s to 24h")));
    }
    Ok(d.as_millis() as i64)
}

#[derive(Debug, Clone, Serialize)]
pub struct Device {
    pub id: String,
    pub name: String,
    pub channel_id: String,
    /// The WhatsApp number (`wid` in whatsapp payloads).
    pub phone: Option<String>,
    /// `unknown`, `connected` or `disconnected`: the last announced presence.
    pub status: Presence,
    #[serde(with = "as_rfc3339::option")]
    pub status_since: Option<i64>,
    #[serde(with = "as_rfc3339")]
    pub created_at: i64,
    #[serde(with = "as_rfc3339")]
    pub updated_at: i64,
}

/// A device's announced presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Presence {
    Unknown,
    Connected,
    Disconnected,
}

impl Presence {
    pub fn as_db(self) -> &'static str {
        match self {
            Presence::Unknown => "unknown",
            Presence::Connected => "up",
            Presence::Disconnected => "down",
        }
    }

    pub fn from_db(s: &str) -> Presence {
        match s {
            "up" => Presence::Connected,
            "down" => Presence::Disconnected,
            _ => Presence::Unknown,
        }
    }
}

/// `GET /v1/devices?status=&engine=&business_id=&channel_id=`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceFilter {
    pub status: Option<String>,
    pub engine: Option<String>,
    pub business_id: Option<String>,
    pub channel_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceListQuery {
    limit: Option<usize>,
    cursor: Option<String>,
    status: Option<String>,
    engine: Option<String>,
    business_id: Option<String>,
    channel_id: Option<String>,
}

/// Everything known about an authenticated device, as of the request: the names that go
/// into its payloads.
#[derive(Debug, Clone)]
pub struct DeviceContext {
    pub account_id: String,
    pub account_name: String,
    pub business_id: String,
    pub business_name: String,
    pub channel_id: String,
    pub channel_name: String,
    pub engine: String,
    pub device_id: String,
    pub device_name: String,
    pub phone: Option<String>,
    /// The presence last announced, and since when: what the presence hub starts from.
    pub presence: Presence,
    pub presence_since: Option<i64>,
    pub engine_state: Option<crate::presence::machine::EngineReport>,
    /// The channel's own lease settings, if it has any.
    pub channel_heartbeat_ms: Option<i64>,
    pub channel_grace_ms: Option<i64>,
}

#[async_trait::async_trait]
pub trait DeviceStore: Send + Sync {
    async fn create_business(&self, account: String, b: Business) -> StoreResult<Business>;
    async fn list_businesses(&self, account: String, page: Page) -> StoreResult<Vec<Business>>;
    async fn get_business(&self, account: String, id: String) -> StoreResult<Business>;
    async fn update_business(&self, account: String, b: Business) -> StoreResult<Business>;
    /// Conflict while channels belong to it.
    async fn delete_business(&self, account: String, id: String) -> StoreResult<()>;

    /// Invalid when the business or the backup channel is not the account's.
    async fn create_channel(&self, account: String, c: Channel) -> StoreResult<Channel>;
    async fn list_channels(&self, account: String, page: Page) -> StoreResult<Vec<Channel>>;
    async fn get_channel(&self, account: String, id: String) -> StoreResult<Channel>;
    async fn update_channel(&self, account: String, c: Channel) -> StoreResult<Channel>;
    /// Conflict while devices are on it; channels backed up by it lose their backup.
    async fn delete_channel(&self, account: String, id: String) -> StoreResult<()>;

    async fn create_device(
        &self,
        account: String,
        d: Device,
        token_hash: Vec<u8>,
    ) -> StoreResult<Device>;
    async fn list_devices(
        &self,
        account: String,
        page: Page,
        filter: DeviceFilter,
    ) -> StoreResult<Vec<Device>>;
    async fn get_device(&self, account: String, id: String) -> StoreResult<Device>;
    async fn update_device(&self, account: String, d: Device) -> StoreResult<Device>;
    async fn delete_device(&self, account: String, id: String) -> StoreResult<()>;
    /// Replaces the token; the old one stops working at once.
    async fn rotate_device_token(
        &self,
        account: String,
        id: String,
        token_hash: Vec<u8>,
        now: i64,
    ) -> StoreResult<()>;
    async fn device_for_token(&self, token_hash: Vec<u8>) -> StoreResult<Option<DeviceContext>>;
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/businesses", get(list_businesses).post(create_business))
        .route(
            "/v1/businesses/{id}",
            get(read_business)
                .patch(update_business)
                .delete(delete_business),
        )
        .route("/v1/channels", get(list_channels).post(create_channel))
        .route(
            "/v1/channels/{id}",
            get(read_channel)
                .patch(update_channel)
                .delete(delete_channel),
        )
        .route("/v1/devices", get(list_devices).post(create_device))
        .route(
            "/v1/devices/{id}",
            get(read_device).patch(update_device).delete(delete_device),
        )
        .route("/v1/devices/{id}/token", post(rotate_token))
}

// Businesses

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewBusiness {
    id: Option<String>,
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BusinessPatch {
    name: Option<String>,
}

async fn create_business(
    Account(account): Account,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<NewBusiness>,
) -> ApiResult<(StatusCode, Json<Business>)> {
    check_name("name", &body.name)?;
    let now = state.clock.now_ms();
    let b = Business {
        id: id_or_new("id", body.id, "biz")?,
        name: body.name,
        created_at: now,
        updated_at: now,
    };
    Ok((
        StatusCode::CREATED,
        Json(state.store.create_business(account, b).await?),
    ))
}

async fn list_businesses(
    Account(account): Account,
    State(state): State<AppState>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let page = q.page()?;
    let items = state.store.list_businesses(account, page.clone()).await?;
    Ok(list_response(items, &page, |b| b.id.clone()))
}

async fn read_business(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Business>> {
    Ok(Json(state.store.get_business(account, id).await?))
}

async fn update_business(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(patch): JsonBody<BusinessPatch>,
) -> ApiResult<Json<Business>> {
    let mut b = state.store.get_business(account.clone(), id).await?;
    if let Some(name) = patch.name {
        check_name("name", &name)?;
        b.name = name;
    }
    b.updated_at = state.clock.now_ms();
    Ok(Json(state.store.update_business(account, b).await?))
}

async fn delete_business(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state.store.delete_business(account, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// Channels

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewChannel {
    id: Option<String>,
    name: String,
    engine: String,
    business_id: String,
    backup_channel_id: Option<String>,
    heartbeat_timeout: Option<String>,
    presence_grace: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelPatch {
    name: Option<String>,
    engine: Option<String>,
    business_id: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    backup_channel_id: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    heartbeat_timeout: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    presence_grace: Option<Option<String>>,
}

/// Engines are an open set (`wa`, `telegram`, `slack`, `sms`, …) with id-like spelling.
fn check_engine(engine: &str) -> ApiResult<()> {
    if engine.is_empty() || engine.len() > 32 {
        return Err(ApiError::invalid("engine must be 1 to 32 characters"));
    }
    check_id("engine", engine)
}

fn check_channel(c: &Channel) -> ApiResult<()> {
    check_name("name", &c.name)?;
    check_engine(&c.engine)?;
    check_id("business_id", &c.business_id)?;
    if let Some(backup) = &c.backup_channel_id {
        check_id("backup_channel_id", backup)?;
        if *backup == c.id {
            return Err(ApiError::invalid("a channel cannot be its own backup"));
        }
    }
    Ok(())
}

async fn create_channel(
    Account(account): Account,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<NewChannel>,
) -> ApiResult<(StatusCode, Json<Channel>)> {
    let now = state.clock.now_ms();
    let c = Channel {
        id: id_or_new("id", body.id, "ch")?,
        name: body.name,
        engine: body.engine,
        business_id: body.business_id,
        backup_channel_id: body.backup_channel_id,
        heartbeat_timeout: body
            .heartbeat_timeout
            .map(|d| parse_lease("heartbeat_timeout", &d))
            .transpose()?,
        presence_grace: body
            .presence_grace
            .map(|d| parse_lease("presence_grace", &d))
            .transpose()?,
        created_at: now,
        updated_at: now,
    };
    check_channel(&c)?;
    Ok((
        StatusCode::CREATED,
        Json(state.store.create_channel(account, c).await?),
    ))
}

async fn list_channels(
    Account(account): Account,
    State(state): State<AppState>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let page = q.page()?;
    let items = state.store.list_channels(account, page.clone()).await?;
    Ok(list_response(items, &page, |c| c.id.clone()))
}

async fn read_channel(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Channel>> {
    Ok(Json(state.store.get_channel(account, id).await?))
}

async fn update_channel(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(patch): JsonBody<ChannelPatch>,
) -> ApiResult<Json<Channel>> {
    let mut c = state.store.get_channel(account.clone(), id).await?;
    if let Some(name) = patch.name {
        c.name = name;
    }
    if let Some(engine) = patch.engine {
        c.engine = engine;
    }
    if let Some(business_id) = patch.business_id {
        c.business_id = business_id;
    }
    if let Some(backup) = patch.backup_channel_id {
        c.backup_channel_id = backup;
    }
    if let Some(t) = patch.heartbeat_timeout {
        c.heartbeat_timeout = t
            .map(|d| parse_lease("heartbeat_timeout", &d))
            .transpose()?;
    }
    if let Some(g) = patch.presence_grace {
        c.presence_grace = g.map(|d| parse_lease("presence_grace", &d)).transpose()?;
    }
    check_channel(&c)?;
    c.updated_at = state.clock.now_ms();
    Ok(Json(state.store.update_channel(account, c).await?))
}

async fn delete_channel(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state.store.delete_channel(account, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// Devices

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewDevice {
    id: Option<String>,
    name: String,
    channel_id: String,
    phone: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DevicePatch {
    name: Option<String>,
    channel_id: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    phone: Option<Option<String>>,
}

fn check_device(d: &Device) -> ApiResult<()> {
    check_name("name", &d.name)?;
    check_id("channel_id", &d.channel_id)?;
    if let Some(phone) = &d.phone {
        check_phone("phone", phone)?;
    }
    Ok(())
}

/// Phone numbers are kept as given; only their size and characters are checked.
pub fn check_phone(field: &str, phone: &str) -> ApiResult<()> {
    let ok = !phone.is_empty()
        && phone.len() <= 64
        && phone
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.() @_:".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "{field} must be 1 to 64 characters of digits, letters and + - . ( ) @ _ : or space"
        )))
    }
}

/// A device as shown right after it got a token: the only time the token is visible.
fn with_token(device: &Device, token: &str) -> Json<serde_json::Value> {
    let mut body = serde_json::to_value(device).expect("devices serialize");
    body["token"] = token.into();
    Json(body)
}

async fn create_device(
    Account(account): Account,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<NewDevice>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let now = state.clock.now_ms();
    let d = Device {
        id: id_or_new("id", body.id, "dev")?,
        name: body.name,
        channel_id: body.channel_id,
        phone: body.phone,
        status: Presence::Unknown,
        status_since: None,
        created_at: now,
        updated_at: now,
    };
    check_device(&d)?;
    let token = ids::new_token("mdt");
    let d = state
        .store
        .create_device(account, d, ids::token_hash(&token))
        .await?;
    Ok((StatusCode::CREATED, with_token(&d, &token)))
}

async fn list_devices(
    Account(account): Account,
    State(state): State<AppState>,
    Query(q): Query<DeviceListQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let page = PageQuery {
        limit: q.limit,
        cursor: q.cursor,
    }
    .page()?;
    if let Some(s) = &q.status {
        if !["unknown", "connected", "disconnected"].contains(&s.as_str()) {
            return Err(ApiError::invalid(
                "status must be unknown, connected or disconnected",
            ));
        }
    }
    for (field, v) in [
        ("engine", &q.engine),
        ("business_id", &q.business_id),
        ("channel_id", &q.channel_id),
    ] {
        if let Some(v) = v {
            check_id(field, v)?;
        }
    }
    let filter = DeviceFilter {
        status: q.status,
        engine: q.engine,
        business_id: q.business_id,
        channel_id: q.channel_id,
    };
    let items = state
        .store
        .list_devices(account, page.clone(), filter)
        .await?;
    Ok(list_response(items, &page, |d| d.id.clone()))
}

async fn read_device(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Device>> {
    Ok(Json(state.store.get_device(account, id).await?))
}

async fn update_device(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(patch): JsonBody<DevicePatch>,
) -> ApiResult<Json<Device>> {
    let mut d = state.store.get_device(account.clone(), id).await?;
    if let Some(name) = patch.name {
        d.name = name;
    }
    if let Some(channel_id) = patch.channel_id {
        d.channel_id = channel_id;
    }
    if let Some(phone) = patch.phone {
        d.phone = phone;
    }
    check_device(&d)?;
    d.updated_at = state.clock.now_ms();
    let d = state.store.update_device(account.clone(), d).await?;
    state.device_tokens.forget_device(&account, &d.id);
    Ok(Json(d))
}

async fn delete_device(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state
        .store
        .delete_device(account.clone(), id.clone())
        .await?;
    state.device_tokens.forget_device(&account, &id);
    state
        .presence
        .close_link(&account, &id, crate::presence::hub::CLOSE_TOKEN)
        .await;
    Ok(StatusCode::NO_CONTENT)
}

async fn rotate_token(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let token = ids::new_token("mdt");
    let now = state.clock.now_ms();
    state
        .store
        .rotate_device_token(account.clone(), id.clone(), ids::token_hash(&token), now)
        .await?;
    state.device_tokens.forget_device(&account, &id);
    state
        .presence
        .close_link(&account, &id, crate::presence::hub::CLOSE_TOKEN)
        .await;
    let d = state.store.get_device(account, id).await?;
    Ok(with_token(&d, &token))
}
