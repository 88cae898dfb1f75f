//! The events pages: the log with filters (type, device, time), and one event with its
//! payload, its deliveries and every attempt; resend a delivery, replay the event.

use askama::Template;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Extension;
use serde::Deserialize;
use serde_json::json;

use super::client::{ago_or_time, enc, Api, List};
use super::page::{after_action, show, Frame, Prefs};
use super::session::{Action, Fields, Session};
use super::Shown;
use crate::api::AppState;

const PAGE: usize = 50;

#[derive(Deserialize)]
pub struct EventJson {
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub device_id: Option<String>,
    pub created_at: String,
}

#[derive(Template)]
#[template(path = "dashboard/events.html")]
pub struct EventsPage {
    pub f: Frame,
    pub events: Vec<EventJson>,
    pub types: &'static [&'static str],
    pub event_type: String,
    pub device: String,
    pub from: String,
    pub to: String,
    pub query: String,
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
    let event_type = fields.get("type").unwrap_or("").to_string();
    let device = fields.get("device_id").unwrap_or("").to_string();
    let from = fields.get("from").unwrap_or("").to_string();
    let to = fields.get("to").unwrap_or("").to_string();
    let now = state.clock.now_ms();
    let mut filter = String::new();
    for (name, value) in [
        ("type", Some(event_type.clone()).filter(|v| !v.is_empty())),
        ("device_id", Some(device.clone()).filter(|v| !v.is_empty())),
        ("from", ago_or_time(&from, now)),
        ("to", ago_or_time(&to, now)),
    ] {
        if let Some(v) = value {
            filter.push_str(&format!("&{name}={}", enc(&v)));
        }
    }
    let mut uri = format!("/v1/events?limit={PAGE}{filter}");
    if let Some(cursor) = fields.get("cursor") {
        uri.push_str(&format!("&cursor={}", enc(cursor)));
    }
    let events: List<EventJson> = api
        .get(&session.account, &uri)
        .await
        .map_err(|r| Shown::refused(&prefs, r))?;
    let f = Frame::new(&state, &session, &headers, "events").await;
    let page = EventsPage {
        f,
        events: events.data,
        types: merpati_webhooks::EVENT_TYPES,
        query: format!(
            "type={}&device_id={}&from={}&to={}",
            enc(&event_type),
            enc(&device),
            enc(&from),
            enc(&to)
        ),
        event_type,
        device,
        from,
        to,
        next: events.next_cursor,
    };
    Ok(show(&state, &page.f, &page))
}

#[derive(Deserialize)]
pub struct AttemptJson {
    pub attempt: i64,
    pub started_at: String,
    pub duration_ms: i64,
    pub status_code: Option<u16>,
    pub error_kind: Option<String>,
    pub error: Option<String>,
    pub response_body: Option<String>,
}

#[derive(Deserialize)]
pub struct DeliveryJson {
    pub id: i64,
    pub endpoint_id: String,
    pub status: String,
    pub next_attempt_at: Option<String>,
    pub attempts: Vec<AttemptJson>,
}

#[derive(Deserialize)]
struct EventDetailJson {
    #[serde(flatten)]
    summary: EventJson,
    payload: serde_json::Value,
    deliveries: Vec<DeliveryJson>,
}

#[derive(Template)]
#[template(path = "dashboard/event.html")]
pub struct EventPage {
    pub f: Frame,
    pub e: EventJson,
    pub payload: String,
    pub deliveries: Vec<DeliveryJson>,
}

pub async fn one(
    State(state): State<AppState>,
    Extension(api): Extension<Api>,
    session: Session,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Shown> {
    let prefs = Prefs::of(&headers);
    let e: EventDetailJson = api
        .get(&session.account, &format!("/v1/events/{}", enc(&id)))
        .await
        .map_err(|r| Shown::refused(&prefs, r))?;
    let f = Frame::new(&state, &session, &headers, "events").await;
    let page = EventPage {
        f,
        payload: serde_json::to_string_pretty(&e.payload).unwrap_or_default(),
        e: e.summary,
        deliveries: e.deliveries,
    };
    Ok(show(&state, &page.f, &page))
}

/// `POST /events/{id}/replay`: every endpoint that takes it gets it again.
pub async fn replay(
    State(state): State<AppState>,
    Extension(api): Extension<Api>,
    Path(id): Path<String>,
    action: Action,
) -> Response {
    let back = format!("/events/{}", enc(&id));
    let t = action.prefs.words();
    match api
        .post(
            &action.session.account,
            &format!("/v1/events/{}/replay", enc(&id)),
            &json!({}),
        )
        .await
    {
        Ok(_) => after_action(&state, &back, true, t.replayed),
        Err(r) => after_action(&state, &back, false, &r.message),
    }
}

/// `POST /deliveries/{id}/resend` (with the event to come back to).
pub async fn resend(
    State(state): State<AppState>,
    Extension(api): Extension<Api>,
    Path(id): Path<String>,
    action: Action,
) -> Response {
    let back = match action.fields.get("event_id") {
        Some(e) => format!("/events/{}", enc(e)),
        None => "/events".to_string(),
    };
    let t = action.prefs.words();
    match api
        .post(
            &action.session.account,
            &format!("/v1/deliveries/{}/resend", enc(&id)),
            &json!({}),
        )
        .await
    {
        Ok(_) => after_action(&state, &back, true, t.resent),
        Err(r) => after_action(&state, &back, false, &r.message),
    }
}
