//! The devices pages: every device grouped by business and channel, live, with its uptime
//! bars over the last day and month; and one device's sessions, downtime and telemetry.

use std::collections::BTreeMap;

use askama::Template;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;

use super::client::{enc, Api, List, Refused};
use super::page::{show, Frame, Prefs};
use super::session::{Fields, Session};
use super::Shown;
use crate::api::AppState;

/// Devices a page: enough to see a channel at once, few enough to draw fast.
const PAGE: usize = 100;

#[derive(Deserialize, Clone)]
struct Named {
    id: String,
    name: String,
    #[serde(default)]
    engine: Option<String>,
    #[serde(default)]
    business_id: Option<String>,
}

#[derive(Deserialize)]
struct DeviceJson {
    id: String,
    name: String,
    channel_id: String,
    phone: Option<String>,
    status: String,
    status_since: Option<String>,
}

#[derive(Deserialize)]
struct UptimeJson {
    device_id: String,
    status: String,
    since: Option<String>,
    bars: BTreeMap<String, BarJson>,
}

#[derive(Deserialize, Default, Clone)]
struct BarJson {
    availability_percent: Option<f64>,
    segments: Vec<SegmentJson>,
}

#[derive(Deserialize, Clone)]
struct SegmentJson {
    start: String,
    end: String,
    state: String,
    up_seconds: i64,
    down_seconds: i64,
    maintenance_seconds: i64,
    blips: i64,
}

/// A segment as drawn: its state for the colour, its tooltip.
pub struct Segment {
    pub state: String,
    pub tip: String,
}

pub struct Bar {
    pub percent: String,
    pub segments: Vec<Segment>,
}

pub struct Row {
    pub id: String,
    pub name: String,
    pub phone: String,
    pub status: String,
    pub status_label: &'static str,
    pub since: String,
    pub day: Bar,
    pub month: Bar,
}

pub struct Group {
    pub business: String,
    pub channel: String,
    pub engine: String,
    pub rows: Vec<Row>,
}

#[derive(Template)]
#[template(path = "dashboard/devices.html")]
pub struct DevicesPage {
    pub f: Frame,
    pub groups: Vec<Group>,
    pub businesses: Vec<(String, String)>,
    pub channels: Vec<(String, String)>,
    pub engines: Vec<String>,
    pub status: String,
    pub engine: String,
    pub business: String,
    pub channel: String,
    pub next: Option<String>,
    pub paged: bool,
}

fn short(seconds: i64) -> String {
    crate::api::time::duration(seconds * 1000)
}

fn bar(t: &super::words::Words, b: Option<&BarJson>) -> Bar {
    let b = b.cloned().unwrap_or_default();
    let segments = b
        .segments
        .iter()
        .map(|s| {
            let mut tip = format!(
                "{} – {}\n{}: {}",
                &s.start[..16.min(s.start.len())].replace('T', " "),
                &s.end[11.min(s.end.len())..16.min(s.end.len())],
                t.status(&s.state),
                short(s.up_seconds),
            );
            if s.down_seconds > 0 {
                tip.push_str(&format!(" · {}: {}", t.down, short(s.down_seconds)));
            }
            if s.maintenance_seconds > 0 {
                tip.push_str(&format!(
                    " · {}: {}",
                    t.maintenance,
                    short(s.maintenance_seconds)
                ));
            }
            if s.blips > 0 {
                tip.push_str(&format!(" · {} {}", s.blips, t.blips));
            }
            Segment {
                state: s.state.clone(),
                tip,
            }
        })
        .collect();
    Bar {
        percent: b
            .availability_percent
            .map(|p| format!("{p:.2}%"))
            .unwrap_or_else(|| "–".into()),
        segments,
    }
}

fn options(all: &[Named]) -> Vec<(String, String)> {
    all.iter().map(|n| (n.id.clone(), n.name.clone())).collect()
}

