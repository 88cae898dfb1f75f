//! `/v1/incidents`: what the alert engine opened, with the devices and channels hit, the
//! conversations affected, the backup channel as it is now, the timeline and every
//! notification; acknowledging, resolving and notes go through the engine, so that they
//! stop (or start) exactly what it would.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Json;
use merpati_domain::alert::engine::{self, Outcome};
use merpati_domain::alert::{Entry, Incident, IncidentFilter, IncidentState, Notification};
use merpati_domain::ids::{
    AccountId, BusinessId, ChannelId, DeviceId, IncidentId, NotificationId, NotifierId,
};
use merpati_domain::Page;
use serde::{Deserialize, Serialize};

use crate::api::extract::{Account, OptionalJsonBody, Query};
use crate::api::openapi::{ErrorBody, IfNoneMatchHeader};
use crate::api::paging::{page_limit, parse_cursor, Listed};
use crate::api::revision;
use crate::api::time::{as_rfc3339, duration};
use crate::api::validate::check_name;
use crate::api::{ApiError, ApiResult, AppState};

fn secs(ms: i64) -> i64 {
    ms.div_euclid(1000)
}

/// A channel an incident hit.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub(super) struct ChannelRef {
    #[schema(value_type = String)]
    id: ChannelId,
    name: String,
    engine: String,
}

/// A device an incident counts, down or back.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct IncidentDeviceView {
    #[schema(value_type = String)]
    id: DeviceId,
    name: String,
    channel: ChannelRef,
    #[serde(with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    down_at: i64,
    /// `null` while it is down.
    #[serde(with = "as_rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    up_at: Option<i64>,
    down_seconds: i64,
    flapping: bool,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct BusinessRef {
    #[schema(value_type = String)]
    id: BusinessId,
    name: String,
}

/// The conversations that went unanswered on the devices hit: phones that wrote to them
/// within the window before they went down.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct AffectedView {
    count: usize,
    /// Only on one incident's page.
    #[serde(skip_serializing_if = "Option::is_none")]
    phones: Option<Vec<String>>,
    /// e.g. `"24h"`.
    window: String,
}

/// What a list shows of an incident.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct IncidentSummary {
    #[schema(value_type = String)]
    id: IncidentId,
    /// `open`, `acknowledged` or `resolved`.
    state: &'static str,
    /// `warning` or `critical`.
    severity: &'static str,
    business: BusinessRef,
    #[serde(with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    opened_at: i64,
    #[serde(with = "as_rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    acknowledged_at: Option<i64>,
    acknowledged_by: Option<String>,
    #[serde(with = "as_rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    resolved_at: Option<i64>,
    devices: Vec<IncidentDeviceView>,
    channels: Vec<ChannelRef>,
    affected_conversations: AffectedView,
    #[serde(with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    updated_at: i64,
}

/// One incident with its backup channel, what comes next, the timeline and every
/// notification.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct IncidentView {
    #[serde(flatten)]
    summary: IncidentSummary,
    /// The channel's backup as it is now, when it has one.
    backup_channel: Option<BackupView>,
    next: NextView,
    timeline: Vec<TimelineView>,
    notifications: Vec<NotificationView>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct BackupView {
    #[schema(value_type = String)]
    id: ChannelId,
    name: String,
    devices_up: usize,
    devices: usize,
}

/// When the engine acts on the incident next, if it will.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct NextView {
    #[serde(with = "as_rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    notification_at: Option<i64>,
    #[serde(with = "as_rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    repeat_at: Option<i64>,
    #[serde(with = "as_rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    escalate_at: Option<i64>,
}

/// One entry of the timeline: `at`, `type` (`opened`, `reopened`, `device_down`,
/// `device_up`, `flapping`, `notification_sent`, `notification_failed`, `escalated`,
/// `acknowledged`, `note`, `maintenance_started`, `maintenance_ended`, `resolved`) and
/// that type's fields.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct TimelineView {
    #[serde(with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    at: i64,
    #[serde(flatten)]
    #[schema(value_type = Object)]
    entry: Entry,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct NotificationView {
    #[schema(value_type = String)]
    id: NotificationId,
    #[schema(value_type = String)]
    notifier_id: NotifierId,
    /// `opened`, `repeat`, `escalated`, `recovered`, …
    kind: &'static str,
    /// `pending`, `sent` or `failed`.
    status: &'static str,
    attempts: i64,
    #[serde(with = "as_rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    next_attempt_at: Option<i64>,
    last_error: Option<String>,
    #[serde(with = "as_rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    sent_at: Option<i64>,
}

