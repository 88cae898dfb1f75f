//! The device tree of an account: businesses ("bisnis"), their channels, and the devices on
//! each channel, with the device tokens the device API authenticates with.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use merpati_domain::device::{Business, Channel, Device, DeviceFilter, Presence};
use merpati_domain::ids::{self, BusinessId, ChannelId, DeviceId};
use merpati_runtime::presence::CLOSE_TOKEN;
use serde::Deserialize;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::api::extract::{Account, JsonBody, Query};
use crate::api::openapi::{ErrorBody, IfMatchHeader, IfNoneMatchHeader};
use crate::api::paging::{list_response, Listed, PageQuery};
use crate::api::revision::{self, IfMatch};
use crate::api::validate::{check_id, check_name, check_phone, double_option, id_or_new, parse_id};
use crate::api::{ApiError, ApiResult, AppState};

mod views;

pub use views::{BusinessView, ChannelView, DeviceView};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_businesses, create_business))
        .routes(routes!(read_business, update_business, delete_business))
        .routes(routes!(list_channels, create_channel))
        .routes(routes!(read_channel, update_channel, delete_channel))
        .routes(routes!(list_devices, create_device))
        .routes(routes!(read_device, update_device, delete_device))
        .routes(routes!(rotate_token))
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

// Businesses

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewBusiness {
    id: Option<String>,
    name: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct BusinessPatch {
    name: Option<String>,
}

#[utoipa::path(post, path = "/v1/businesses", tag = "devices", security(("api_key" = [])),
    request_body = NewBusiness,
    responses(
        (status = 201, description = "Created.", body = BusinessView),
        (status = 409, description = "A business with this id exists.", body = ErrorBody),
    ))]
async fn create_business(
    Account(account): Account,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<NewBusiness>,
) -> ApiResult<(StatusCode, Json<BusinessView>)> {
    check_name("name", &body.name)?;
    let now = state.clock.now_ms();
    let b = Business {
        id: id_or_new("id", body.id, BusinessId::generate, BusinessId::parse)?,
        name: body.name,
        created_at: now,
        updated_at: now,
        revision: 0,
    };
    let b = state.store.create_business(account, b).await?;
    Ok((StatusCode::CREATED, Json((&b).into())))
}

#[utoipa::path(get, path = "/v1/businesses", tag = "devices", security(("api_key" = [])),
    params(PageQuery),
    responses((status = 200, description = "A page of businesss.", body = Listed<BusinessView>)))]
async fn list_businesses(
    Account(account): Account,
    State(state): State<AppState>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<Listed<BusinessView>>> {
    let page = q.page()?;
    let items: Vec<BusinessView> = state
        .store
        .list_businesses(account, page.clone())
        .await?
        .iter()
        .map(BusinessView::from)
        .collect();
    Ok(list_response(items, &page, |b| b.id.to_string()))
}

#[utoipa::path(get, path = "/v1/businesses/{id}", tag = "devices", security(("api_key" = [])),
    params(("id" = String, Path, description = "The business's id."), IfNoneMatchHeader),
    responses((status = 200, description = "The business, with its `ETag`.", body = BusinessView)))]
async fn read_business(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let b = state.store.get_business(account, id.into()).await?;
    Ok(revision::read(&headers, BusinessView::from(&b)))
}

#[utoipa::path(patch, path = "/v1/businesses/{id}", tag = "devices", security(("api_key" = [])),
    params(("id" = String, Path, description = "The business's id."), IfMatchHeader),
    request_body = BusinessPatch,
    responses((status = 200, description = "Changed.", body = BusinessView)))]
async fn update_business(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
    if_match: IfMatch,
    JsonBody(patch): JsonBody<BusinessPatch>,
) -> ApiResult<Response> {
    if let Some(name) = &patch.name {
        check_name("name", name)?;
    }
    let id = BusinessId::from(id);
    revision::patch(
        &if_match,
        "business",
        || state.store.get_business(account.clone(), id.clone()),
        |b: &Business| BusinessView::from(b),
        |b: &mut Business| {
            if let Some(name) = &patch.name {
                b.name = name.clone();
            }
            b.updated_at = state.clock.now_ms();
            Ok(())
        },
        |b, _| async { revision::saved(state.store.update_business(account.clone(), b).await) },
    )
    .await
}

