//! `/v1/maintenance-windows`: one-off (`starts_at`, `ends_at`) or weekly (`weekly: {days,
//! start, duration}` in `timezone`) for the devices a match names. Overlapping windows are
//! allowed and count as their union.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use merpati_domain::alert::window::{self, covered_spans, parse_day, time_zone, DAY_NAMES};
use merpati_domain::alert::{MaintenanceWindow, Schedule};
use merpati_domain::device::DeviceContext;
use merpati_domain::ids::{AccountId, WindowId};
use merpati_domain::SharedStore;
use serde::{Deserialize, Serialize};

use super::{duration_ms, patch_object, MatchBody};
use crate::api::extract::{parse_json, Account};
use crate::api::openapi::{ErrorBody, IfMatchHeader, IfNoneMatchHeader};
use crate::api::paging::Listed;
use crate::api::revision::{self, IfMatch};
use crate::api::time::{as_rfc3339, duration, rfc3339};
use crate::api::validate::{check_name, id_or_new, parse_time};
use crate::api::{ApiError, ApiResult, AppState};

/// The longest a one-off window may be.
const MAX_ONCE_MS: i64 = 366 * 24 * 3_600_000;

/// A maintenance window: one-off (`starts_at`, `ends_at`) or weekly (`weekly`, `timezone`).
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct WindowBody {
    /// Made when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(rename = "match", default)]
    matches: MatchBody,
    /// RFC 3339 or Unix seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    starts_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ends_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    weekly: Option<WeeklyBody>,
    /// An IANA time zone (`Asia/Jakarta`) for `weekly`; UTC when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    timezone: Option<String>,
}

/// A window as the API shows it: what a create takes, the occurrence under way and the next.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct WindowView {
    #[schema(value_type = String)]
    id: WindowId,
    #[serde(flatten)]
    window: WindowBody,
    active: Option<Occurrence>,
    next: Option<Occurrence>,
    #[serde(with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    created_at: i64,
    #[serde(with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    updated_at: i64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct Occurrence {
    #[serde(with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    starts_at: i64,
    #[serde(with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    ends_at: i64,
}

#[derive(Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct WeeklyBody {
    /// `mon` … `sun`.
    days: Vec<String>,
    /// `HH:MM`, local to the window's time zone.
    start: String,
    duration: String,
}

fn parse_start(raw: &str) -> ApiResult<u16> {
    let bad = || ApiError::invalid("weekly.start must be a local time \"HH:MM\", 00:00 to 23:59");
    let (h, m) = raw.split_once(':').ok_or_else(bad)?;
    let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 23 || m > 59 || raw.len() != 5 {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

impl WindowBody {
    fn into_window(self, id: WindowId, now: i64) -> ApiResult<MaintenanceWindow> {
        if let Some(name) = &self.name {
            check_name("name", name)?;
        }
        let schedule = match (self.starts_at, self.ends_at, self.weekly) {
            (Some(starts), Some(ends), None) => {
                if self.timezone.is_some() {
                    return Err(ApiError::invalid(
                        "timezone applies to weekly windows; starts_at and ends_at carry their offset",
                    ));
                }
                let starts_at = parse_time("starts_at", &starts)?;
                let ends_at = parse_time("ends_at", &ends)?;
                if ends_at <= starts_at {
                    return Err(ApiError::invalid("ends_at must be after starts_at"));
                }
                if ends_at - starts_at > MAX_ONCE_MS {
                    return Err(ApiError::invalid(
                        "a one-off window may last at most 366 days",
                    ));
                }
                Schedule::Once { starts_at, ends_at }
            }
            (None, None, Some(w)) => {
                let timezone = self.timezone.unwrap_or_else(|| "UTC".into());
                if time_zone(&timezone).is_none() {
                    return Err(ApiError::invalid(format!(
                        "timezone {timezone:?} is not an IANA time zone, e.g. \"Asia/Jakarta\""
                    )));
                }
                if w.days.is_empty() {
                    return Err(ApiError::invalid("weekly.days must name at least one day"));
                }
                let mut days = Vec::new();
                for d in &w.days {
                    let n = parse_day(d).ok_or_else(|| {
                        ApiError::invalid(format!(
                            "weekly.days: {d:?} is not a day; use {}",
                            DAY_NAMES.join(", ")
                        ))
                    })?;
                    if !days.contains(&n) {
                        days.push(n);
                    }
                }
                days.sort();
                let duration_ms = duration_ms("weekly.duration", &w.duration)?;
                if duration_ms == 0 || duration_ms > window::MAX_DURATION_MS {
                    return Err(ApiError::invalid(
                        "weekly.duration must be more than 0s and at most 7 days",
                    ));
                }
                Schedule::Weekly {
                    days,
                    start_minute: parse_start(&w.start)?,
                    duration_ms,
                    timezone,
                }
            }
            (None, None, None) => {
                return Err(ApiError::invalid(
                    "a window needs starts_at and ends_at, or weekly",
                ))
            }
            (_, _, Some(_)) => {
                return Err(ApiError::invalid(
                    "a window is either one-off (starts_at, ends_at) or weekly, not both",
                ))
            }
            _ => {
                return Err(ApiError::invalid(
                    "a one-off window needs both starts_at and ends_at",
                ))
            }
        };
        Ok(MaintenanceWindow {
            id,
            name: self.name,
            matches: self.matches.into_match()?,
            schedule,
            created_at: now,
            updated_at: now,
            revision: 0,
        })
    }
}

fn hhmm(minute: u16) -> String {
    format!("{:02}:{:02}", minute / 60, minute % 60)
}

/// The window as a create takes it (what a merge patch applies to).
fn input(w: &MaintenanceWindow) -> WindowBody {
    let mut body = WindowBody {
        id: None,
        name: w.name.clone(),
        matches: (&w.matches).into(),
        starts_at: None,
        ends_at: None,
        weekly: None,
        timezone: None,
    };
    match &w.schedule {
        Schedule::Once { starts_at, ends_at } => {
            body.starts_at = Some(rfc3339(*starts_at));
            body.ends_at = Some(rfc3339(*ends_at));
        }
        Schedule::Weekly {
            days,
            start_minute,
            duration_ms,
            timezone,
        } => {
            body.weekly = Some(WeeklyBody {
                days: days
                    .iter()
                    .map(|d| DAY_NAMES[*d as usize].to_string())
                    .collect(),
                start: hhmm(*start_minute),
                duration: duration(*duration_ms),
            });
            body.timezone = Some(timezone.clone());
        }
    }
    body
}

fn view(w: &MaintenanceWindow, now: i64) -> WindowView {
    let occurrence = |(starts_at, ends_at)| Occurrence { starts_at, ends_at };
    let next = w
        .schedule
        .occurrences(now, now + 8 * 24 * 3_600_000)
        .into_iter()
        .find(|(s, _)| *s > now);
    WindowView {
        id: w.id.clone(),
        window: input(w),
        active: w.schedule.active_at(now).map(occurrence),
        next: next.map(occurrence),
        created_at: w.created_at,
        updated_at: w.updated_at,
    }
}

#[utoipa::path(post, path = "/v1/maintenance-windows", tag = "alerts", security(("api_key" = [])),
    request_body = WindowBody,
    responses(
        (status = 201, description = "Created.", body = WindowView),
        (status = 409, description = "A window with this id exists.", body = ErrorBody),
    ))]
