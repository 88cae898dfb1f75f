//! `GET /v1/stream`: an account's committed changes as they happen, as server-sent events
//! fed from the bus (events stored, delivery outcomes, devices up/pending/down, endpoints
//! disabled/paused, incidents, jobs), gathered for 200 ms after the first: one event a kind
//! (`devices`: `{"devices": [...]}`), a device's, endpoint's or job's latest state only, so
//! a storm of ten thousand devices reaches a browser as a few dozen messages. What `merpati events tail` follows, and what the
//! dashboard's live view will.
//!
//! The bus tells each change once its commit is durable, so whatever a client reads on
//! the stream the API already shows. A client that falls behind is told `missed` (with how
//! many) and reads what it needs from the API; nothing depends on the stream.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, Stream};
use merpati_domain::ids::AccountId;
use merpati_runtime::bus::{
    Change, DeliveryOutcome, DeviceStatus, EndpointState, Received, Subscriber,
};
use serde::Deserialize;
use serde_json::json;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::api::extract::{Account, Query};
use crate::api::time::rfc3339;
use crate::api::{ApiError, ApiResult, AppState};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(changes))
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

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct StreamQuery {
    /// Comma-separated among `events`, `deliveries`, `devices`, `endpoints`, `incidents`,
    /// `jobs`; all when absent.
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

/// A change of this account, as its kind and items (or none), with what it may be
/// coalesced by: a device's, an endpoint's or a job's latest state says all.
fn items(
    change: &Change,
    account: &AccountId,
    wanted: &[&str],
) -> Option<(&'static str, Option<String>, Vec<serde_json::Value>)> {
    let key = match change {
        Change::Device { device, .. } => Some(format!("device:{device}")),
        Change::Endpoint { endpoint, .. } => Some(format!("endpoint:{endpoint}")),
        Change::Job { job, .. } => Some(format!("job:{job}")),
        _ => None,
    };
    let (kind, data) = match change {
        Change::EventsStored { account: a, events } if a == account => {
            let items: Vec<_> = events
                .iter()
                .map(|e| json!({"id": e.id, "type": e.event_type, "device_id": e.device}))
                .collect();
            ("events", json!(items))
        }
        Change::Delivery(d) if d.account == *account => {
            let (outcome, retry_at) = match d.outcome {
                DeliveryOutcome::Succeeded => ("succeeded", None),
                DeliveryOutcome::Failed => ("failed", None),
                DeliveryOutcome::Retrying(at) => ("retrying", Some(rfc3339(at))),
            };
            (
                "deliveries",
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
                json!({"endpoint_id": endpoint, "state": state, "paused_until": until}),
            )
        }
        Change::Incident {
            account: a,
            incident,
            state,
        } if a == account => (
            "incidents",
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
            json!({"job_id": job, "done": done, "total": total, "finished": finished}),
        ),
        _ => return None,
    };
    let items = match data {
        serde_json::Value::Array(items) => items,
        one => vec![one],
    };
    wanted.contains(&kind).then_some((kind, key, items))
}

/// How long changes are gathered after the first, so that a burst (a thousand devices
/// flapping) reaches a browser as one state per device, not a flood.
const GATHER: Duration = Duration::from_millis(200);
/// Changes gathered at most before they go.
const MAX_GATHERED: usize = 2000;

/// An account's feed: the subscription, and what is ready to go.
struct Feed {
    sub: Subscriber,
    account: AccountId,
    wanted: Vec<&'static str>,
    ready: VecDeque<Event>,
}

impl Feed {
    /// The next event: what is ready, else the next gathering of changes: one event a
    /// kind, `{"<kind>": [...]}`, each device's, endpoint's and job's latest state only.
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Feed)> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some((Ok(event), self));
            }
            let first = self.sub.recv().await?;
            let deadline = tokio::time::Instant::now() + GATHER;
            let mut gathered: HashMap<&'static str, Vec<serde_json::Value>> = HashMap::new();
            let mut at: HashMap<String, (&'static str, usize)> = HashMap::new();
            let mut count = 0;
            let mut missed = None;
            let mut received = Some(first);
            while let Some(r) = received.take() {
                match r {
                    Received::Change(change) => {
                        if let Some((kind, key, items)) =
                            items(&change, &self.account, &self.wanted)
                        {
                            let list = gathered.entry(kind).or_default();
                            match key.as_ref().and_then(|k| at.get(k)) {
                                Some((_, i)) => list[*i] = items.into_iter().next().expect("one"),
                                None => {
                                    if let Some(k) = key {
                                        at.insert(k, (kind, list.len()));
                                    }
                                    count += items.len();
                                    list.extend(items);
                                }
                            }
                        }
                    }
                    Received::Missed(n) => {
                        missed = Some(n);
                        break;
                    }
                }
                if count >= MAX_GATHERED {
                    break;
                }
                match tokio::time::timeout_at(deadline, self.sub.recv()).await {
                    Ok(Some(next)) => received = Some(next),
                    Ok(None) if count == 0 && missed.is_none() => return None,
                    _ => {}
                }
            }
            for kind in KINDS {
                if let Some(list) = gathered.remove(kind) {
                    let data = json!({ kind: list });
                    self.ready
                        .push_back(Event::default().event(kind).data(data.to_string()));
                }
            }
            if let Some(n) = missed {
                self.ready.push_back(
                    Event::default()
                        .event("missed")
                        .data(json!({"count": n}).to_string()),
                );
            }
        }
    }
}

#[utoipa::path(get, path = "/v1/stream", tag = "stream",
    security(("api_key" = [])),
    params(StreamQuery),
    responses((status = 200, content_type = "text/event-stream", body = String,
        description = "Server-sent events: `ready` first, then one event a kind (`events`, \
            `deliveries`, `devices`, `endpoints`, `incidents`, `jobs`) for each 200 ms of \
            changes, with the latest state of each object in JSON; `missed` with a count when \
            the client fell behind.")))]
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
    let feed = Feed {
        sub: subscriber,
        account,
        wanted,
        ready: VecDeque::new(),
    };
    let changes = stream::unfold(feed, Feed::next);
    let stream = futures_util::StreamExt::take_until(
        futures_util::StreamExt::chain(stream::iter([Ok(hello)]), changes),
        async move { shutdown.cancelled().await },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
