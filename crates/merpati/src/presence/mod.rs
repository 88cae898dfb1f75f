//! Device presence: which device is up, announced as `device.connected` /
//! `device.disconnected` that never flap, and the history behind it.
//!
//! - `machine`: one device's lease as a pure state machine.
//! - `hub`: the one task that drives every device's machine, keeps their deadlines in a
//!   single ordered set, and writes what changes in groups.
//! - `link`: the WebSocket device link.
//! - `history`: sessions, outages and availability over a window (pure arithmetic).
//! - this file: the device routes (heartbeat, status, link) and the presence API.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::api::extract::{Account, Device, OptionalJsonBody, Query};
use crate::api::{parse_time, ApiError, ApiResult, AppState};
use crate::clock::as_rfc3339;
use crate::config::PresenceConfig;
use crate::devices::DeviceContext;
use crate::store::StoreResult;

pub mod history;
pub mod hub;
pub mod link;
pub mod machine;

pub use hub::{LiveStatus, PresenceHandle, Telemetry};
use machine::{Announced, Change, EngineReport, Input, Timeouts};

/// One thing to record for one device.
#[derive(Debug, Clone)]
pub struct PresenceWrite {
    pub account_id: String,
    pub device_id: String,
    pub what: WriteKind,
}

#[derive(Debug, Clone)]
pub enum WriteKind {
    Change(Change),
    Engine(EngineReport),
}

/// What a group of writes produced: the event id of each announcement, by write index.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    pub event_ids: HashMap<usize, String>,
    pub new_deliveries: usize,
}

/// A device's presence as stored, to rebuild the hub after a restart.
#[derive(Debug, Clone)]
pub struct StoredPresence {
    pub account_id: String,
    pub device_id: String,
    pub announced: Announced,
    pub since: Option<i64>,
    pub engine_state: Option<EngineReport>,
    pub engine: String,
    pub channel_heartbeat_ms: Option<i64>,
    pub channel_grace_ms: Option<i64>,
}

/// One announced state of one device over time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Period {
    pub device_id: String,
    /// `up` or `down`.
    pub state: String,
    #[serde(with = "as_rfc3339")]
    pub started_at: i64,
    #[serde(with = "as_rfc3339::option")]
    pub ended_at: Option<i64>,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Blip {
    pub device_id: String,
    #[serde(with = "as_rfc3339")]
    pub started_at: i64,
    #[serde(with = "as_rfc3339")]
    pub ended_at: i64,
    pub reason: String,
}

/// Whose history: one device, or every device of a channel or of a business.
#[derive(Debug, Clone)]
pub enum HistoryScope {
    Device(String),
    Channel(String),
    Business(String),
}

#[async_trait::async_trait]
pub trait PresenceStore: Send + Sync {
    /// Records the writes in one transaction: history, the device's presence columns, and
    /// for each announcement its event and deliveries. Writes for devices deleted meanwhile
    /// are skipped.
    async fn apply_presence(&self, writes: Vec<PresenceWrite>, now: i64) -> StoreResult<Applied>;
    /// Every device announced up or with an engine state.
    async fn presence_to_restore(&self) -> StoreResult<Vec<StoredPresence>>;
    /// Periods overlapping [from, to), oldest first. NotFound when the scope is not the
    /// account's.
    async fn presence_periods(
        &self,
        account: String,
        scope: HistoryScope,
        from: i64,
        to: i64,
    ) -> StoreResult<Vec<Period>>;
    async fn presence_blips(
        &self,
        account: String,
        scope: HistoryScope,
        from: i64,
        to: i64,
    ) -> StoreResult<Vec<Blip>>;
}

/// Lease settings: the defaults, per engine, per channel (the most specific wins).
#[derive(Debug, Clone)]
pub struct Policy {
    config: PresenceConfig,
}

impl Policy {
    pub fn new(config: PresenceConfig) -> Self {
        Policy { config }
    }

    pub fn timeouts(
        &self,
        engine: &str,
        channel_heartbeat_ms: Option<i64>,
        channel_grace_ms: Option<i64>,
    ) -> Timeouts {
        let per_engine = self.config.engines.get(engine);
        let ms = |d: std::time::Duration| d.as_millis() as i64;
        Timeouts {
            heartbeat_ms: channel_heartbeat_ms
                .or_else(|| per_engine.and_then(|e| e.heartbeat_timeout).map(ms))
                .unwrap_or(ms(self.config.heartbeat_timeout)),
            grace_ms: channel_grace_ms
                .or_else(|| per_engine.and_then(|e| e.grace).map(ms))
                .unwrap_or(ms(self.config.grace)),
        }
    }

