//! Connectors: the engines people already run (WAHA, Evolution API, SMS Gateway for
//! Android, textbee, Telegram, Slack) pointed at merpati, unchanged. Each gets a URL and a
//! secret, and the exact setup to paste into the engine; what it posts there is verified
//! and read by `merpati-engines` and taken in by `inbound`.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use merpati_domain::connector::{Connector, EngineApi};
use merpati_domain::ids::{ConnectorId, DeviceId};
use merpati_engines::Engine;
use serde::{Deserialize, Serialize};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::api::extract::{Account, JsonBody, OptionalJsonBody};
use crate::api::openapi::{ErrorBody, IfMatchHeader, IfNoneMatchHeader};
use crate::api::paging::Listed;
use crate::api::revision::{self, IfMatch};
use crate::api::time::{as_duration, as_rfc3339};
use crate::api::validate::{check_id, double_option, id_or_new, rotation_expiry};
use crate::api::{ApiError, ApiResult, AppState};

mod inbound;
mod setup;

pub use setup::Setup;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(read, update, remove))
        .routes(routes!(rotate_secret))
        .routes(routes!(stats))
        .routes(routes!(inbound::inbound))
}

/// A connector's secret: 32 random bytes in hex, which every engine takes as its key
/// (Telegram's `secret_token` allows only letters, digits, `_` and `-`).
fn new_secret() -> String {
    rand::random::<[u8; 32]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn check_secret(secret: &str) -> ApiResult<()> {
    let ok = (20..=256).contains(&secret.len())
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "secret must be 20 to 256 letters, digits, _ or -",
        ))
    }
}

/// The address to give the engine: under `alerts.public_url` when set, else under the
/// host this request was made to.
fn url_of(state: &AppState, headers: &HeaderMap, c: &Connector) -> String {
    let base = state.config.alerts.public_url.clone().unwrap_or_else(|| {
        let host = headers
            .get(axum::http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("127.0.0.1");
        format!("http://{host}")
    });
    c.inbound_url(&base)
}

/// The engine's own API, for polling its status.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiBody {
    /// e.g. `http://waha:3000`.
    base_url: String,
    /// The engine's API key (WAHA `X-Api-Key`, Evolution `apikey`, a bot token). Never
    /// shown again.
    key: String,
}

/// The engine's API as shown: its key never is.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ApiView {
    base_url: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewConnector {
    /// Made when absent.
    id: Option<String>,
    /// `waha`, `evolution`, `android-sms-gateway`, `textbee`, `telegram` or `slack`.
    engine: String,
    channel_id: String,
    /// Every session of the engine is this device…
    device_id: Option<String>,
    /// …or each engine key (WAHA session, Evolution instance, the Android app's device id,
    /// textbee device id, Slack team id) is its own device.
    #[serde(default)]
    bindings: BTreeMap<String, String>,
    api: Option<ApiBody>,
    /// How often to ask the engine's API for its status, e.g. `"30s"`.
    poll_interval: Option<String>,
    /// Telegram and Slack messages as `notification` items (they carry no phone number).
    #[serde(default)]
    notifications: bool,
    /// A secret of your own (Slack's signing secret, the Android app's key); one is made
    /// when absent.
    secret: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ConnectorPatch {
    channel_id: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    device_id: Option<Option<String>>,
    bindings: Option<BTreeMap<String, String>>,
    #[serde(default, deserialize_with = "double_option")]
    api: Option<Option<ApiBody>>,
    #[serde(default, deserialize_with = "double_option")]
    poll_interval: Option<Option<String>>,
    notifications: Option<bool>,
}

/// A connector as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ConnectorView {
    id: String,
    engine: String,
    channel_id: String,
    device_id: Option<String>,
    bindings: BTreeMap<String, String>,
    api: Option<ApiView>,
    #[serde(with = "as_duration::option")]
    #[schema(value_type = Option<String>, example = "30s")]
    poll_interval: Option<i64>,
    notifications: bool,
    /// The address to give the engine.
    url: String,
    #[serde(with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    created_at: i64,
    #[serde(with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    updated_at: i64,
    /// Only at creation: the one time the secret is shown.
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
    /// Only at creation: what to paste into the engine.
    #[serde(skip_serializing_if = "Option::is_none")]
    setup: Option<Setup>,
}

