//! The incidents pages: the list, and one incident (what notifications link to) with its
//! devices, timeline and notifications; acknowledge, resolve, add a note.

use askama::Template;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Extension;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::client::{enc, Api, List};
use super::page::{after_action, show, Frame, Prefs};
use super::session::{Action, Fields, Session};
use super::Shown;
use crate::api::AppState;

#[derive(Deserialize)]
pub struct Named {
    pub name: String,
}

#[derive(Deserialize)]
pub struct IncidentDevice {
    pub id: String,
    pub name: String,
    pub channel: Named,
    pub down_at: String,
    pub up_at: Option<String>,
    pub down_seconds: i64,
    pub flapping: bool,
}

#[derive(Deserialize)]
pub struct IncidentJson {
    pub id: String,
    pub state: String,
    pub severity: String,
    pub business: Named,
    pub opened_at: String,
    pub acknowledged_by: Option<String>,
    pub resolved_at: Option<String>,
    pub devices: Vec<IncidentDevice>,
}

impl IncidentJson {
    pub fn down_now(&self) -> usize {
        self.devices.iter().filter(|d| d.up_at.is_none()).count()
    }

    pub fn down_for(&self, d: &IncidentDevice) -> String {
        crate::api::time::duration(d.down_seconds * 1000)
    }
}

#[derive(Template)]
#[template(path = "dashboard/incidents.html")]
pub struct IncidentsPage {
    pub f: Frame,
    pub incidents: Vec<IncidentJson>,
    pub state: String,
    pub next: Option<String>,
}

pub async fn list(
    State(state): State<AppState>,
    Extension(api): Extension<Api>,
    session: Session,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, Shown> {
    let prefs = Prefs::of(&headers);
    let fields = Fields::parse(query.as_deref().unwrap_or("").as_bytes());
    let wanted = fields.get("state").unwrap_or("").to_string();
    let mut uri = "/v1/incidents?limit=50".to_string();
    if !wanted.is_empty() {
        uri.push_str(&format!("&state={}", enc(&wanted)));
    }
    if let Some(cursor) = fields.get("cursor") {
        uri.push_str(&format!("&cursor={}", enc(cursor)));
    }
    let incidents: List<IncidentJson> = api
        .get(&session.account, &uri)
        .await
        .map_err(|r| Shown::refused(&prefs, r))?;
    let f = Frame::new(&state, &session, &headers, "incidents").await;
    let page = IncidentsPage {
        f,
        incidents: incidents.data,
        state: wanted,
        next: incidents.next_cursor,
    };
    Ok(show(&state, &page.f, &page))
}

/// A timeline entry as a line: its kind and what it says.
pub struct Entry {
    pub at: String,
    pub kind: String,
    pub text: String,
}

fn entry(v: &Map<String, Value>) -> Entry {
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let kind = s("type");
    let text = match kind.as_str() {
        "device_down" | "device_up" | "flapping" => s("name"),
        "acknowledged" | "resolved" => format!("{} ({})", s("by"), s("via")),
        "note" => format!("{}: {}", s("by"), s("text")),
        "notification_sent" | "notification_failed" => {
            let mut t = format!("{} → {}", s("kind"), s("notifier_id"));
            if kind == "notification_failed" {
                t.push_str(&format!(": {}", s("error")));
            }
            t
        }
        "maintenance_started" | "maintenance_ended" => s("device_id"),
        "escalated" => format!("#{}", v.get("step").and_then(Value::as_u64).unwrap_or(0)),
        _ => String::new(),
    };
    Entry {
        at: s("at"),
        kind: kind.replace('_', " "),
        text,
    }
}

#[derive(Deserialize)]
pub struct NotificationJson {
    pub notifier_id: String,
    pub kind: String,
    pub status: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub sent_at: Option<String>,
}

#[derive(Deserialize)]
struct IncidentDetailJson {
    #[serde(flatten)]
    incident: IncidentJson,
    timeline: Vec<Map<String, Value>>,
    notifications: Vec<NotificationJson>,
}

#[derive(Template)]
#[template(path = "dashboard/incident.html")]
pub struct IncidentPage {
    pub f: Frame,
    pub i: IncidentJson,
    pub timeline: Vec<Entry>,
    pub notifications: Vec<NotificationJson>,
}

pub async fn one(
    State(state): State<AppState>,
    Extension(api): Extension<Api>,
    session: Session,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Shown> {
    let prefs = Prefs::of(&headers);
    let d: IncidentDetailJson = api
        .get(&session.account, &format!("/v1/incidents/{}", enc(&id)))
        .await
        .map_err(|r| Shown::refused(&prefs, r))?;
    let f = Frame::new(&state, &session, &headers, "incidents").await;
    let page = IncidentPage {
        f,
        i: d.incident,
        timeline: d.timeline.iter().map(entry).collect(),
        notifications: d.notifications,
    };
    Ok(show(&state, &page.f, &page))
}

/// `POST /incidents/{id}/{acknowledge|resolve|notes}` with `by` and `note`.
pub async fn act(
    State(state): State<AppState>,
    Extension(api): Extension<Api>,
    Path((id, verb)): Path<(String, String)>,
    action: Action,
) -> Response {
    let back = format!("/incidents/{}", enc(&id));
    let t = action.prefs.words();
    let verb = match verb.as_str() {
        "acknowledge" | "resolve" | "notes" => verb,
        _ => return after_action(&state, &back, false, t.not_found),
    };
    let mut body = Map::new();
    if let Some(by) = action.fields.get("by") {
        body.insert("by".into(), json!(by));
    }
    if let Some(note) = action.fields.get("note") {
        body.insert("note".into(), json!(note));
    }
    let uri = format!("/v1/incidents/{}/{verb}", enc(&id));
    match api
        .post(&action.session.account, &uri, &Value::Object(body))
        .await
    {
        Ok(_) => after_action(&state, &back, true, t.done),
        Err(r) => after_action(&state, &back, false, &r.message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeline_entries_read_as_lines() {
        let v = json!({"type": "note", "by": "Ani", "text": "on it", "at": "t"});
        let e = entry(v.as_object().unwrap());
        assert_eq!((e.kind.as_str(), e.text.as_str()), ("note", "Ani: on it"));
        let v = json!({"type": "device_down", "name": "Phone 1", "at": "t"});
        assert_eq!(entry(v.as_object().unwrap()).kind, "device down");
    }
}
