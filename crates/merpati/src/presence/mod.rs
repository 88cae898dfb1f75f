//! Device presence over HTTP: the device routes (heartbeat, engine status, the WebSocket
//! link in `link`) and the presence API (live status, sessions, downtime, availability). The
//! lease itself is the domain's state machine, driven by the runtime's presence hub.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use merpati_domain::device::{self, Presence};
use merpati_domain::ids::{AccountId, DeviceId, EventId};
use merpati_domain::presence::history;
use merpati_domain::presence::machine::{EngineReport, Input};
use merpati_domain::presence::{Blip, HistoryScope, Period, PeriodState};
use merpati_runtime::presence::{LiveStatus, LiveView, Telemetry};
use serde::{Deserialize, Serialize};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::api::extract::{Account, Device, JsonBody, OptionalJsonBody, Query};
use crate::api::openapi::ErrorBody;
use crate::api::time::as_rfc3339;
use crate::api::validate::parse_time;
use crate::api::{ApiError, ApiResult, AppState};

pub mod link;
mod uptime;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(heartbeat))
        .routes(routes!(report_status))
        .routes(routes!(link::upgrade))
        .routes(routes!(device_presence))
        .routes(routes!(uptime::uptime))
        .routes(routes!(device_sessions))
        .routes(routes!(channel_sessions))
        .routes(routes!(business_sessions))
        .routes(routes!(device_downtime))
        .routes(routes!(channel_downtime))
        .routes(routes!(business_downtime))
        .routes(routes!(device_availability))
        .routes(routes!(channel_availability))
        .routes(routes!(business_availability))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct HeartbeatBody {
    /// Percent, 0–100.
    battery: Option<u8>,
    charging: Option<bool>,
    /// Signal strength as the device measures it (dBm, or bars).
    signal: Option<i32>,
    /// `wifi`, `4g`, …
    network: Option<String>,
}

/// The device is alive (and how its phone is), when it has no link open.
#[utoipa::path(post, path = "/v1/device/heartbeat", tag = "device API",
    security(("device_token" = [])),
    request_body(content = Option<HeartbeatBody>, description = "Optional telemetry; an empty body is a heartbeat too."),
    responses(
        (status = 200, description = "Its lease is renewed until the heartbeat timeout.", body = HeartbeatAnswer),
        (status = 429, description = "Heartbeats faster than allowed (`rate_limited`); `Retry-After` says when to send the next.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds."))),
    ))]
async fn heartbeat(
    Device(device): Device,
    State(state): State<AppState>,
    OptionalJsonBody(body): OptionalJsonBody<HeartbeatBody>,
) -> ApiResult<Response> {
    if body.battery.is_some_and(|b| b > 100) {
        return Err(ApiError::invalid("battery must be 0 to 100"));
    }
    if body
        .network
        .as_ref()
        .is_some_and(|n| n.is_empty() || n.len() > 32)
    {
        return Err(ApiError::invalid("network must be 1 to 32 characters"));
    }
    let telemetry = Telemetry {
        battery: body.battery,
        charging: body.charging,
        signal: body.signal,
        network: body.network,
    };
    let timeouts = state.lease.for_device(&device);
    match state.presence.heartbeat(&device, telemetry).await? {
        Ok(outcome) => Ok(Json(HeartbeatAnswer {
            status: outcome.status.as_str(),
            event_id: outcome.event_id,
            heartbeat_timeout_seconds: timeouts.heartbeat_ms / 1000,
        })
        .into_response()),
        Err(retry_after_ms) => {
            let mut headers = HeaderMap::new();
            let secs = (retry_after_ms + 999) / 1000;
            headers.insert(
                axum::http::header::RETRY_AFTER,
                HeaderValue::from(secs.max(1)),
            );
            let err = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "heartbeats are coming faster than allowed; slow down",
            );
            Ok((headers, err).into_response())
        }
    }
}