/// What a connector took in since the server started.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StatsView {
    stored: u64,
    duplicates: u64,
    states: u64,
    /// Requests refused: not signed with a live secret, or stale.
    rejected: u64,
    /// By reason (see the inbound answer).
    skipped: BTreeMap<&'static str, u64>,
    #[serde(with = "as_rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    last_seen_at: Option<i64>,
    /// The last few skipped requests, newest first, their credentials redacted.
    recent_skipped: Vec<SkippedView>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SkippedView {
    #[serde(with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    at: i64,
    reason: &'static str,
    body: String,
}

/// Kept apart from the connector itself, whose version changes only when someone edits it.
#[utoipa::path(get, path = "/v1/connectors/{id}/stats", tag = "connectors", security(("api_key" = [])),
    params(("id" = String, Path, description = "The connector's id.")),
    responses((status = 200, description = "What it took in since the server started.", body = StatsView)))]
async fn stats(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<StatsView>> {
    let c = state.store.get_connector(account, id.into()).await?;
    let t = state.connector_stats.get(c.id.as_str());
    Ok(Json(StatsView {
        stored: t.stored,
        duplicates: t.duplicates,
        states: t.states,
        rejected: t.rejected,
        skipped: t.skipped,
        last_seen_at: t.last_seen_at,
        recent_skipped: t
            .recent_skipped
            .into_iter()
            .map(|s| SkippedView {
                at: s.at,
                reason: s.reason,
                body: s.body,
            })
            .collect(),
    }))
}

fn view(state: &AppState, headers: &HeaderMap, c: &Connector) -> ConnectorView {
    ConnectorView {
        id: c.id.to_string(),
        engine: c.engine.clone(),
        channel_id: c.channel_id.to_string(),
        device_id: c.device_id.as_ref().map(ToString::to_string),
        bindings: c
            .bindings
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect(),
        api: c.api.as_ref().map(|a| ApiView {
            base_url: a.base_url.clone(),
        }),
        poll_interval: c.poll_interval_ms,
        notifications: c.notifications,
        url: url_of(state, headers, c),
        created_at: c.created_at,
        updated_at: c.updated_at,
        secret: None,
        setup: None,
    }
}

fn engine_of(raw: &str) -> ApiResult<Engine> {
    Engine::parse(raw).ok_or_else(|| {
        let known: Vec<_> = merpati_engines::ENGINES
            .iter()
            .map(|e| e.as_str())
            .collect();
        ApiError::invalid(format!("engine {raw:?} is not one of {}", known.join(", ")))
    })
}

/// What any connector must be, whichever way it was written; its engine.
fn check(c: &Connector) -> ApiResult<Engine> {
    let engine = engine_of(&c.engine)?;
    check_id("channel_id", c.channel_id.as_str())?;
    match (&c.device_id, c.bindings.is_empty()) {
        (Some(_), false) => return Err(ApiError::invalid("give device_id or bindings, not both")),
        (None, true) => return Err(ApiError::invalid(
            "give device_id (every session is that device) or bindings (engine key → device id)",
        )),
        _ => {}
    }
    if let Some(d) = &c.device_id {
        check_id("device_id", d.as_str())?;
    }
    if c.bindings.len() > 1000 {
        return Err(ApiError::invalid("bindings holds at most 1000 keys"));
    }
    for (key, device) in &c.bindings {
        if key.is_empty() || key.len() > 128 {
            return Err(ApiError::invalid("a bindings key is 1 to 128 characters"));
        }
        check_id("bindings", device.as_str())?;
    }
    if let Some(api) = &c.api {
        let parsed = url::Url::parse(&api.base_url)
            .map_err(|_| ApiError::invalid("api.base_url is not a URL"))?;
        if !matches!(parsed.scheme(), "http" | "https") || api.base_url.len() > 2048 {
            return Err(ApiError::invalid(
                "api.base_url must be an http or https URL",
            ));
        }
        if api.key.is_empty() || api.key.len() > 1024 {
            return Err(ApiError::invalid("api.key must be 1 to 1024 characters"));
        }
    }
    if c.api.is_some() && !merpati_engines::status::pollable(engine) {
        return Err(ApiError::invalid(format!(
            "{engine} has no status API to poll: leave api out (its pings keep it alive)"
        )));
    }
    if c.api.is_some() && engine == Engine::Evolution && c.bindings.is_empty() {
        return Err(ApiError::invalid(
            "polling Evolution API asks each instance by name: give bindings",
        ));
    }
    if c.poll_interval_ms.is_some() && c.api.is_none() {
        return Err(ApiError::invalid("poll_interval needs api"));
    }
    if c.notifications && !matches!(engine, Engine::Telegram | Engine::Slack) {
        return Err(ApiError::invalid(
            "notifications is for telegram and slack connectors",
        ));
    }
    Ok(engine)
}

fn poll_interval(raw: Option<&str>) -> ApiResult<Option<i64>> {
    let Some(raw) = raw else { return Ok(None) };
    let d = humantime::parse_duration(raw)
        .map_err(|_| ApiError::invalid(format!("poll_interval {raw:?} is not a duration")))?;
    if d < std::time::Duration::from_secs(5) || d > std::time::Duration::from_secs(3600) {
        return Err(ApiError::invalid("poll_interval must be from 5s to 1h"));
    }
    Ok(Some(d.as_millis() as i64))
}

fn bindings(raw: BTreeMap<String, String>) -> BTreeMap<String, DeviceId> {
    raw.into_iter().map(|(k, v)| (k, v.into())).collect()
}

fn api(raw: Option<ApiBody>) -> Option<EngineApi> {
    raw.map(|a| EngineApi {
        base_url: a.base_url,
        key: a.key,
    })
}

#[utoipa::path(post, path = "/v1/connectors", tag = "connectors", security(("api_key" = [])),
    request_body = NewConnector,
    responses(
        (status = 201, description = "Created: its `url`, its `secret` (shown once) and the `setup` to paste into the engine.", body = ConnectorView),
        (status = 409, description = "A connector with this id exists.", body = ErrorBody),
    ))]
