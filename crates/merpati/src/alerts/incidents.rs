//! `/v1/incidents`: what the alert engine opened, with the devices and channels hit, the
//! conversations affected, the backup channel as it is now, the timeline and every
//! notification; acknowledging, resolving and notes go through the engine, so that they
//! stop (or start) exactly what it would.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Json;
use merpati_domain::alert::engine::{self, Outcome};
use merpati_domain::alert::{Incident, IncidentFilter, IncidentState, Notification, TimelineEntry};
use merpati_domain::ids::{AccountId, IncidentId};
use merpati_domain::Page;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::extract::{Account, OptionalJsonBody, Query};
use crate::api::paging::{page_limit, parse_cursor};
use crate::api::revision;
use crate::api::time::{duration, rfc3339};
use crate::api::validate::check_name;
use crate::api::{ApiError, ApiResult, AppState};

fn secs(ms: i64) -> i64 {
    ms.div_euclid(1000)
}

fn devices_json(inc: &Incident, now: i64) -> Vec<Value> {
    inc.devices
        .iter()
        .map(|d| {
            json!({
                "id": d.device_id,
                "name": d.name,
                "channel": {"id": d.channel_id, "name": d.channel_name, "engine": d.engine},
                "down_at": rfc3339(d.down_at),
                "up_at": d.up_at.map(rfc3339),
                "down_seconds": secs(d.up_at.unwrap_or(now) - d.down_at),
                "flapping": d.flapping,
            })
        })
        .collect()
}

fn channels_json(inc: &Incident) -> Vec<Value> {
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for d in &inc.devices {
        if !seen.contains(&&d.channel_id) {
            seen.push(&d.channel_id);
            out.push(json!({"id": d.channel_id, "name": d.channel_name, "engine": d.engine}));
        }
    }
    out
}

/// What a list shows of an incident.
fn summary(inc: &Incident, now: i64) -> Value {
    json!({
        "id": inc.id,
        "state": inc.state.as_str(),
        "severity": inc.severity.as_str(),
        "business": {"id": inc.business_id, "name": inc.business_name},
        "opened_at": rfc3339(inc.opened_at),
        "acknowledged_at": inc.acknowledged_at.map(rfc3339),
        "acknowledged_by": inc.acknowledged_by,
        "resolved_at": inc.resolved_at.map(rfc3339),
        "devices": devices_json(inc, now),
        "channels": channels_json(inc),
        "affected_conversations": {
            "count": inc.affected.count,
            "window": duration(inc.affected.window_ms),
        },
        "updated_at": rfc3339(inc.updated_at),
    })
}

fn timeline_json(entries: &[TimelineEntry]) -> Vec<Value> {
    entries
        .iter()
        .map(|e| {
            let mut v = serde_json::to_value(&e.entry).expect("entries serialize");
            v.as_object_mut()
                .expect("entries are objects")
                .insert("at".into(), json!(rfc3339(e.at)));
            v
        })
        .collect()
}

fn notifications_json(all: &[Notification]) -> Vec<Value> {
    all.iter()
        .map(|n| {
            json!({
                "id": n.id,
                "notifier_id": n.notifier_id,
                "kind": n.message.kind.as_str(),
                "status": n.status.as_str(),
                "attempts": n.attempts,
                "next_attempt_at": n.next_attempt_at.map(rfc3339),
                "last_error": n.last_error,
                "sent_at": n.sent_at.map(rfc3339),
            })
        })
        .collect()
}

async fn detail(state: &AppState, account: AccountId, id: IncidentId) -> ApiResult<Value> {
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
    let mut v = summary(&inc, now);
    let o = v.as_object_mut().expect("an object");
    o.insert(
        "affected_conversations".into(),
        json!({
            "count": inc.affected.count,
            "phones": inc.affected.phones,
            "window": duration(inc.affected.window_ms),
        }),
    );
    o.insert("backup_channel".into(), json!(backup));
    o.insert(
        "next".into(),
        json!({
            "notification_at": inc.notice.map(|n| rfc3339(n.at)),
            "repeat_at": inc.repeat_at.map(rfc3339),
            "escalate_at": inc.escalate_at.map(rfc3339),
        }),
    );
    o.insert("timeline".into(), json!(timeline_json(&timeline)));
    o.insert(
        "notifications".into(),
        json!(notifications_json(&notifications)),
    );
    Ok(v)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    state: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

pub(super) async fn list(
    Account(account): Account,
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
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
    let data: Vec<Value> = items.iter().map(|i| summary(i, now)).collect();
    Ok(Json(json!({"data": data, "next_cursor": next_cursor})))
}

pub(super) async fn read(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let v = detail(&state, account, id.into()).await?;
    Ok(revision::read(&headers, v))
}

#[derive(Default, Deserialize)]
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
) -> ApiResult<Json<Value>> {
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

pub(super) async fn acknowledge(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
    OptionalJsonBody(body): OptionalJsonBody<ActBody>,
) -> ApiResult<Json<Value>> {
    act(
        &state,
        account,
        id.into(),
        &body,
        Action::Acknowledge("api"),
    )
    .await
}

pub(super) async fn resolve(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
    OptionalJsonBody(body): OptionalJsonBody<ActBody>,
) -> ApiResult<Json<Value>> {
    act(&state, account, id.into(), &body, Action::Resolve).await
}

pub(super) async fn add_note(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
    OptionalJsonBody(body): OptionalJsonBody<ActBody>,
) -> ApiResult<Json<Value>> {
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