#[utoipa::path(delete, path = "/v1/businesses/{id}", tag = "devices", security(("api_key" = [])),
    params(("id" = String, Path, description = "The business's id.")),
    responses((status = 204, description = "Deleted."),
        (status = 409, description = "It still has channels.", body = ErrorBody),))]
async fn delete_business(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state.store.delete_business(account, id.into()).await?;
    Ok(StatusCode::NO_CONTENT)
}

// Channels

#[derive(Deserialize, utoipa::ToSchema)]
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

#[derive(Deserialize, utoipa::ToSchema)]
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
    check_id("business_id", c.business_id.as_str())?;
    if let Some(backup) = &c.backup_channel_id {
        check_id("backup_channel_id", backup.as_str())?;
        if *backup == c.id {
            return Err(ApiError::invalid("a channel cannot be its own backup"));
        }
    }
    Ok(())
}

fn lease_setting(field: &str, raw: Option<String>) -> ApiResult<Option<i64>> {
    raw.map(|d| parse_lease(field, &d)).transpose()
}

#[utoipa::path(post, path = "/v1/channels", tag = "devices", security(("api_key" = [])),
    request_body = NewChannel,
    responses(
        (status = 201, description = "Created.", body = ChannelView),
        (status = 409, description = "A channel with this id exists.", body = ErrorBody),
        (status = 404, description = "Its business (or backup channel) is not in this account.", body = ErrorBody),
    ))]
async fn create_channel(
    Account(account): Account,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<NewChannel>,
) -> ApiResult<(StatusCode, Json<ChannelView>)> {
    let now = state.clock.now_ms();
    let c = Channel {
        id: id_or_new("id", body.id, ChannelId::generate, ChannelId::parse)?,
        name: body.name,
        engine: body.engine,
        business_id: body.business_id.into(),
        backup_channel_id: body.backup_channel_id.map(ChannelId::from),
        heartbeat_timeout_ms: lease_setting("heartbeat_timeout", body.heartbeat_timeout)?,
        grace_ms: lease_setting("presence_grace", body.presence_grace)?,
        created_at: now,
        updated_at: now,
        revision: 0,
    };
    check_channel(&c)?;
    let c = state.store.create_channel(account, c).await?;
    Ok((StatusCode::CREATED, Json((&c).into())))
}

#[utoipa::path(get, path = "/v1/channels", tag = "devices", security(("api_key" = [])),
    params(PageQuery),
    responses((status = 200, description = "A page of channels.", body = Listed<ChannelView>)))]
async fn list_channels(
    Account(account): Account,
    State(state): State<AppState>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<Listed<ChannelView>>> {
    let page = q.page()?;
    let items: Vec<ChannelView> = state
        .store
        .list_channels(account, page.clone())
        .await?
        .iter()
        .map(ChannelView::from)
        .collect();
    Ok(list_response(items, &page, |c| c.id.to_string()))
}

#[utoipa::path(get, path = "/v1/channels/{id}", tag = "devices", security(("api_key" = [])),
    params(("id" = String, Path, description = "The channel's id."), IfNoneMatchHeader),
    responses((status = 200, description = "The channel, with its `ETag`.", body = ChannelView)))]
async fn read_channel(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let c = state.store.get_channel(account, id.into()).await?;
    Ok(revision::read(&headers, ChannelView::from(&c)))
}

#[utoipa::path(patch, path = "/v1/channels/{id}", tag = "devices", security(("api_key" = [])),
    params(("id" = String, Path, description = "The channel's id."), IfMatchHeader),
    request_body = ChannelPatch,
    responses((status = 200, description = "Changed.", body = ChannelView)))]