async fn create(
    Account(account): Account,
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<NewConnector>,
) -> ApiResult<(StatusCode, Json<ConnectorView>)> {
    let secret = match body.secret {
        Some(s) => {
            check_secret(&s)?;
            s
        }
        None => new_secret(),
    };
    let now = state.clock.now_ms();
    let c = Connector {
        id: id_or_new("id", body.id, ConnectorId::generate, ConnectorId::parse)?,
        account_id: account,
        engine: body.engine,
        channel_id: body.channel_id.into(),
        device_id: body.device_id.map(DeviceId::from),
        bindings: bindings(body.bindings),
        api: api(body.api),
        poll_interval_ms: poll_interval(body.poll_interval.as_deref())?,
        notifications: body.notifications,
        created_at: now,
        updated_at: now,
        revision: 0,
    };
    let engine = check(&c)?;
    let c = state.store.create_connector(c, secret.clone()).await?;
    state.connectors_changed.notify_one();
    let mut out = view(&state, &headers, &c);
    out.setup = Some(setup::setup(engine, &out.url, &secret));
    out.secret = Some(secret);
    Ok((StatusCode::CREATED, Json(out)))
}

#[utoipa::path(get, path = "/v1/connectors", tag = "connectors", security(("api_key" = [])),
    responses((status = 200, description = "Every connector of the account.", body = Listed<ConnectorView>)))]
async fn list(
    Account(account): Account,
    State(state): State<AppState>,
    headers: HeaderMap,
) -> ApiResult<Json<Listed<ConnectorView>>> {
    let all = state.store.list_connectors(account).await?;
    Ok(Listed::all(
        all.iter().map(|c| view(&state, &headers, c)).collect(),
    ))
}

#[utoipa::path(get, path = "/v1/connectors/{id}", tag = "connectors", security(("api_key" = [])),
    params(("id" = String, Path, description = "The connector's id."), IfNoneMatchHeader),
    responses((status = 200, description = "The connector.", body = ConnectorView)))]