fn channels_of(inc: &Incident) -> Vec<ChannelRef> {
    let mut out: Vec<ChannelRef> = Vec::new();
    for d in &inc.devices {
        if !out.iter().any(|c| c.id == d.channel_id) {
            out.push(ChannelRef {
                id: d.channel_id.clone(),
                name: d.channel_name.clone(),
                engine: d.engine.clone(),
            });
        }
    }
    out
}

fn summary(inc: &Incident, now: i64) -> IncidentSummary {
    IncidentSummary {
        id: inc.id.clone(),
        state: inc.state.as_str(),
        severity: inc.severity.as_str(),
        business: BusinessRef {
            id: inc.business_id.clone(),
            name: inc.business_name.clone(),
        },
        opened_at: inc.opened_at,
        acknowledged_at: inc.acknowledged_at,
        acknowledged_by: inc.acknowledged_by.clone(),
        resolved_at: inc.resolved_at,
        devices: inc
            .devices
            .iter()
            .map(|d| IncidentDeviceView {
                id: d.device_id.clone(),
                name: d.name.clone(),
                channel: ChannelRef {
                    id: d.channel_id.clone(),
                    name: d.channel_name.clone(),
                    engine: d.engine.clone(),
                },
                down_at: d.down_at,
                up_at: d.up_at,
                down_seconds: secs(d.up_at.unwrap_or(now) - d.down_at),
                flapping: d.flapping,
            })
            .collect(),
        channels: channels_of(inc),
        affected_conversations: AffectedView {
            count: inc.affected.count,
            phones: None,
            window: duration(inc.affected.window_ms),
        },
        updated_at: inc.updated_at,
    }
}

fn notification_view(n: &Notification) -> NotificationView {
    NotificationView {
        id: n.id.clone(),
        notifier_id: n.notifier_id.clone(),
        kind: n.message.kind.as_str(),
        status: n.status.as_str(),
        attempts: n.attempts,
        next_attempt_at: n.next_attempt_at,
        last_error: n.last_error.clone(),
        sent_at: n.sent_at,
    }
}

async fn detail(state: &AppState, account: AccountId, id: IncidentId) -> ApiResult<IncidentView> {
    let inc = state
        .store
        .get_incident(account.clone(), id.clone())
        .await?;
    let now = state.clock.now_ms();
    let timeline = state.store.timeline(id.clone()).await?;
    let notifications = state.store.incident_notifications(id).await?;
    let backup = match inc.devices.first() {
        Some(d) if inc.backup_channel_id.is_some() => {
            state
                .store
                .backup_status(account, d.channel_id.clone())
                .await?
        }
        _ => None,
    };
    let mut summary = summary(&inc, now);
    summary.affected_conversations.phones = Some(inc.affected.phones.clone());
    Ok(IncidentView {
        summary,
        backup_channel: backup.map(|b| BackupView {
            id: b.id,
            name: b.name,
            devices_up: b.devices_up,
            devices: b.devices,
        }),
        next: NextView {
            notification_at: inc.notice.map(|n| n.at),
            repeat_at: inc.repeat_at,
            escalate_at: inc.escalate_at,
        },
        timeline: timeline
            .into_iter()
            .map(|e| TimelineView {
                at: e.at,
                entry: e.entry,
            })
            .collect(),
        notifications: notifications.iter().map(notification_view).collect(),
    })
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    /// `open`, `acknowledged` or `resolved`.
    state: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

#[utoipa::path(get, path = "/v1/incidents", tag = "alerts", security(("api_key" = [])),
    params(ListQuery),
    responses((status = 200, description = "A page of incidents, newest first.", body = Listed<IncidentSummary>)))]
pub(super) async fn list(
    Account(account): Account,
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Listed<IncidentSummary>>> {
    let filter = IncidentFilter {
        state: match q.state.as_deref() {
            None => None,
            Some(s) => Some(IncidentState::parse(s).ok_or_else(|| {
                ApiError::invalid("state must be open, acknowledged or resolved")
            })?),
        },
    };
    let limit = page_limit(q.limit)?;
    let page = Page {
        after: q.cursor.as_deref().map(parse_cursor).transpose()?,
        limit: limit + 1,
    };
    let now = state.clock.now_ms();
    let mut items = state.store.list_incidents(account, filter, page).await?;
    let next_cursor = if items.len() > limit {
        items.truncate(limit);
        items
            .last()
            .map(|i| merpati_domain::ids::encode_cursor(i.id.as_str()))
    } else {
        None
    };
    Ok(Json(Listed {
        data: items.iter().map(|i| summary(i, now)).collect(),
        next_cursor,
    }))
}

#[utoipa::path(get, path = "/v1/incidents/{id}", tag = "alerts", security(("api_key" = [])),
    params(("id" = String, Path, description = "The incident's id."), IfNoneMatchHeader),
    responses((status = 200, description = "The incident, its timeline and notifications, with its `ETag`.", body = IncidentView)))]