pub(super) async fn create(
    Account(account): Account,
    State(state): State<AppState>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<WindowView>)> {
    let body: WindowBody = parse_json(&body)?;
    let id = id_or_new("id", body.id.clone(), WindowId::generate, WindowId::parse)?;
    let now = state.clock.now_ms();
    let w = body.into_window(id, now)?;
    let w = state.store.create_window(account, w).await?;
    state.alerts.wake();
    Ok((StatusCode::CREATED, Json(view(&w, now))))
}

#[utoipa::path(get, path = "/v1/maintenance-windows", tag = "alerts", security(("api_key" = [])),
    responses((status = 200, description = "Every maintenance window of the account.", body = Listed<WindowView>)))]
pub(super) async fn list(
    Account(account): Account,
    State(state): State<AppState>,
) -> ApiResult<Json<Listed<WindowView>>> {
    let now = state.clock.now_ms();
    let windows = state.store.list_windows(account).await?;
    Ok(Listed::all(windows.iter().map(|w| view(w, now)).collect()))
}

#[utoipa::path(get, path = "/v1/maintenance-windows/{id}", tag = "alerts", security(("api_key" = [])),
    params(("id" = String, Path, description = "The window's id."), IfNoneMatchHeader),
    responses((status = 200, description = "The window, with its `ETag`.", body = WindowView)))]
pub(super) async fn read(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let w = state.store.get_window(account, id.into()).await?;
    Ok(revision::read(&headers, view(&w, state.clock.now_ms())))
}

#[utoipa::path(patch, path = "/v1/maintenance-windows/{id}", tag = "alerts", security(("api_key" = [])),
    params(("id" = String, Path, description = "The window's id."), IfMatchHeader),
    request_body(content = Object, description = "A JSON merge patch (RFC 7396) over what a create takes; `null` removes a field. The result is checked as a create would be."),
    responses((status = 200, description = "Changed.", body = WindowView)))]
pub(super) async fn update(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
    if_match: IfMatch,
    body: Bytes,
) -> ApiResult<Response> {
    let patch = patch_object(&body)?;
    let id = WindowId::from(id);
    let store = state.store.clone();
    let now = state.clock.now_ms();
    let response = revision::patch(
        &if_match,
        "maintenance window",
        || store.get_window(account.clone(), id.clone()),
        |w: &MaintenanceWindow| view(w, now),
        |w: &mut MaintenanceWindow| {
            let mut current = input(w);
            // Switching between one-off and weekly: the patch's kind wins.
            if patch.get("weekly").is_some_and(|v| !v.is_null()) {
                current.starts_at = None;
                current.ends_at = None;
            }
            if patch.get("starts_at").is_some_and(|v| !v.is_null()) {
                current.weekly = None;
                current.timezone = None;
            }
            let body: WindowBody = super::merged(&current, &patch, "window")?;
            let mut changed = body.into_window(w.id.clone(), now)?;
            changed.created_at = w.created_at;
            changed.revision = w.revision;
            *w = changed;
            Ok(())
        },
        |changed: MaintenanceWindow, _: MaintenanceWindow| {
            let store = store.clone();
            let account = account.clone();
            async move { revision::saved(store.update_window(account, changed).await) }
        },
    )
    .await?;
    state.alerts.wake();
    Ok(response)
}

#[utoipa::path(delete, path = "/v1/maintenance-windows/{id}", tag = "alerts", security(("api_key" = [])),
    params(("id" = String, Path, description = "The window's id.")),
    responses((status = 204, description = "Deleted."),))]
pub(super) async fn remove(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state
        .store
        .delete_window(account, id.into(), state.clock.now_ms())
        .await?;
    state.alerts.wake();
    Ok(StatusCode::NO_CONTENT)
}

/// The parts of [from, to) a device spent inside its maintenance windows, merged.
pub async fn maintenance_spans(
    store: &SharedStore,
    account: &AccountId,
    device: &DeviceContext,
    from: i64,
    to: i64,
) -> ApiResult<Vec<(i64, i64)>> {
    let windows = store.list_windows(account.clone()).await?;
    Ok(covered_spans(&windows, device, from, to))
}
