//! `GET /v1/stream`: an account's committed changes as they happen, as server-sent events
//! fed from the bus (events stored, delivery outcomes, devices up/pending/down, endpoints
//! disabled/paused, incidents, jobs). What `merpati events tail` follows, and what the
//! dashboard's live view will.
//!
//! The bus tells each change once its commit is durable, so whatever a client reads on
//! the stream the API already shows. A client that falls behind is told `missed` (with how
//! many) and reads what it needs from the API; nothing depends on the stream.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use axum::Router;
use futures_util::stream::{self, Stream};
use merpati_domain::ids::AccountId;
use merpati_runtime::bus::{
    Change, DeliveryOutcome, DeviceStatus, EndpointState, Received, Subscriber,
};
use serde::Deserialize;
use serde_json::json;

use crate::api::extract::{Account, Query};
use crate::api::time::rfc3339;
use crate::api::{ApiError, ApiResult, AppState};

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/stream", get(changes))
}

/// The kinds of change a client may ask for (`?kinds=events,devices`); all when absent.
const KINDS: [&str; 6] = [
    "events",
    "deliveries",
    "devices",
    "endpoints",
    "incidents",
    "jobs",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamQuery {
    kinds: Option<String>,
}

fn kinds(raw: Option<&str>) -> ApiResult<Vec<&'static str>> {
    let Some(raw) = raw else {
        return Ok(KINDS.to_vec());
    };
    raw.split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(|k| {
            KINDS
                .iter()
                .copied()
                .find(|known| *known == k)
                .ok_or_else(|| {
                    ApiError::invalid(format!("kinds: {k:?} is not one of {}", KINDS.join(", ")))
                })
        })
        .collect()
}

/// A change of this account, as one server-sent event (or none).
fn sse(change: &Change, account: &AccountId, wanted: &[&str]) -> Option<Event> {
    let (kind, name, data) = match change {
        Change::EventsStored { account: a, events } if a == account => {
            let items: Vec<_> = events
                .iter()
                .map(|e| json!({"id": e.id, "type": e.event_type, "device_id": e.device}))
                .collect();
            ("events", "events", json!({"events": items}))
        }
        Change::Delivery(d) if d.account == *account => {
            let (outcome, retry_at) = match d.outcome {
                DeliveryOutcome::Succeeded => ("succeeded", None),
                DeliveryOutcome::Failed => ("failed", None),
                DeliveryOutcome::Retrying(at) => ("retrying", Some(rfc3339(at))),
            };
            (
                "deliveries",
                "delivery",
                json!({
                    "delivery_id": d.delivery, "endpoint_id": d.endpoint, "attempt": d.attempt,
                    "outcome": outcome, "next_attempt_at": retry_at,
                    "status_code": d.status_code, "duration_ms": d.duration_ms,
                }),
            )
        }
        Change::Device {
            account: a,
            device,
            status,
            at,
        } if a == account => {
            let status = match status {
                DeviceStatus::Connected => "connected",
                DeviceStatus::Pending => "pending",
                DeviceStatus::Disconnected => "disconnected",
            };
            (
                "devices",
                "device",
                json!({"device_id": device, "status": status, "since": rfc3339(*at)}),
            )
        }
        Change::Endpoint {
            account: a,
            endpoint,
            state,
        } if a == account => {
            let (state, until) = match state {
                EndpointState::Disabled(reason) => (format!("disabled: {}", reason.as_str()), None),
                EndpointState::Enabled => ("enabled".to_string(), None),
                EndpointState::Paused { until } => ("paused".to_string(), Some(rfc3339(*until))),
                EndpointState::Resumed => ("resumed".to_string(), None),
            };
            (
                "endpoints",
                "endpoint",
                json!({"endpoint_id": endpoint, "state": state, "paused_until": until}),
            )
        }
        Change::Incident {
            account: a,
            incident,
            state,
        } if a == account => (
            "incidents",
            "incident",
            json!({"incident_id": incident, "state": state.as_str()}),
        ),
        Change::Job {
            account: a,
            job,
            done,
            total,
            finished,
        } if a == account => (
            "jobs",
            "job",
            json!({"job_id": job, "done": done, "total": total, "finished": finished}),
        ),
        _ => return None,
    };
    wanted
        .contains(&kind)
        .then(|| Event::default().event(name).data(data.to_string()))
}

async fn changes(
    Account(account): Account,
    State(state): State<AppState>,
    Query(q): Query<StreamQuery>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let wanted = kinds(q.kinds.as_deref())?;
    let subscriber = state.bus.subscribe();
    let shutdown = state.shutdown.clone();
    // The first event says the stream is live: changes from here on are on it.
    let hello = Event::default().event("ready").data("{}");
    let changes = stream::unfold(
        (subscriber, account, wanted),
        |(mut sub, account, wanted): (Subscriber, AccountId, Vec<&'static str>)| async move {
            loop {
                match sub.recv().await? {
                    Received::Change(change) => {
                        if let Some(event) = sse(&change, &account, &wanted) {
                            return Some((Ok(event), (sub, account, wanted)));
                        }
                    }
                    Received::Missed(n) => {
                        let event = Event::default()
                            .event("missed")
                            .data(json!({"count": n}).to_string());
                        return Some((Ok(event), (sub, account, wanted)));
                    }
                }
            }
        },
    );
    let stream = futures_util::StreamExt::take_until(
        futures_util::StreamExt::chain(stream::iter([Ok(hello)]), changes),
        async move { shutdown.cancelled().await },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