pub(super) async fn read(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let v = detail(&state, account, id.into()).await?;
    Ok(revision::read(&headers, v))
}

#[derive(Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ActBody {
    /// Who, for the timeline (a person's name); the API key when absent.
    by: Option<String>,
    note: Option<String>,
}

fn who(body: &ActBody) -> ApiResult<String> {
    match &body.by {
        Some(by) => {
            check_name("by", by)?;
            Ok(by.clone())
        }
        None => Ok("api key".into()),
    }
}

/// Acknowledges, resolves or notes an incident through the engine, in one transaction,
/// and answers with the incident as it then is.
async fn act(
    state: &AppState,
    account: AccountId,
    id: IncidentId,
    body: &ActBody,
    action: Action,
) -> ApiResult<Json<IncidentView>> {
    apply(state, account.clone(), id.clone(), body, action).await?;
    Ok(Json(detail(state, account, id).await?))
}

async fn apply(
    state: &AppState,
    account: AccountId,
    id: IncidentId,
    body: &ActBody,
    action: Action,
) -> ApiResult<()> {
    let by = who(body)?;
    if let Some(note) = &body.note {
        if note.trim().is_empty() || note.chars().count() > 4000 {
            return Err(ApiError::invalid("note must be 1 to 4000 characters"));
        }
    }
    let now = state.clock.now_ms();
    let settings = state.alerts.settings().clone();
    let note = body.note.clone();
    let (a, i) = (account.clone(), id.clone());
    let out: Outcome = state
        .store
        .alert_write(Box::new(move |tx| {
            let out = match action {
                Action::Acknowledge(via) => {
                    engine::acknowledge(tx, &settings, &a, &i, &by, via, now)?.1
                }
                Action::Resolve => engine::resolve(tx, &settings, &a, &i, &by, now)?.1,
                Action::Note => Outcome::default(),
            };
            if let Some(text) = note {
                engine::note(tx, &a, &i, &by, &text, now)?;
            }
            Ok(out)
        }))
        .await?;
    state.alerts.committed(&out);
    state.alerts.wake();
    Ok(())
}

#[derive(Clone, Copy)]
pub(super) enum Action {
    Acknowledge(&'static str),
    Resolve,
    Note,
}

#[utoipa::path(post, path = "/v1/incidents/{id}/acknowledge", tag = "alerts", security(("api_key" = [])),
    params(("id" = String, Path, description = "The incident's id.")), request_body(content = Option<ActBody>, description = "Optional: who (`by`) and a note."),
    responses(
        (status = 200, description = "Acknowledged: repeats and escalation stop.", body = IncidentView),
        (status = 409, description = "It is resolved.", body = ErrorBody),
    ))]
pub(super) async fn acknowledge(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
    OptionalJsonBody(body): OptionalJsonBody<ActBody>,
) -> ApiResult<Json<IncidentView>> {
    act(
        &state,
        account,
        id.into(),
        &body,
        Action::Acknowledge("api"),
    )
    .await
}

#[utoipa::path(post, path = "/v1/incidents/{id}/resolve", tag = "alerts", security(("api_key" = [])),
    params(("id" = String, Path, description = "The incident's id.")), request_body(content = Option<ActBody>, description = "Optional: who (`by`) and a note."),
    responses(
        (status = 200, description = "Resolved by hand.", body = IncidentView),
        (status = 409, description = "It is resolved already.", body = ErrorBody),
    ))]
pub(super) async fn resolve(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
    OptionalJsonBody(body): OptionalJsonBody<ActBody>,
) -> ApiResult<Json<IncidentView>> {
    act(&state, account, id.into(), &body, Action::Resolve).await
}

#[utoipa::path(post, path = "/v1/incidents/{id}/notes", tag = "alerts", security(("api_key" = [])),
    params(("id" = String, Path, description = "The incident's id.")), request_body = ActBody,
    responses((status = 200, description = "The note is on its timeline.", body = IncidentView)))]
pub(super) async fn add_note(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
    OptionalJsonBody(body): OptionalJsonBody<ActBody>,
) -> ApiResult<Json<IncidentView>> {
    if body.note.is_none() {
        return Err(ApiError::invalid("note is required"));
    }
    act(&state, account, id.into(), &body, Action::Note).await
}

/// Acknowledges through a signed link: the link names the incident, whose account is its
/// own.
pub(super) async fn acknowledge_by_link(state: &AppState, inc: &Incident) -> ApiResult<Incident> {
    let body = ActBody {
        by: Some("signed link".into()),
        note: None,
    };
    apply(
        state,
        inc.account_id.clone(),
        inc.id.clone(),
        &body,
        Action::Acknowledge("link"),
    )
    .await?;
    Ok(state
        .store
        .get_incident(inc.account_id.clone(), inc.id.clone())
        .await?)
}
