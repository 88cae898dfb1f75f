//! `POST /v1/connectors/{id}/inbound`: what an engine posts, taken in as its devices' own
//! would be. Answers are what engines understand: 401 for a request not signed with the
//! connector's secret (nothing stored), 200 for everything signed (stored, duplicate,
//! skipped, unknown, even malformed: any 4xx makes engines retry for hours), 503 with
//! `Retry-After` only when the store could not take it, 413 past the body limit.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use merpati_domain::device::{DeviceContext, EngineReport};
use merpati_domain::ids::{ConnectorId, DeviceId};
use merpati_domain::ingest::PreparedItem;
use merpati_domain::presence::machine::Input;
use merpati_domain::StoreError;
use merpati_engines::{Engine, Headers, Inbound, Options, State as EngineState};
use serde::Serialize;

use crate::api::extract::read_body;
use crate::api::openapi::ErrorBody;
use crate::api::{ApiError, ApiResult, AppState};

/// What merpati made of a request.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct Taken {
    /// Items stored as new events.
    stored: usize,
    /// Items already stored (an engine's retry).
    duplicates: usize,
    /// Session states taken into presence.
    states: usize,
    /// What was not taken, by reason: `from_me`, `group`, `status_broadcast`, `no_text`,
    /// `no_phone`, `unknown_event`, `not_requested`, `unbound` (an engine key bound to no
    /// device), `invalid_item`, `rid_reused`, `out_of_order` (a state older than one
    /// already taken), `malformed`.
    skipped: BTreeMap<&'static str, usize>,
    /// Slack's `url_verification` challenge, echoed.
    #[serde(skip_serializing_if = "Option::is_none")]
    challenge: Option<String>,
}

#[utoipa::path(post, path = "/v1/connectors/{id}/inbound", tag = "connectors",
    params(("id" = String, Path, description = "The connector's id.")),
    request_body(content = Object, description = "The engine's webhook, as it sends it, signed its own way with the connector's secret."),
    responses(
        (status = 200, description = "Verified and taken: stored, a duplicate, skipped or unknown alike.", body = Taken),
        (status = 401, description = "Not signed with the connector's secret (or stale); nothing stored.", body = ErrorBody),
        (status = 404, description = "No such connector.", body = ErrorBody),
        (status = 413, description = "Larger than 1 MiB, or more messages than the device may send in a second.", body = ErrorBody),
        (status = 429, description = "Over the device's or its account's events a second (`rate_limited`); nothing is stored; `Retry-After` says when to send it again.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds."))),
        (status = 503, description = "The store could not take it; `Retry-After` says when to send it again.", body = ErrorBody),
    ))]
pub(super) async fn inbound(
    State(state): State<AppState>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    match take(&state, ConnectorId::from(id), request).await {
        Ok(taken) => Json(taken).into_response(),
        Err(e) if e.status.is_server_error() => {
            let mut response = ApiError::unavailable(e.message).into_response();
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                HeaderValue::from_static("5"),
            );
            response
        }
        Err(e) => e.into_response(),
    }
}

async fn take(state: &AppState, id: ConnectorId, request: Request) -> ApiResult<Taken> {
    let headers = request.headers().clone();
    let body = read_body(request, &()).await?;
    let now = state.clock.now_ms();
    let Some(found) = state.store.inbound_connector(id, now).await? else {
        return Err(ApiError::not_found("connector"));
    };
    let connector = found.connector;
    let engine = Engine::parse(&connector.engine).ok_or_else(ApiError::internal)?;
    let pairs: Vec<(&str, &str)> = headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)))
        .collect();
    let secrets: Vec<&str> = found.secrets.iter().map(String::as_str).collect();
    if let Err(refused) =
        merpati_engines::verify(engine, &Headers::new(pairs), &body, &secrets, now / 1000)
    {
        state.connector_stats.rejected(connector.id.as_str());
        return Err(ApiError::unauthorized(refused.to_string()));
    }
    let taken = read(state, &connector, engine, &body, now).await?;
    state.connector_stats.taken(
        connector.id.as_str(),
        now,
        merpati_runtime::connectors::Taken {
            stored: taken.stored as u64,
            duplicates: taken.duplicates as u64,
            states: taken.states as u64,
            skipped: &taken.skipped,
        },
        &body,
    );
    Ok(taken)
}

