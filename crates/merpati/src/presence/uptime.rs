//! `GET /v1/uptime?device_ids=a,b&spans=24h,30d`: for a page of devices at once, each one's
//! live status and its uptime bars (a span cut into equal segments, each up, pending, down,
//! maintenance or none) with the span's availability. What the dashboard's device list
//! draws, in one request whatever the page size.

use std::collections::{BTreeMap, HashSet};

use axum::extract::State;
use axum::Json;
use merpati_domain::alert::window::covered_spans;
use merpati_domain::ids::DeviceId;
use merpati_domain::presence::bar::{uptime_bar, Segment};
use merpati_domain::presence::{history, HistoryScope};
use merpati_domain::StoreError;
use serde::{Deserialize, Serialize};

use crate::api::extract::{Account, Query};
use crate::api::time::as_rfc3339;
use crate::api::{ApiError, ApiResult, AppState};

/// The spans a bar may cover, each with its segment count (30 min, 1 day, …).
const SPANS: [(&str, i64, usize); 5] = [
    ("1h", 3_600_000, 60),
    ("24h", 86_400_000, 48),
    ("7d", 7 * 86_400_000, 28),
    ("30d", 30 * 86_400_000, 30),
    ("90d", 90 * 86_400_000, 90),
];

pub const MAX_DEVICES: usize = 500;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UptimeQuery {
    /// Comma-separated device ids, at most 500.
    device_ids: String,
    /// Comma-separated spans among `1h`, `24h`, `7d`, `30d`, `90d`; `24h` when absent.
    spans: Option<String>,
}

fn spans(raw: Option<&str>) -> ApiResult<Vec<(&'static str, i64, usize)>> {
    let raw = raw.unwrap_or("24h");
    let mut chosen = Vec::new();
    for name in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let span = SPANS.iter().find(|(n, _, _)| *n == name).ok_or_else(|| {
            let known: Vec<_> = SPANS.iter().map(|(n, _, _)| *n).collect();
            ApiError::invalid(format!(
                "spans: {name:?} is not one of {}",
                known.join(", ")
            ))
        })?;
        if !chosen.contains(span) {
            chosen.push(*span);
        }
    }
    if chosen.is_empty() {
        return Err(ApiError::invalid("spans must name at least one span"));
    }
    Ok(chosen)
}

fn device_ids(raw: &str) -> ApiResult<Vec<DeviceId>> {
    let mut seen = HashSet::new();
    let ids: Vec<DeviceId> = raw
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty() && seen.insert(s.to_string()))
        .map(DeviceId::from)
        .collect();
    if ids.is_empty() {
        return Err(ApiError::invalid(
            "device_ids must name at least one device",
        ));
    }
    if ids.len() > MAX_DEVICES {
        return Err(ApiError::invalid(format!(
            "device_ids names {} devices, at most {MAX_DEVICES} at once",
            ids.len()
        )));
    }
    Ok(ids)
}

/// One segment of a bar.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct SegmentView {
    #[serde(with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    start: i64,
    #[serde(with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    end: i64,
    /// `up`, `pending` (blips), `down`, `maintenance` or `none` (nothing known).
    state: &'static str,
    up_seconds: i64,
    down_seconds: i64,
    maintenance_seconds: i64,
    /// Disconnections that came back inside the grace.
    blips: usize,
}

impl From<&Segment> for SegmentView {
    fn from(s: &Segment) -> Self {
        SegmentView {
            start: s.start,
            end: s.end,
            state: s.state.as_str(),
            up_seconds: s.up_ms / 1000,
            down_seconds: s.down_ms / 1000,
            maintenance_seconds: s.maintenance_ms / 1000,
            blips: s.blips,
        }
    }
}

/// A span's bar and its availability.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct BarView {
    /// `null` when nothing was observed.
    availability_percent: Option<f64>,
    outages: usize,
    segments: Vec<SegmentView>,
}

/// A device's live status and its bars, by span name (`24h`, `30d`, …).
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct DeviceUptime {
    #[serde(flatten)]
    live: super::LiveState,
    bars: BTreeMap<&'static str, BarView>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Uptime {
    /// The devices asked for that exist, in the order asked.
    data: Vec<DeviceUptime>,
}

#[utoipa::path(get, path = "/v1/uptime", tag = "presence",
    security(("api_key" = [])),
    params(UptimeQuery),
    responses((status = 200, description = "Each device's live status and uptime bars; unknown ids are left out.", body = Uptime)))]
pub async fn uptime(
    Account(account): Account,
    State(state): State<AppState>,
    Query(q): Query<UptimeQuery>,
) -> ApiResult<Json<Uptime>> {
    let spans = spans(q.spans.as_deref())?;
    let ids = device_ids(&q.device_ids)?;
    let now = state.clock.now_ms();
    let widest = spans.iter().map(|(_, len, _)| *len).max().unwrap_or(0);
    let from = now - widest;
    let windows = state.store.list_windows(account.clone()).await?;
    let mut data = Vec::with_capacity(ids.len());
    for id in ids {
        let device = match state.store.get_device(account.clone(), id.clone()).await {
            Ok(d) => d,
            // Unknown ids are left out, as a list leaves out what it does not hold.
            Err(StoreError::NotFound(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        let ctx = state
            .store
            .device_context(account.clone(), id.clone())
            .await?;
        let scope = HistoryScope::Device(id.clone());
        let periods = state
            .store
            .presence_periods(account.clone(), scope.clone(), from, now)
            .await?;
        let blips = state
            .store
            .presence_blips(account.clone(), scope, from, now)
            .await?;
        let maintenance = covered_spans(&windows, &ctx, from, now);
        let live = state.presence.view(&account, &id).await;
        let mut bars = BTreeMap::new();
        for (name, len, count) in &spans {
            let start = now - len;
            let bar = uptime_bar(&periods, &blips, &maintenance, start, now, now, *count);
            let a = history::availability(&periods, start, now, now);
            bars.insert(
                *name,
                BarView {
                    availability_percent: a.percent(),
                    outages: a.outages,
                    segments: bar.iter().map(SegmentView::from).collect(),
                },
            );
        }
        data.push(DeviceUptime {
            live: super::LiveState::of(&device, live.as_ref()),
            bars,
        });
    }
    Ok(Json(Uptime { data }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_are_named_known_and_once() {
        assert_eq!(spans(None).unwrap().len(), 1);
        let both = spans(Some("24h, 30d,24h")).unwrap();
        assert_eq!(both.iter().map(|s| s.0).collect::<Vec<_>>(), ["24h", "30d"]);
        assert!(spans(Some("2h")).is_err());
        assert!(spans(Some(",")).is_err());
    }

    #[test]
    fn device_ids_are_bounded_and_deduplicated() {
        assert_eq!(device_ids("a,b,a").unwrap().len(), 2);
        assert!(device_ids(" , ").is_err());
        let many: Vec<String> = (0..=MAX_DEVICES).map(|i| format!("d{i}")).collect();
        assert!(device_ids(&many.join(",")).is_err());
    }
}