    pub fn for_device(&self, d: &DeviceContext) -> Timeouts {
        self.timeouts(&d.engine, d.channel_heartbeat_ms, d.channel_grace_ms)
    }
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/device/heartbeat", post(heartbeat))
        .route("/v1/device/status", post(report_status))
        .route("/v1/device/link", get(link::upgrade))
        .route("/v1/devices/{id}/presence", get(device_presence))
        .route(
            "/v1/devices/{id}/sessions",
            history(HistoryScope::Device, Report::Sessions),
        )
        .route(
            "/v1/channels/{id}/sessions",
            history(HistoryScope::Channel, Report::Sessions),
        )
        .route(
            "/v1/businesses/{id}/sessions",
            history(HistoryScope::Business, Report::Sessions),
        )
        .route(
            "/v1/devices/{id}/downtime",
            history(HistoryScope::Device, Report::Downtime),
        )
        .route(
            "/v1/devices/{id}/availability",
            history(HistoryScope::Device, Report::Availability),
        )
        .route(
            "/v1/channels/{id}/downtime",
            history(HistoryScope::Channel, Report::Downtime),
        )
        .route(
            "/v1/channels/{id}/availability",
            history(HistoryScope::Channel, Report::Availability),
        )
        .route(
            "/v1/businesses/{id}/downtime",
            history(HistoryScope::Business, Report::Downtime),
        )
        .route(
            "/v1/businesses/{id}/availability",
            history(HistoryScope::Business, Report::Availability),
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
    let timeouts = state.presence_policy.for_device(&device);
    match state
        .presence
        .heartbeat(&device, timeouts, telemetry)
        .await?
    {
        Ok(outcome) => Ok(Json(serde_json::json!({
            "status": outcome.status,
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
    crate::api::extract::JsonBody(body): crate::api::extract::JsonBody<StatusBody>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    if body.reason.as_ref().is_some_and(|r| r.len() > 1024) {
        return Err(ApiError::invalid("reason must be at most 1024 bytes"));
    }
    let report = match body.status {
        ReportedStatus::Connected => EngineReport::Connected,
        ReportedStatus::Disconnected => EngineReport::Disconnected,
        ReportedStatus::LoggedOut => EngineReport::LoggedOut,
    };
    let timeouts = state.presence_policy.for_device(&device);
    let outcome = state
        .presence
        .input(&device, timeouts, Input::Report(report))
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({"status": outcome.status, "event_id": outcome.event_id})),
    ))
}

async fn device_presence(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let device = state.store.get_device(account.clone(), id.clone()).await?;
    let live = state.presence.view(&account, &id).await;
    let status = live
        .as_ref()
        .map(|l| l.status)
        .unwrap_or(match device.status {
            crate::devices::Presence::Unknown => LiveStatus::Unknown,
            crate::devices::Presence::Connected => LiveStatus::Connected,
            crate::devices::Presence::Disconnected => LiveStatus::Disconnected,
        });
    Ok(Json(serde_json::json!({
        "device_id": id,
        "status": status,
        "since": device.status_since.map(crate::clock::rfc3339),
        "link_open": live.as_ref().is_some_and(|l| l.link_open),
        "last_seen_at": live.as_ref().and_then(|l| l.last_seen).map(crate::clock::rfc3339),
        "telemetry": live.and_then(|l| l.telemetry),
    })))
}

/// `?from=&to=`: RFC 3339 times or Unix seconds; the last 24 hours when absent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Window {
    from: Option<String>,
    to: Option<String>,
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
    account: String,
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
    account: String,
    scope: HistoryScope,
    window: Window,
) -> ApiResult<Json<serde_json::Value>> {
    let (from, to, periods) = periods_of(&state, account.clone(), scope.clone(), &window).await?;
    let blips = state.store.presence_blips(account, scope, from, to).await?;
    let sessions: Vec<&Period> = periods.iter().filter(|p| p.state == "up").collect();
    Ok(Json(serde_json::json!({"data": sessions, "blips": blips})))
}

async fn downtime(
    state: AppState,
    account: String,
    scope: HistoryScope,
    window: Window,
) -> ApiResult<Json<serde_json::Value>> {
    let now = state.clock.now_ms();
    let (_, _, periods) = periods_of(&state, account, scope, &window).await?;
    let data: Vec<serde_json::Value> = periods
        .iter()
        .filter(|p| p.state == "down")
        .map(|p| {
            let end = p.ended_at.unwrap_or(now);
            serde_json::json!({
                "device_id": p.device_id,
                "start": crate::clock::rfc3339(p.started_at),
                "end": p.ended_at.map(crate::clock::rfc3339),
                "duration_seconds": (end - p.started_at) / 1000,
                "reason": p.reason,
                "ongoing": p.ended_at.is_none(),
            })
        })
        .collect();
    Ok(Json(serde_json::json!({"data": data})))
}

async fn availability(
    state: AppState,
    account: String,
    scope: HistoryScope,
    window: Window,
) -> ApiResult<Json<serde_json::Value>> {
    let now = state.clock.now_ms();
    let (from, to, periods) = periods_of(&state, account, scope, &window).await?;
    let a = history::availability(&periods, from, to.min(now.max(from)), now);
    Ok(Json(serde_json::json!({
        "from": crate::clock::rfc3339(from),
        "to": crate::clock::rfc3339(to),
        "availability_percent": a.percent(),
        "up_seconds": a.up_ms / 1000,
        "down_seconds": a.down_ms / 1000,
        "observed_seconds": (a.up_ms + a.down_ms) / 1000,
        "outages": a.outages,
    })))
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