/// The answer to a heartbeat.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct HeartbeatAnswer {
    /// The device's live status now.
    status: &'static str,
    /// The `device.connected` event this heartbeat caused, if it did.
    #[schema(value_type = Option<String>)]
    event_id: Option<EventId>,
    heartbeat_timeout_seconds: i64,
}

/// The answer to an engine's status report.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct StatusAnswer {
    status: &'static str,
    /// The presence event this report caused, if it did.
    #[schema(value_type = Option<String>)]
    event_id: Option<EventId>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct StatusBody {
    status: ReportedStatus,
    reason: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
enum ReportedStatus {
    Connected,
    Disconnected,
    LoggedOut,
}

/// What the device's engine says of its session (a WhatsApp account logged out, …).
#[utoipa::path(post, path = "/v1/device/status", tag = "device API",
    security(("device_token" = [])),
    request_body = StatusBody,
    responses((status = 202, description = "Taken into its presence.", body = StatusAnswer)))]
async fn report_status(
    Device(device): Device,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<StatusBody>,
) -> ApiResult<(StatusCode, Json<StatusAnswer>)> {
    if body.reason.as_ref().is_some_and(|r| r.len() > 1024) {
        return Err(ApiError::invalid("reason must be at most 1024 bytes"));
    }
    let report = match body.status {
        ReportedStatus::Connected => EngineReport::Connected,
        ReportedStatus::Disconnected => EngineReport::Disconnected,
        ReportedStatus::LoggedOut => EngineReport::LoggedOut,
    };
    let outcome = state.presence.input(&device, Input::Report(report)).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(StatusAnswer {
            status: outcome.status.as_str(),
            event_id: outcome.event_id,
        }),
    ))
}

/// What a phone said of itself, as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct TelemetryView {
    #[serde(skip_serializing_if = "Option::is_none")]
    battery: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    charging: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    signal: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    network: Option<String>,
}

impl From<Telemetry> for TelemetryView {
    fn from(t: Telemetry) -> Self {
        TelemetryView {
            battery: t.battery,
            charging: t.charging,
            signal: t.signal,
            network: t.network,
        }
    }
}

/// A device's live status: what the hub sees now, or else what was last announced.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct LiveState {
    #[schema(value_type = String)]
    device_id: DeviceId,
    /// `unknown`, `connected`, `pending` (inside the grace) or `disconnected`.
    status: &'static str,
    /// Since when the last announced status holds.
    #[serde(with = "as_rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    since: Option<i64>,
    link_open: bool,
    #[serde(with = "as_rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    last_seen_at: Option<i64>,
}

impl LiveState {
    pub(super) fn of(device: &device::Device, live: Option<&LiveView>) -> Self {
        let status = live.map(|l| l.status).unwrap_or(match device.status {
            Presence::Unknown => LiveStatus::Unknown,
            Presence::Connected => LiveStatus::Connected,
            Presence::Disconnected => LiveStatus::Disconnected,
        });
        LiveState {
            device_id: device.id.clone(),
            status: status.as_str(),
            since: device.status_since,
            link_open: live.is_some_and(|l| l.link_open),
            last_seen_at: live.and_then(|l| l.last_seen),
        }
    }
}

/// A device's presence now, with what its phone last said of itself.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct PresenceView {
    #[serde(flatten)]
    live: LiveState,
    telemetry: Option<TelemetryView>,
}

#[utoipa::path(get, path = "/v1/devices/{id}/presence", tag = "presence",
    security(("api_key" = [])),
    params(("id" = String, Path, description = "The device's id.")),
    responses((status = 200, description = "Its live status, link and telemetry.", body = PresenceView)))]
