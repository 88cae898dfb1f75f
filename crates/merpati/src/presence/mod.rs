//! Device presence over HTTP: the device routes (heartbeat, engine status, the WebSocket
//! link in `link`) and the presence API (live status, sessions, downtime, availability). The
//! lease itself is the domain's state machine, driven by the runtime's presence hub.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};
use merpati_domain::device::Presence;
use merpati_domain::ids::{AccountId, DeviceId};
use merpati_domain::presence::history;
use merpati_domain::presence::machine::{EngineReport, Input};
use merpati_domain::presence::{Blip, HistoryScope, Period, PeriodState};
use merpati_runtime::presence::{LiveStatus, Telemetry};
use serde::{Deserialize, Serialize};

use crate::api::extract::{Account, Device, JsonBody, OptionalJsonBody, Query};
use crate::api::time::{as_rfc3339, rfc3339};
use crate::api::validate::parse_time;
use crate::api::{ApiError, ApiResult, AppState};

pub mod link;
mod uptime;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/device/heartbeat", post(heartbeat))
        .route("/v1/device/status", post(report_status))
        .route("/v1/device/link", get(link::upgrade))
        .route("/v1/devices/{id}/presence", get(device_presence))
        .route("/v1/uptime", get(uptime::uptime))
        .route(
            "/v1/devices/{id}/sessions",
            history(of_device, Report::Sessions),
        )
        .route(
            "/v1/channels/{id}/sessions",
            history(of_channel, Report::Sessions),
        )
        .route(
            "/v1/businesses/{id}/sessions",
            history(of_business, Report::Sessions),
        )
        .route(
            "/v1/devices/{id}/downtime",
            history(of_device, Report::Downtime),
        )
        .route(
            "/v1/devices/{id}/availability",
            history(of_device, Report::Availability),
        )
        .route(
            "/v1/channels/{id}/downtime",
            history(of_channel, Report::Downtime),
        )
        .route(
            "/v1/channels/{id}/availability",
            history(of_channel, Report::Availability),
        )
        .route(
            "/v1/businesses/{id}/downtime",
            history(of_business, Report::Downtime),
        )
        .route(
            "/v1/businesses/{id}/availability",
            history(of_business, Report::Availability),
        )
}

#[derive(Debug, Default, Deserialize)]
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
    match state
        .presence
        .heartbeat(&device, timeouts, telemetry)
        .await?
    {
        Ok(outcome) => Ok(Json(serde_json::json!({
            "status": outcome.status.as_str(),
            "event_id": outcome.event_id,
            "heartbeat_timeout_seconds": timeouts.heartbeat_ms / 1000,
        }))
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusBody {
    status: ReportedStatus,
    reason: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ReportedStatus {
    Connected,
    Disconnected,
    LoggedOut,
}

async fn report_status(
    Device(device): Device,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<StatusBody>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    if body.reason.as_ref().is_some_and(|r| r.len() > 1024) {
        return Err(ApiError::invalid("reason must be at most 1024 bytes"));
    }
    let report = match body.status {
        ReportedStatus::Connected => EngineReport::Connected,
        ReportedStatus::Disconnected => EngineReport::Disconnected,
        ReportedStatus::LoggedOut => EngineReport::LoggedOut,
    };
    let timeouts = state.lease.for_device(&device);
    let outcome = state
        .presence
        .input(&device, timeouts, Input::Report(report))
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({"status": outcome.status.as_str(), "event_id": outcome.event_id})),
    ))
}

/// What a phone said of itself, as the API shows it.
#[derive(Debug, Serialize)]
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

async fn device_presence(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let id = DeviceId::from(id);
    let device = state.store.get_device(account.clone(), id.clone()).await?;
    let live = state.presence.view(&account, &id).await;
    let status = live_status(live.as_ref(), device.status);
    Ok(Json(serde_json::json!({
        "device_id": id,
        "status": status.as_str(),
        "since": device.status_since.map(rfc3339),
        "link_open": live.as_ref().is_some_and(|l| l.link_open),
        "last_seen_at": live.as_ref().and_then(|l| l.last_seen).map(rfc3339),
        "telemetry": live.and_then(|l| l.telemetry).map(TelemetryView::from),
    })))
}