async fn read(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let c = state.store.get_connector(account, id.into()).await?;
    Ok(revision::read(&headers, view(&state, &headers, &c)))
}

#[utoipa::path(patch, path = "/v1/connectors/{id}", tag = "connectors", security(("api_key" = [])),
    params(("id" = String, Path, description = "The connector's id."), IfMatchHeader),
    request_body = ConnectorPatch,
    responses((status = 200, description = "Changed.", body = ConnectorView)))]
async fn update(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    if_match: IfMatch,
    JsonBody(patch): JsonBody<ConnectorPatch>,
) -> ApiResult<Response> {
    let id = ConnectorId::from(id);
    let interval = match &patch.poll_interval {
        Some(raw) => Some(poll_interval(raw.as_deref())?),
        None => None,
    };
    let response = revision::patch(
        &if_match,
        "connector",
        || state.store.get_connector(account.clone(), id.clone()),
        |c: &Connector| view(&state, &headers, c),
        |c: &mut Connector| {
            if let Some(ch) = &patch.channel_id {
                c.channel_id = ch.clone().into();
            }
            if let Some(d) = &patch.device_id {
                c.device_id = d.clone().map(DeviceId::from);
            }
            if let Some(b) = &patch.bindings {
                c.bindings = bindings(b.clone());
            }
            if let Some(a) = &patch.api {
                c.api = api(a.clone());
            }
            if let Some(i) = interval {
                c.poll_interval_ms = i;
            }
            if let Some(n) = patch.notifications {
                c.notifications = n;
            }
            check(c)?;
            c.updated_at = state.clock.now_ms();
            Ok(())
        },
        |c, _| async { revision::saved(state.store.update_connector(c).await) },
    )
    .await?;
    state.connectors_changed.notify_one();
    Ok(response)
}

#[utoipa::path(delete, path = "/v1/connectors/{id}", tag = "connectors", security(("api_key" = [])),
    params(("id" = String, Path, description = "The connector's id.")),
    responses((status = 204, description = "Deleted: its URL takes nothing from now on.")))]
async fn remove(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = ConnectorId::from(id);
    state.store.delete_connector(account, id.clone()).await?;
    state.connector_stats.forget(id.as_str());
    state.connectors_changed.notify_one();
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ConnectorSecretRotation {
    /// The new secret; one is made when absent.
    secret: Option<String>,
    /// How long the current secrets keep verifying, e.g. `"1h"`; `"0s"` drops them at once.
    grace: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct ConnectorSecret {
    connector_id: String,
    /// The new secret, shown this once.
    secret: String,
    /// Until when the previous secrets still verify.
    #[serde(with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    previous_secrets_expire_at: i64,
    /// The engine's setup with the new secret.
    setup: Setup,
}

#[utoipa::path(post, path = "/v1/connectors/{id}/secret/rotate", tag = "connectors", security(("api_key" = [])),
    params(("id" = String, Path, description = "The connector's id.")),
    request_body(content = Option<ConnectorSecretRotation>, description = "Optional: the new secret and the grace."),
    responses((status = 200, description = "The new secret; the previous ones verify alongside it until their grace ends.", body = ConnectorSecret)))]
async fn rotate_secret(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    OptionalJsonBody(body): OptionalJsonBody<ConnectorSecretRotation>,
) -> ApiResult<Json<ConnectorSecret>> {
    let secret = match body.secret {
        Some(s) => {
            check_secret(&s)?;
            s
        }
        None => new_secret(),
    };
    let now = state.clock.now_ms();
    let expires = rotation_expiry(
        body.grace.as_deref(),
        state.config.delivery.secret_rotation_grace,
        now,
    )?;
    let id = ConnectorId::from(id);
    let c = state
        .store
        .get_connector(account.clone(), id.clone())
        .await?;
    state
        .store
        .rotate_connector_secret(account, id.clone(), secret.clone(), expires, now)
        .await?;
    let url = url_of(&state, &headers, &c);
    Ok(Json(ConnectorSecret {
        connector_id: id.to_string(),
        setup: setup::setup(engine_of(&c.engine)?, &url, &secret),
        secret,
        previous_secrets_expire_at: expires,
    }))
}