async fn device_presence(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<PresenceView>> {
    let id = DeviceId::from(id);
    let device = state.store.get_device(account.clone(), id.clone()).await?;
    let live = state.presence.view(&account, &id).await;
    Ok(Json(PresenceView {
        live: LiveState::of(&device, live.as_ref()),
        telemetry: live.and_then(|l| l.telemetry).map(TelemetryView::from),
    }))
}

/// One announced state of a device over time, as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct PeriodView {
    #[schema(value_type = String)]
    device_id: DeviceId,
    /// `up` or `down`.
    state: &'static str,
    #[serde(with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    started_at: i64,
    #[serde(with = "as_rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    ended_at: Option<i64>,
    reason: Option<String>,
}

impl From<&Period> for PeriodView {
    fn from(p: &Period) -> Self {
        PeriodView {
            device_id: p.device_id.clone(),
            state: p.state.as_str(),
            started_at: p.started_at,
            ended_at: p.ended_at,
            reason: p.reason.clone(),
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct BlipView {
    #[schema(value_type = String)]
    device_id: DeviceId,
    #[serde(with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    started_at: i64,
    #[serde(with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    ended_at: i64,
    reason: String,
}

impl From<Blip> for BlipView {
    fn from(b: Blip) -> Self {
        BlipView {
            device_id: b.device_id,
            started_at: b.started_at,
            ended_at: b.ended_at,
            reason: b.reason,
        }
    }
}

/// `?from=&to=`: RFC 3339 times or Unix seconds; the last 24 hours when absent.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct Window {
    from: Option<String>,
    to: Option<String>,
    /// Availability with the time inside maintenance windows left out.
    #[serde(default)]
    exclude_maintenance: bool,
}

impl Window {
    fn resolve(&self, now: i64) -> ApiResult<(i64, i64)> {
        let to = match &self.to {
            Some(t) => parse_time("to", t)?,
            None => now,
        };
        let from = match &self.from {
            Some(f) => parse_time("from", f)?,
            None => to - 24 * 3600 * 1000,
        };
        if from >= to {
            return Err(ApiError::invalid("from must be before to"));
        }
        Ok((from, to))
    }
}

async fn periods_of(
    state: &AppState,
    account: AccountId,
    scope: HistoryScope,
    window: &Window,
) -> ApiResult<(i64, i64, Vec<Period>)> {
    let (from, to) = window.resolve(state.clock.now_ms())?;
    let periods = state
        .store
        .presence_periods(account, scope, from, to)
        .await?;
    Ok((from, to, periods))
}

/// Up periods over a window, and the blips (down and back inside the grace) among them.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Sessions {
    data: Vec<PeriodView>,
    blips: Vec<BlipView>,
}

async fn sessions(
    state: AppState,
    account: AccountId,
    scope: HistoryScope,
    window: Window,
) -> ApiResult<Json<Sessions>> {
    let (from, to, periods) = periods_of(&state, account.clone(), scope.clone(), &window).await?;
    let blips: Vec<BlipView> = state
        .store
        .presence_blips(account, scope, from, to)
        .await?
        .into_iter()
        .map(BlipView::from)
        .collect();
    let sessions: Vec<PeriodView> = periods
        .iter()
        .filter(|p| p.state == PeriodState::Up)
        .map(PeriodView::from)
        .collect();
    Ok(Json(Sessions {
        data: sessions,
        blips,
    }))
}

/// Each device's time inside its maintenance windows over [from, to), merged.
async fn maintenance_of(
    state: &AppState,
    account: &AccountId,
    periods: &[Period],
    from: i64,
    to: i64,
) -> ApiResult<HashMap<DeviceId, Vec<(i64, i64)>>> {
    let mut spans = HashMap::new();
    for p in periods {
        if spans.contains_key(&p.device_id) {
            continue;
        }
        let ctx = match state
            .store
            .device_context(account.clone(), p.device_id.clone())
            .await
        {
            Ok(ctx) => ctx,
            // Deleted since: its history stays, no window matches it any more.
            Err(merpati_domain::StoreError::NotFound(_)) => {
                spans.insert(p.device_id.clone(), Vec::new());
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let covered =
            crate::alerts::maintenance_spans(&state.store, account, &ctx, from, to).await?;
        spans.insert(p.device_id.clone(), covered);
    }
    Ok(spans)
}

/// One outage, with how much of it fell inside maintenance windows.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct OutageView {
    #[schema(value_type = String)]
    device_id: DeviceId,
    #[serde(with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    start: i64,
    /// `null` while it lasts.
    #[serde(with = "as_rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    end: Option<i64>,
    duration_seconds: i64,
    reason: Option<String>,
    ongoing: bool,
    maintenance: bool,
    maintenance_seconds: i64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Downtime {
    data: Vec<OutageView>,
}

async fn downtime(
    state: AppState,
    account: AccountId,
    scope: HistoryScope,
    window: Window,
) -> ApiResult<Json<Downtime>> {
    let now = state.clock.now_ms();
    let (from, to, periods) = periods_of(&state, account.clone(), scope, &window).await?;
    let down: Vec<Period> = periods
        .into_iter()
        .filter(|p| p.state == PeriodState::Down)
        .collect();
    let spans = maintenance_of(&state, &account, &down, from.min(now), to.max(now)).await?;
    let data: Vec<OutageView> = down
        .iter()
        .map(|p| {
            let end = p.ended_at.unwrap_or(now);
            let inside = spans
                .get(&p.device_id)
                .map_or(0, |s| history::overlap(s, p.started_at, end));
            OutageView {
                device_id: p.device_id.clone(),
                start: p.started_at,
                end: p.ended_at,
                duration_seconds: (end - p.started_at) / 1000,
                reason: p.reason.clone(),
                ongoing: p.ended_at.is_none(),
                maintenance: inside > 0,
                maintenance_seconds: inside / 1000,
            }
        })
        .collect();
    Ok(Json(Downtime { data }))
}

/// Availability over a window: up time as a share of observed time.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct AvailabilityView {
    #[serde(with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    from: i64,
    #[serde(with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    to: i64,
    /// `null` when nothing was observed.
    availability_percent: Option<f64>,
    up_seconds: i64,
    down_seconds: i64,
    observed_seconds: i64,
    outages: usize,
    exclude_maintenance: bool,
    maintenance_seconds: i64,
}

async fn availability(
    state: AppState,
    account: AccountId,
    scope: HistoryScope,
    window: Window,
) -> ApiResult<Json<AvailabilityView>> {
    let now = state.clock.now_ms();
    let (from, to, periods) = periods_of(&state, account.clone(), scope, &window).await?;
    let until = to.min(now.max(from));
    let a = if window.exclude_maintenance {
        let spans = maintenance_of(&state, &account, &periods, from, until).await?;
        history::availability_outside(&periods, from, until, now, &spans)
    } else {
        history::availability(&periods, from, until, now)
    };
    Ok(Json(AvailabilityView {
        from,
        to,
        availability_percent: a.percent(),
        up_seconds: a.up_ms / 1000,
        down_seconds: a.down_ms / 1000,
        observed_seconds: (a.up_ms + a.down_ms) / 1000,
        outages: a.outages,
        exclude_maintenance: window.exclude_maintenance,
        maintenance_seconds: a.maintenance_ms / 1000,
    }))
}

fn of_device(id: String) -> HistoryScope {
    HistoryScope::Device(id.into())
}

fn of_channel(id: String) -> HistoryScope {
    HistoryScope::Channel(id.into())
}

fn of_business(id: String) -> HistoryScope {
    HistoryScope::Business(id.into())
}

#[utoipa::path(get, path = "/v1/devices/{id}/sessions", tag = "presence",
    security(("api_key" = [])),
    params(("id" = String, Path, description = "The device's id."), Window),
    responses((status = 200, description = "Up periods over the window (the last 24 h by default), and the blips among them.", body = Sessions)))]