async fn update_channel(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
    if_match: IfMatch,
    JsonBody(patch): JsonBody<ChannelPatch>,
) -> ApiResult<Response> {
    let id = ChannelId::from(id);
    revision::patch(
        &if_match,
        "channel",
        || state.store.get_channel(account.clone(), id.clone()),
        |c: &Channel| ChannelView::from(c),
        |c: &mut Channel| {
            if let Some(name) = &patch.name {
                c.name = name.clone();
            }
            if let Some(engine) = &patch.engine {
                c.engine = engine.clone();
            }
            if let Some(business_id) = &patch.business_id {
                c.business_id = business_id.clone().into();
            }
            if let Some(backup) = &patch.backup_channel_id {
                c.backup_channel_id = backup.clone().map(ChannelId::from);
            }
            if let Some(t) = &patch.heartbeat_timeout {
                c.heartbeat_timeout_ms = lease_setting("heartbeat_timeout", t.clone())?;
            }
            if let Some(g) = &patch.presence_grace {
                c.grace_ms = lease_setting("presence_grace", g.clone())?;
            }
            check_channel(c)?;
            c.updated_at = state.clock.now_ms();
            Ok(())
        },
        |c, _| async { revision::saved(state.store.update_channel(account.clone(), c).await) },
    )
    .await
}

#[utoipa::path(delete, path = "/v1/channels/{id}", tag = "devices", security(("api_key" = [])),
    params(("id" = String, Path, description = "The channel's id.")),
    responses((status = 204, description = "Deleted."),
        (status = 409, description = "It still has devices.", body = ErrorBody),))]
async fn delete_channel(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state.store.delete_channel(account, id.into()).await?;
    Ok(StatusCode::NO_CONTENT)
}

// Devices

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewDevice {
    id: Option<String>,
    name: String,
    channel_id: String,
    phone: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct DevicePatch {
    name: Option<String>,
    channel_id: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    phone: Option<Option<String>>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct DeviceListQuery {
    limit: Option<usize>,
    cursor: Option<String>,
    status: Option<String>,
    engine: Option<String>,
    business_id: Option<String>,
    channel_id: Option<String>,
}

fn check_device(d: &Device) -> ApiResult<()> {
    check_name("name", &d.name)?;
    check_id("channel_id", d.channel_id.as_str())?;
    if let Some(phone) = &d.phone {
        check_phone("phone", phone)?;
    }
    Ok(())
}

#[utoipa::path(post, path = "/v1/devices", tag = "devices", security(("api_key" = [])),
    request_body = NewDevice,
    responses(
        (status = 201, description = "Created.", body = DeviceView),
        (status = 409, description = "A device with this id exists (`conflict`), or the account has as many devices as its limit (`limit_reached`).", body = ErrorBody),
        (status = 404, description = "Its channel is not in this account.", body = ErrorBody),
    ))]
async fn create_device(
    Account(account): Account,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<NewDevice>,
) -> ApiResult<(StatusCode, Json<DeviceView>)> {
    let now = state.clock.now_ms();
    let d = Device {
        id: id_or_new("id", body.id, DeviceId::generate, DeviceId::parse)?,
        name: body.name,
        channel_id: body.channel_id.into(),
        phone: body.phone,
        status: Presence::Unknown,
        status_since: None,
        created_at: now,
        updated_at: now,
        revision: 0,
    };
    check_device(&d)?;
    let cap = state.limits_of(&account).await?.max_devices;
    let token = ids::new_token("mdt");
    let d = state
        .store
        .create_device(account, d, ids::token_hash(&token), cap)
        .await?;
    Ok((StatusCode::CREATED, Json(DeviceView::with_token(&d, token))))
}

#[utoipa::path(get, path = "/v1/devices", tag = "devices", security(("api_key" = [])),
    params(DeviceListQuery),
    responses((status = 200, description = "A page of devices, filtered.", body = Listed<DeviceView>)))]