pub async fn list(
    State(state): State<AppState>,
    api: axum::Extension<Api>,
    session: Session,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, Shown> {
    let prefs = Prefs::of(&headers);
    let fields = Fields::parse(query.as_deref().unwrap_or("").as_bytes());
    let status = fields.get("status").unwrap_or("").to_string();
    let engine = fields.get("engine").unwrap_or("").to_string();
    let business = fields.get("business_id").unwrap_or("").to_string();
    let channel = fields.get("channel_id").unwrap_or("").to_string();
    let mut uri = format!("/v1/devices?limit={PAGE}");
    for (name, value) in [
        ("status", &status),
        ("engine", &engine),
        ("business_id", &business),
        ("channel_id", &channel),
    ] {
        if !value.is_empty() {
            uri.push_str(&format!("&{name}={}", enc(value)));
        }
    }
    if let Some(cursor) = fields.get("cursor") {
        uri.push_str(&format!("&cursor={}", enc(cursor)));
    }
    let a = &session.account;
    let (devices, businesses, channels) = tokio::join!(
        api.get::<List<DeviceJson>>(a, &uri),
        api.get::<List<Named>>(a, "/v1/businesses?limit=500"),
        api.get::<List<Named>>(a, "/v1/channels?limit=500"),
    );
    let shown = |r: Refused| Shown::refused(&prefs, r);
    let devices = devices.map_err(shown)?;
    let businesses = businesses.map_err(shown)?.data;
    let channels = channels.map_err(shown)?.data;

    let mut uptime: BTreeMap<String, UptimeJson> = BTreeMap::new();
    if !devices.data.is_empty() {
        let ids: Vec<&str> = devices.data.iter().map(|d| d.id.as_str()).collect();
        let uri = format!(
            "/v1/uptime?spans=24h,30d&device_ids={}",
            enc(&ids.join(","))
        );
        let got = api.get::<List<UptimeJson>>(a, &uri).await.map_err(shown)?;
        uptime = got
            .data
            .into_iter()
            .map(|u| (u.device_id.clone(), u))
            .collect();
    }

    let t = prefs.words();
    let channel_of: BTreeMap<&str, &Named> = channels.iter().map(|c| (c.id.as_str(), c)).collect();
    let business_name: BTreeMap<&str, &str> = businesses
        .iter()
        .map(|b| (b.id.as_str(), b.name.as_str()))
        .collect();
    // Grouped by business, then channel, in name order; devices in the API's order.
    let mut groups: BTreeMap<(String, String, String), Group> = BTreeMap::new();
    for d in devices.data {
        let ch = channel_of.get(d.channel_id.as_str());
        let business = ch
            .and_then(|c| c.business_id.as_deref())
            .and_then(|b| business_name.get(b).copied())
            .unwrap_or("")
            .to_string();
        let channel = ch.map_or(d.channel_id.clone(), |c| c.name.clone());
        let live = uptime.get(&d.id);
        let status = live.map_or(d.status.clone(), |u| u.status.clone());
        let since = live
            .and_then(|u| u.since.clone())
            .or(d.status_since.clone())
            .unwrap_or_default();
        let row = Row {
            status_label: t.status(&status),
            status,
            since,
            day: bar(t, live.and_then(|u| u.bars.get("24h"))),
            month: bar(t, live.and_then(|u| u.bars.get("30d"))),
            id: d.id,
            name: d.name,
            phone: d.phone.unwrap_or_default(),
        };
        groups
            .entry((business.clone(), channel.clone(), d.channel_id.clone()))
            .or_insert_with(|| Group {
                business,
                channel,
                engine: ch.and_then(|c| c.engine.clone()).unwrap_or_default(),
                rows: Vec::new(),
            })
            .rows
            .push(row);
    }
    let mut engines: Vec<String> = channels.iter().filter_map(|c| c.engine.clone()).collect();
    engines.sort();
    engines.dedup();
    let f = Frame::new(&state, &session, &headers, "devices").await;
    let page = DevicesPage {
        groups: groups.into_values().collect(),
        businesses: options(&businesses),
        channels: options(&channels),
        engines,
        status,
        engine,
        business,
        channel,
        next: devices.next_cursor,
        paged: fields.get("cursor").is_some(),
        f,
    };
    Ok(show(&state, &page.f, &page))
}

#[derive(Deserialize)]
struct PresenceJson {
    status: String,
    since: Option<String>,
    link_open: bool,
    last_seen_at: Option<String>,
    telemetry: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct PeriodJson {
    started_at: String,
    ended_at: Option<String>,
}

#[derive(Deserialize)]
struct DowntimeJson {
    start: String,
    end: Option<String>,
    duration_seconds: i64,
    reason: Option<String>,
    ongoing: bool,
    maintenance: bool,
}

pub struct SessionRow {
    pub started: String,
    pub ended: String,
}

pub struct DowntimeRow {
    pub start: String,
    pub end: String,
    pub duration: String,
    pub reason: String,
    pub ongoing: bool,
    pub maintenance: bool,
}

#[derive(Template)]
#[template(path = "dashboard/device.html")]
pub struct DevicePage {
    pub f: Frame,
    pub id: String,
    pub name: String,
    pub phone: String,
    pub channel: String,
    pub status: String,
    pub status_label: &'static str,
    pub since: String,
    pub link_open: bool,
    pub last_seen: String,
    pub telemetry: Vec<(&'static str, String)>,
    pub day: Bar,
    pub month: Bar,
    pub sessions: Vec<SessionRow>,
    pub downtime: Vec<DowntimeRow>,
}

pub async fn one(
    State(state): State<AppState>,
    api: axum::Extension<Api>,
    session: Session,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Shown> {
    let prefs = Prefs::of(&headers);
    let shown = |r: Refused| Shown::refused(&prefs, r);
    let a = &session.account;
    let id_enc = enc(&id);
    let device = api
        .get::<DeviceJson>(a, &format!("/v1/devices/{id_enc}"))
        .await
        .map_err(shown)?;
    let month_ago = crate::api::time::rfc3339(state.clock.now_ms() - 30 * 86_400_000);
    let uris = [
        format!("/v1/devices/{id_enc}/presence"),
        format!("/v1/uptime?spans=24h,30d&device_ids={id_enc}"),
        format!("/v1/devices/{id_enc}/sessions?from={}", enc(&month_ago)),
        format!("/v1/devices/{id_enc}/downtime?from={}", enc(&month_ago)),
        format!("/v1/channels/{}", enc(&device.channel_id)),
    ];
    let (presence, uptime, sessions, downtime, channel) = tokio::join!(
        api.get::<PresenceJson>(a, &uris[0]),
        api.get::<List<UptimeJson>>(a, &uris[1]),
        api.get::<serde_json::Value>(a, &uris[2]),
        api.get::<List<DowntimeJson>>(a, &uris[3]),
        api.get::<Named>(a, &uris[4]),
    );
    let presence = presence.map_err(shown)?;
    let uptime = uptime.map_err(shown)?.data.into_iter().next();
    let sessions: Vec<PeriodJson> = sessions
        .map_err(shown)?
        .get("data")
        .cloned()
        .and_then(|d| serde_json::from_value(d).ok())
        .unwrap_or_default();
    let downtime = downtime.map_err(shown)?.data;
    let t = prefs.words();
    let mut telemetry = Vec::new();
    if let Some(tel) = &presence.telemetry {
        for (key, label) in [
            ("battery", t.battery),
            ("charging", t.charging),
            ("signal", t.signal),
            ("network", t.network),
        ] {
            if let Some(v) = tel.get(key).filter(|v| !v.is_null()) {
                let text = match v {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Bool(true) => t.yes.to_string(),
                    serde_json::Value::Bool(false) => t.no.to_string(),
                    other if key == "battery" => format!("{other}%"),
                    other => other.to_string(),
                };
                telemetry.push((label, text));
            }
        }
    }
    let f = Frame::new(&state, &session, &headers, "devices").await;
    let page = DevicePage {
        f,
        status_label: t.status(&presence.status),
        status: presence.status,
        since: presence.since.unwrap_or_default(),
        link_open: presence.link_open,
        last_seen: presence.last_seen_at.unwrap_or_default(),
        telemetry,
        day: bar(t, uptime.as_ref().and_then(|u| u.bars.get("24h"))),
        month: bar(t, uptime.as_ref().and_then(|u| u.bars.get("30d"))),
        sessions: sessions
            .into_iter()
            .rev()
            .take(50)
            .map(|s| SessionRow {
                started: s.started_at,
                ended: s.ended_at.unwrap_or_default(),
            })
            .collect(),
        downtime: downtime
            .into_iter()
            .rev()
            .take(50)
            .map(|d| DowntimeRow {
                start: d.start,
                end: d.end.unwrap_or_default(),
                duration: short(d.duration_seconds),
                reason: d.reason.unwrap_or_default(),
                ongoing: d.ongoing,
                maintenance: d.maintenance,
            })
            .collect(),
        channel: channel.map(|c| c.name).unwrap_or(device.channel_id),
        id: device.id,
        name: device.name,
        phone: device.phone.unwrap_or_default(),
    };
    Ok(show(&state, &page.f, &page))
}