async fn device_sessions(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(window): Query<Window>,
) -> ApiResult<Json<Sessions>> {
    sessions(state, account, of_device(id), window).await
}

#[utoipa::path(get, path = "/v1/devices/{id}/downtime", tag = "presence",
    security(("api_key" = [])),
    params(("id" = String, Path, description = "The device's id."), Window),
    responses((status = 200, description = "Outages over the window (the last 24 h by default), with their maintenance share.", body = Downtime)))]
async fn device_downtime(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(window): Query<Window>,
) -> ApiResult<Json<Downtime>> {
    downtime(state, account, of_device(id), window).await
}

#[utoipa::path(get, path = "/v1/devices/{id}/availability", tag = "presence",
    security(("api_key" = [])),
    params(("id" = String, Path, description = "The device's id."), Window),
    responses((status = 200, description = "Availability over the window (the last 24 h by default).", body = AvailabilityView)))]
async fn device_availability(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(window): Query<Window>,
) -> ApiResult<Json<AvailabilityView>> {
    availability(state, account, of_device(id), window).await
}

#[utoipa::path(get, path = "/v1/channels/{id}/sessions", tag = "presence",
    security(("api_key" = [])),
    params(("id" = String, Path, description = "The channel's id."), Window),
    responses((status = 200, description = "Up periods over the window (the last 24 h by default), and the blips among them.", body = Sessions)))]