async fn list_devices(
    Account(account): Account,
    State(state): State<AppState>,
    Query(q): Query<DeviceListQuery>,
) -> ApiResult<Json<Listed<DeviceView>>> {
    let page = PageQuery {
        limit: q.limit,
        cursor: q.cursor,
    }
    .page()?;
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(Presence::parse(s).ok_or_else(|| {
            ApiError::invalid("status must be unknown, connected or disconnected")
        })?),
    };
    if let Some(engine) = &q.engine {
        check_id("engine", engine)?;
    }
    let filter = DeviceFilter {
        status,
        engine: q.engine,
        business_id: q
            .business_id
            .map(|b| parse_id("business_id", b, BusinessId::parse))
            .transpose()?,
        channel_id: q
            .channel_id
            .map(|c| parse_id("channel_id", c, ChannelId::parse))
            .transpose()?,
    };
    let items: Vec<DeviceView> = state
        .store
        .list_devices(account, page.clone(), filter)
        .await?
        .iter()
        .map(DeviceView::from)
        .collect();
    Ok(list_response(items, &page, |d| d.id.to_string()))
}

#[utoipa::path(get, path = "/v1/devices/{id}", tag = "devices", security(("api_key" = [])),
    params(("id" = String, Path, description = "The device's id."), IfNoneMatchHeader),
    responses((status = 200, description = "The device, with its `ETag`.", body = DeviceView)))]
async fn read_device(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let d = state.store.get_device(account, id.into()).await?;
    Ok(revision::read(&headers, DeviceView::from(&d)))
}

#[utoipa::path(patch, path = "/v1/devices/{id}", tag = "devices", security(("api_key" = [])),
    params(("id" = String, Path, description = "The device's id."), IfMatchHeader),
    request_body = DevicePatch,
    responses((status = 200, description = "Changed.", body = DeviceView)))]
async fn update_device(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
    if_match: IfMatch,
    JsonBody(patch): JsonBody<DevicePatch>,
) -> ApiResult<Response> {
    let id = DeviceId::from(id);
    let answer = revision::patch(
        &if_match,
        "device",
        || state.store.get_device(account.clone(), id.clone()),
        |d: &Device| DeviceView::from(d),
        |d: &mut Device| {
            if let Some(name) = &patch.name {
                d.name = name.clone();
            }
            if let Some(channel_id) = &patch.channel_id {
                d.channel_id = channel_id.clone().into();
            }
            if let Some(phone) = &patch.phone {
                d.phone = phone.clone();
            }
            check_device(d)?;
            d.updated_at = state.clock.now_ms();
            Ok(())
        },
        |d, _| async { revision::saved(state.store.update_device(account.clone(), d).await) },
    )
    .await?;
    // Its names go into its payloads: the next request reads them.
    state.device_tokens.forget_device(&account, &id);
    Ok(answer)
}

#[utoipa::path(delete, path = "/v1/devices/{id}", tag = "devices", security(("api_key" = [])),
    params(("id" = String, Path, description = "The device's id.")),
    responses((status = 204, description = "Deleted; its link is closed and its token opens nothing from now on."),))]
async fn delete_device(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = DeviceId::from(id);
    state
        .store
        .delete_device(account.clone(), id.clone())
        .await?;
    state.device_tokens.forget_device(&account, &id);
    state.presence.close_link(&account, &id, CLOSE_TOKEN).await;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/devices/{id}/token", tag = "devices", security(("api_key" = [])),
    params(("id" = String, Path, description = "The device's id.")),
    responses((status = 200, description = "The device with its new `token`, shown this once; the old token is refused from now on and its link closed.", body = DeviceView)))]
async fn rotate_token(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<DeviceView>> {
    let id = DeviceId::from(id);
    let token = ids::new_token("mdt");
    let now = state.clock.now_ms();
    state
        .store
        .rotate_device_token(account.clone(), id.clone(), ids::token_hash(&token), now)
        .await?;
    state.device_tokens.forget_device(&account, &id);
    state.presence.close_link(&account, &id, CLOSE_TOKEN).await;
    let d = state.store.get_device(account, id).await?;
    Ok(Json(DeviceView::with_token(&d, token)))
}