/// A verified request: its items stored, its states and its life given to presence.
async fn read(
    state: &AppState,
    connector: &merpati_domain::connector::Connector,
    engine: Engine,
    body: &[u8],
    now: i64,
) -> ApiResult<Taken> {
    let mut taken = Taken::default();
    let options = Options {
        notifications: connector.notifications,
    };
    let inbound = match merpati_engines::parse(engine, body, options) {
        Ok(all) => all,
        Err(_) => {
            *taken.skipped.entry("malformed").or_default() += 1;
            return Ok(taken);
        }
    };

    // The devices the request speaks for, each read once.
    let mut devices: BTreeMap<DeviceId, Option<Arc<DeviceContext>>> = BTreeMap::new();
    let mut items: BTreeMap<DeviceId, Vec<PreparedItem>> = BTreeMap::new();
    for one in inbound {
        if let Inbound::Challenge(c) = one {
            taken.challenge = Some(c);
            continue;
        }
        let Some(device_id) = connector.device_for(one.key()).cloned() else {
            *taken.skipped.entry("unbound").or_default() += 1;
            continue;
        };
        if !devices.contains_key(&device_id) {
            let ctx = match state
                .store
                .device_context(connector.account_id.clone(), device_id.clone())
                .await
            {
                Ok(ctx) => Some(Arc::new(ctx)),
                Err(StoreError::NotFound(_)) => None,
                Err(e) => return Err(e.into()),
            };
            devices.insert(device_id.clone(), ctx);
        }
        let Some(ctx) = devices[&device_id].clone() else {
            *taken.skipped.entry("unbound").or_default() += 1;
            continue;
        };
        // A state older than the last the engine reported for this session came late.
        if let Inbound::State {
            at_ms: Some(at), ..
        } = &one
        {
            let key = one.key().unwrap_or_default();
            if !state
                .connector_stats
                .fresh_state(connector.id.as_str(), key, *at)
            {
                *taken.skipped.entry("out_of_order").or_default() += 1;
                continue;
            }
        }
        // A signed request is a sign of life, whatever it says.
        let input = match &one {
            Inbound::State { state: s, .. } => match s {
                EngineState::Connected => Input::EngineWorking,
                EngineState::Pending | EngineState::Disconnected => {
                    Input::Report(EngineReport::Disconnected)
                }
                EngineState::LoggedOut => Input::Report(EngineReport::LoggedOut),
            },
            _ => Input::Heartbeat,
        };
        state.presence.input(&ctx, input).await?;
        match one {
            Inbound::Item { item, .. } => {
                match crate::ingest::prepare_item(item, &ctx, now.div_euclid(1000)) {
                    Ok(prepared) => items.entry(device_id).or_default().push(prepared),
                    Err(_) => *taken.skipped.entry("invalid_item").or_default() += 1,
                }
            }
            Inbound::State { .. } => taken.states += 1,
            Inbound::Skipped { reason, .. } => {
                *taken.skipped.entry(reason.as_str()).or_default() += 1
            }
            Inbound::Alive { .. } | Inbound::Challenge(_) => {}
        }
    }
    for (device_id, batch) in items {
        let ctx = devices[&device_id].clone().expect("read above");
        let count = batch.len();
        let stored = match crate::ingest::store_items(state, ctx, batch, now).await {
            Ok(stored) => stored,
            // A `rid` the engine used before for other content: not a retry. Refusing it
            // would have the engine retry it for hours.
            Err(e) if e.status == StatusCode::CONFLICT => {
                *taken.skipped.entry("rid_reused").or_default() += count;
                continue;
            }
            Err(e) => return Err(e),
        };
        for item in stored {
            if item.new {
                taken.stored += 1;
            } else {
                taken.duplicates += 1;
            }
        }
    }
    Ok(taken)
}