async fn channel_sessions(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(window): Query<Window>,
) -> ApiResult<Json<Sessions>> {
    sessions(state, account, of_channel(id), window).await
}

#[utoipa::path(get, path = "/v1/channels/{id}/downtime", tag = "presence",
    security(("api_key" = [])),
    params(("id" = String, Path, description = "The channel's id."), Window),
    responses((status = 200, description = "Outages over the window (the last 24 h by default), with their maintenance share.", body = Downtime)))]
async fn channel_downtime(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(window): Query<Window>,
) -> ApiResult<Json<Downtime>> {
    downtime(state, account, of_channel(id), window).await
}

#[utoipa::path(get, path = "/v1/channels/{id}/availability", tag = "presence",
    security(("api_key" = [])),
    params(("id" = String, Path, description = "The channel's id."), Window),
    responses((status = 200, description = "Availability over the window (the last 24 h by default).", body = AvailabilityView)))]
async fn channel_availability(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(window): Query<Window>,
) -> ApiResult<Json<AvailabilityView>> {
    availability(state, account, of_channel(id), window).await
}

#[utoipa::path(get, path = "/v1/businesses/{id}/sessions", tag = "presence",
    security(("api_key" = [])),
    params(("id" = String, Path, description = "The business's id."), Window),
    responses((status = 200, description = "Up periods over the window (the last 24 h by default), and the blips among them.", body = Sessions)))]
async fn business_sessions(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(window): Query<Window>,
) -> ApiResult<Json<Sessions>> {
    sessions(state, account, of_business(id), window).await
}

#[utoipa::path(get, path = "/v1/businesses/{id}/downtime", tag = "presence",
    security(("api_key" = [])),
    params(("id" = String, Path, description = "The business's id."), Window),
    responses((status = 200, description = "Outages over the window (the last 24 h by default), with their maintenance share.", body = Downtime)))]
async fn business_downtime(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(window): Query<Window>,
) -> ApiResult<Json<Downtime>> {
    downtime(state, account, of_business(id), window).await
}

#[utoipa::path(get, path = "/v1/businesses/{id}/availability", tag = "presence",
    security(("api_key" = [])),
    params(("id" = String, Path, description = "The business's id."), Window),
    responses((status = 200, description = "Availability over the window (the last 24 h by default).", body = AvailabilityView)))]
async fn business_availability(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(window): Query<Window>,
) -> ApiResult<Json<AvailabilityView>> {
    availability(state, account, of_business(id), window).await
}