/// What the hub sees of a device now, or else what was last announced of it.
fn live_status(
    live: Option<&merpati_runtime::presence::LiveView>,
    announced: Presence,
) -> LiveStatus {
    live.map(|l| l.status).unwrap_or(match announced {
        Presence::Unknown => LiveStatus::Unknown,
        Presence::Connected => LiveStatus::Connected,
        Presence::Disconnected => LiveStatus::Disconnected,
    })
}

/// One announced state of a device over time, as the API shows it.
#[derive(Debug, Serialize)]
struct PeriodView {
    device_id: DeviceId,
    /// `up` or `down`.
    state: &'static str,
    #[serde(with = "as_rfc3339")]
    started_at: i64,
    #[serde(with = "as_rfc3339::option")]
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

#[derive(Debug, Serialize)]
struct BlipView {
    device_id: DeviceId,
    #[serde(with = "as_rfc3339")]
    started_at: i64,
    #[serde(with = "as_rfc3339")]
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
#[derive(Debug, Deserialize)]
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

async fn sessions(
    state: AppState,
    account: AccountId,
    scope: HistoryScope,
    window: Window,
) -> ApiResult<Json<serde_json::Value>> {
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
    Ok(Json(serde_json::json!({"data": sessions, "blips": blips})))
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

async fn downtime(
    state: AppState,
    account: AccountId,
    scope: HistoryScope,
    window: Window,
) -> ApiResult<Json<serde_json::Value>> {
    let now = state.clock.now_ms();
    let (from, to, periods) = periods_of(&state, account.clone(), scope, &window).await?;
    let down: Vec<Period> = periods
        .into_iter()
        .filter(|p| p.state == PeriodState::Down)
        .collect();
    let spans = maintenance_of(&state, &account, &down, from.min(now), to.max(now)).await?;
    let data: Vec<serde_json::Value> = down
        .iter()
        .map(|p| {
            let end = p.ended_at.unwrap_or(now);
            let inside = spans
                .get(&p.device_id)
                .map_or(0, |s| history::overlap(s, p.started_at, end));
            serde_json::json!({
                "device_id": p.device_id,
                "start": rfc3339(p.started_at),
                "end": p.ended_at.map(rfc3339),
                "duration_seconds": (end - p.started_at) / 1000,
                "reason": p.reason,
                "ongoing": p.ended_at.is_none(),
                "maintenance": inside > 0,
                "maintenance_seconds": inside / 1000,
            })
        })
        .collect();
    Ok(Json(serde_json::json!({"data": data})))
}

async fn availability(
    state: AppState,
    account: AccountId,
    scope: HistoryScope,
    window: Window,
) -> ApiResult<Json<serde_json::Value>> {
    let now = state.clock.now_ms();
    let (from, to, periods) = periods_of(&state, account.clone(), scope, &window).await?;
    let until = to.min(now.max(from));
    let a = if window.exclude_maintenance {
        let spans = maintenance_of(&state, &account, &periods, from, until).await?;
        history::availability_outside(&periods, from, until, now, &spans)
    } else {
        history::availability(&periods, from, until, now)
    };
    Ok(Json(serde_json::json!({
        "from": rfc3339(from),
        "to": rfc3339(to),
        "availability_percent": a.percent(),
        "up_seconds": a.up_ms / 1000,
        "down_seconds": a.down_ms / 1000,
        "observed_seconds": (a.up_ms + a.down_ms) / 1000,
        "outages": a.outages,
        "exclude_maintenance": window.exclude_maintenance,
        "maintenance_seconds": a.maintenance_ms / 1000,
    })))
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

#[derive(Clone, Copy)]
enum Report {
    Sessions,
    Downtime,
    Availability,
}

/// `GET …/{id}/sessions`, `…/downtime` or `…/availability` of a device, a channel or a
/// business.
fn history(scope: fn(String) -> HistoryScope, report: Report) -> MethodRouter<AppState> {
    get(
        move |Account(account): Account,
              State(state): State<AppState>,
              Path(id): Path<String>,
              Query(window): Query<Window>| async move {
            match report {
                Report::Sessions => sessions(state, account, scope(id), window).await,
                Report::Downtime => downtime(state, account, scope(id), window).await,
                Report::Availability => availability(state, account, scope(id), window).await,
            }
        },
    )
}
