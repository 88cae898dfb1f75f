//! Endpoints: an account's webhook subscriptions (URL, secrets, event and scope filters,
//! body format and options), and which events each one receives.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use merpati_webhooks::events::{is_known_type_pattern, type_matches};
use merpati_webhooks::signing::{encode_secret, is_valid_secret};
use serde::{Deserialize, Serialize};

use crate::api::extract::{Account, JsonBody, OptionalJsonBody, Query};
use crate::api::{
    check_id, double_option, list_response, ApiError, ApiResult, AppState, PageQuery,
};
use crate::clock::{as_rfc3339, rfc3339};
use crate::delivery::guard::Guard;
use crate::ids;
use crate::store::{Page, StoreResult};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BodyFormat {
    Json,
    Form,
}

impl BodyFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            BodyFormat::Json => "json",
            BodyFormat::Form => "form",
        }
    }
    pub fn parse(s: &str) -> Option<BodyFormat> {
        match s {
            "json" => Some(BodyFormat::Json),
            "form" => Some(BodyFormat::Form),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Endpoint {
    pub id: String,
    pub url: String,
    pub description: Option<String>,
    /// Types or wildcards (`device.*`); `None` means every type.
    pub events: Option<Vec<String>>,
    /// Scope filters: an empty list means no restriction.
    pub business_ids: Vec<String>,
    pub channel_ids: Vec<String>,
    pub device_ids: Vec<String>,
    pub format: BodyFormat,
    /// Also put the secret in the body (`"secret"` at top level), the legacy check.
    pub secret_in_body: bool,
    /// Extra request headers.
    pub headers: BTreeMap<String, String>,
    /// `device`: each device's events in order, one at a time.
    pub ordering: Option<String>,
    /// Requests under way at once; `None` for the configured default.
    pub max_concurrency: Option<u32>,
    /// Requests per second; `None` for no limit.
    pub rate_limit: Option<u32>,
    pub disabled: bool,
    /// `gone` (answered 410), `failing` (failed without pause too long) or `manual`.
    pub disabled_reason: Option<String>,
    #[serde(with = "as_rfc3339::option")]
    pub disabled_at: Option<i64>,
    /// Since when every attempt has failed, while that lasts.
    #[serde(with = "as_rfc3339::option")]
    pub failing_since: Option<i64>,
    /// Until when its circuit breaker pauses it (one probe goes then), while it does.
    #[serde(with = "as_rfc3339::option")]
    pub paused_until: Option<i64>,
    #[serde(with = "as_rfc3339")]
    pub created_at: i64,
    #[serde(with = "as_rfc3339")]
    pub updated_at: i64,
}

/// What fan-out needs to know of an endpoint to decide whether an event goes to it.
#[derive(Debug, Clone, Default)]
pub struct Subscription {
    pub endpoint_id: String,
    pub events: Option<Vec<String>>,
    pub business_ids: Vec<String>,
    pub channel_ids: Vec<String>,
    pub device_ids: Vec<String>,
    /// `ordering: "device"`: deliveries queue per device.
    pub ordered: bool,
    pub disabled: bool,
}

/// Where an event happened, for the scope filters.
#[derive(Debug, Clone, Copy, Default)]
pub struct Scope<'a> {
    pub business_id: Option<&'a str>,
    pub channel_id: Option<&'a str>,
    pub device_id: Option<&'a str>,
}

impl Subscription {
    pub fn matches(&self, event_type: &str, scope: Scope<'_>) -> bool {
        let type_ok = match &self.events {
            None => true,
            Some(patterns) => patterns.iter().any(|p| type_matches(p, event_type)),
        };
        let within = |filter: &[String], id: Option<&str>| {
            filter.is_empty() || id.is_some_and(|id| filter.iter().any(|f| f == id))
        };
        type_ok
            && within(&self.business_ids, scope.business_id)
            && within(&self.channel_ids, scope.channel_id)
            && within(&self.device_ids, scope.device_id)
    }
}

#[async_trait::async_trait]
pub trait EndpointStore: Send + Sync {
    /// Invalid when a scope id is not the account's.
    async fn create_endpoint(
        &self,
        account: String,
        e: Endpoint,
        secret: String,
    ) -> StoreResult<Endpoint>;
    async fn list_endpoints(&self, account: String, page: Page) -> StoreResult<Vec<Endpoint>>;
    async fn get_endpoint(&self, account: String, id: String) -> StoreResult<Endpoint>;
    async fn update_endpoint(&self, account: String, e: Endpoint) -> StoreResult<Endpoint>;
    /// Disabling holds its pending deliveries; enabling releases the held ones (returns how
    /// many are due again).
    async fn set_endpoint_enabled(
        &self,
        account: String,
        id: String,
        enabled: bool,
        now: i64,
    ) -> StoreResult<usize>;
    /// Gone at once from every view and from fan-out; its deliveries, whatever their
    /// outcome, and their attempts go later, through `purge_deleted_endpoint`.
    async fn delete_endpoint(&self, account: String, id: String, now: i64) -> StoreResult<()>;
    /// Removes up to `limit` rows of a deleted endpoint (its deliveries, then itself);
    /// returns how many, 0 once no deleted endpoint is left.
    async fn purge_deleted_endpoint(&self, limit: usize) -> StoreResult<usize>;
    /// `new_secret` signs from now on; the current ones keep signing until `old_expires_at`.
    async fn rotate_endpoint_secret(
        &self,
        account: String,
        id: String,
        new_secret: String,
        old_expires_at: i64,
        now: i64,
    ) -> StoreResult<()>;
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/endpoints", get(list).post(create))
        .route("/v1/endpoints/{id}", get(read).patch(update).delete(remove))
        .route("/v1/endpoints/{id}/secret/rotate", post(rotate_secret))
}

pub const MAX_URL_BYTES: usize = 2048;
const MAX_HEADERS: usize = 32;
const MAX_FILTER_ITEMS: usize = 256;
const MAX_CONCURRENCY: u32 = 1024;
const MAX_RATE_LIMIT: u32 = 100_000;
/// Headers merpati sets itself, which an endpoint may not override.
const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "host",
    "connection",
    "transfer-encoding",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewEndpoint {
    url: String,
    description: Option<String>,
    events: Option<Vec<String>>,
    #[serde(default)]
    business_ids: Vec<String>,
    #[serde(default)]
    channel_ids: Vec<String>,
    #[serde(default)]
    device_ids: Vec<String>,
    format: Option<BodyFormat>,
    #[serde(default)]
    secret_in_body: bool,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    ordering: Option<String>,
    max_concurrency: Option<u32>,
    rate_limit: Option<u32>,
    /// A secret of the caller's own (`whsec_…`); one is made when absent.
    secret: Option<String>,
    #[serde(default)]
    disabled: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointPatch {
    url: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    description: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    events: Option<Option<Vec<String>>>,
    business_ids: Option<Vec<String>>,
    channel_ids: Option<Vec<String>>,
    device_ids: Option<Vec<String>>,
    format: Option<BodyFormat>,
    secret_in_body: Option<bool>,
    headers: Option<BTreeMap<String, String>>,
    #[serde(default, deserialize_with = "double_option")]
    ordering: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    max_concurrency: Option<Option<u32>>,
    #[serde(default, deserialize_with = "double_option")]
    rate_limit: Option<Option<u32>>,
    disabled: Option<bool>,
}

/// An endpoint URL: http(s), a host, no credentials, and not an address the private-address
/// guard refuses.
pub fn check_url_allowed(raw: &str, guard: &Guard) -> ApiResult<()> {
    check_url(raw)?;
    let url =
        url::Url::parse(raw).map_err(|e| ApiError::invalid(format!("url is not valid: {e}")))?;
    guard.check_url_host(&url).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "forbidden_address",
            format!("url: {e}"),
        )
    })
}

/// An endpoint URL: http(s), a host, no credentials.
pub fn check_url(raw: &str) -> ApiResult<()> {
    if raw.len() > MAX_URL_BYTES {
        return Err(ApiError::invalid(format!(
            "url must be at most {MAX_URL_BYTES} bytes"
        )));
    }
    let url =
        url::Url::parse(raw).map_err(|e| ApiError::invalid(format!("url is not valid: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ApiError::invalid("url must be http or https"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ApiError::invalid(
            "url must not carry credentials; use headers or the signature instead",
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(ApiError::invalid("url must have a host"));
    }
    Ok(())
}

fn check_endpoint(e: &Endpoint, guard: &Guard) -> ApiResult<()> {
    check_url_allowed(&e.url, guard)?;
    if let Some(d) = &e.description {
        if d.chars().count() > 1024 {
            return Err(ApiError::invalid(
                "description must be at most 1024 characters",
            ));
        }
    }
    if let Some(events) = &e.events {
        if events.is_empty() {
            return Err(ApiError::invalid(
                "events must name at least one type; leave it out for every type",
            ));
        }
        if let Some(unknown) = events.iter().find(|p| !is_known_type_pattern(p)) {
            return Err(ApiError::invalid(format!(
                "events: unknown event type {unknown:?}; known are {}",
                merpati_webhooks::EVENT_TYPES.join(", ")
            )));
        }
    }
    for (field, list) in [
        ("business_ids", &e.business_ids),
        ("channel_ids", &e.channel_ids),
        ("device_ids", &e.device_ids),
    ] {
        if list.len() > MAX_FILTER_ITEMS {
            return Err(ApiError::invalid(format!(
                "{field} may hold at most {MAX_FILTER_ITEMS} ids"
            )));
        }
        for id in list {
            check_id(field, id)?;
        }
    }
    if e.headers.len() > MAX_HEADERS {
        return Err(ApiError::invalid(format!("at most {MAX_HEADERS} headers")));
    }
    for (name, value) in &e.headers {
        let parsed = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| ApiError::invalid(format!("headers: {name:?} is not a header name")))?;
        if RESERVED_HEADERS.contains(&parsed.as_str()) {
            return Err(ApiError::invalid(format!(
                "headers: {name:?} is set by merpati and cannot be overridden"
            )));
        }
        HeaderValue::from_str(value).map_err(|_| {
            ApiError::invalid(format!("headers: the value of {name:?} is not valid"))
        })?;
    }
    match e.ordering.as_deref() {
        None => {}
        Some("device") => {}
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "ordering must be \"device\" or absent, not {other:?}"
            )))
        }
    }
    if e.max_concurrency
        .is_some_and(|n| !(1..=MAX_CONCURRENCY).contains(&n))
    {
        return Err(ApiError::invalid(format!(
            "max_concurrency must be from 1 to {MAX_CONCURRENCY}"
        )));
    }
    if e.rate_limit
        .is_some_and(|n| !(1..=MAX_RATE_LIMIT).contains(&n))
    {
        return Err(ApiError::invalid(format!(
            "rate_limit must be from 1 to {MAX_RATE_LIMIT} requests per second"
        )));
    }
    Ok(())
}

fn guard_of(state: &AppState) -> Guard {
    Guard::new(state.config.delivery.allowed_networks.clone())
}

fn new_secret() -> String {
    encode_secret(&rand::random::<[u8; 24]>())
}

async fn create(
    Account(account): Account,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<NewEndpoint>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let now = state.clock.now_ms();
    let secret = match body.secret {
        Some(s) if is_valid_secret(&s) => s,
        Some(_) => {
            return Err(ApiError::invalid(
                "secret must be \"whsec_\" followed by base64 of 24 to 64 bytes",
            ))
        }
        None => new_secret(),
    };
    if secret.len() > 128 {
        return Err(ApiError::invalid("secret is too long"));
    }
    let e = Endpoint {
        id: ids::new_id("ep"),
        url: body.url,
        description: body.description,
        events: body.events,
        business_ids: body.business_ids,
        channel_ids: body.channel_ids,
        device_ids: body.device_ids,
        format: body.format.unwrap_or(BodyFormat::Json),
        secret_in_body: body.secret_in_body,
        headers: body.headers,
        ordering: body.ordering,
        max_concurrency: body.max_concurrency,
        rate_limit: body.rate_limit,
        disabled: body.disabled,
        disabled_reason: body.disabled.then(|| "manual".to_string()),
        disabled_at: body.disabled.then_some(now),
        failing_since: None,
        paused_until: None,
        created_at: now,
        updated_at: now,
    };
    check_endpoint(&e, &guard_of(&state))?;
    let e = state
        .store
        .create_endpoint(account, e, secret.clone())
        .await?;
    let mut out = serde_json::to_value(&e).expect("endpoints serialize");
    out["secret"] = secret.into();
    Ok((StatusCode::CREATED, Json(out)))
}

async fn list(
    Account(account): Account,
    State(state): State<AppState>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let page = q.page()?;
    let items: Vec<Endpoint> = state
        .store
        .list_endpoints(account, page.clone())
        .await?
        .into_iter()
        .map(|e| with_pause(&state, e))
        .collect();
    Ok(list_response(items, &page, |e| e.id.clone()))
}

async fn read(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Endpoint>> {
    let e = state.store.get_endpoint(account, id).await?;
    Ok(Json(with_pause(&state, e)))
}

/// The breaker's pause, while it lasts.
fn with_pause(state: &AppState, mut e: Endpoint) -> Endpoint {
    let now = state.clock.now_ms();
    e.paused_until = state.pauses.until(&e.id).filter(|until| *until > now);
    e
}

async fn update(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(p): JsonBody<EndpointPatch>,
) -> ApiResult<Json<Endpoint>> {
    let mut e = state.store.get_endpoint(account.clone(), id).await?;
    if let Some(v) = p.url {
        e.url = v;
    }
    if let Some(v) = p.description {
        e.description = v;
    }
    if let Some(v) = p.events {
        e.events = v;
    }
    if let Some(v) = p.business_ids {
        e.business_ids = v;
    }
    if let Some(v) = p.channel_ids {
        e.channel_ids = v;
    }
    if let Some(v) = p.device_ids {
        e.device_ids = v;
    }
    if let Some(v) = p.format {
        e.format = v;
    }
    if let Some(v) = p.secret_in_body {
        e.secret_in_body = v;
    }
    if let Some(v) = p.headers {
        e.headers = v;
    }
    if let Some(v) = p.ordering {
        e.ordering = v;
    }
    if let Some(v) = p.max_concurrency {
        e.max_concurrency = v;
    }
    if let Some(v) = p.rate_limit {
        e.rate_limit = v;
    }
    let enable = p
        .disabled
        .map(|d| !d)
        .filter(|enable| *enable == e.disabled);
    check_endpoint(&e, &guard_of(&state))?;
    let now = state.clock.now_ms();
    e.updated_at = now;
    let id = e.id.clone();
    state.store.update_endpoint(account.clone(), e).await?;
    // Switching ordering off may have made waiting deliveries due.
    state.delivery.wake();
    if let Some(enable) = enable {
        let released = state
            .store
            .set_endpoint_enabled(account.clone(), id.clone(), enable, now)
            .await?;
        if released > 0 {
            state.delivery.wake();
        }
    }
    let e = state.store.get_endpoint(account, id).await?;
    Ok(Json(with_pause(&state, e)))
}

async fn remove(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let now = state.clock.now_ms();
    state
        .store
        .delete_endpoint(account, id.clone(), now)
        .await?;
    state.handoff.endpoint_deleted(id);
    state.purge.notify_one();
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RotateSecret {
    /// The new secret; one is made when absent.
    secret: Option<String>,
    /// How long the current secrets keep signing, e.g. `"1h"`; `"0s"` drops them at once.
    grace: Option<String>,
}

async fn rotate_secret(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
    OptionalJsonBody(body): OptionalJsonBody<RotateSecret>,
) -> ApiResult<Json<serde_json::Value>> {
    let secret = match body.secret {
        Some(s) if is_valid_secret(&s) && s.len() <= 128 => s,
        Some(_) => {
            return Err(ApiError::invalid(
                "secret must be \"whsec_\" followed by base64",
            ))
        }
        None => new_secret(),
    };
    let grace = match body.grace {
        Some(g) => humantime::parse_duration(&g)
            .map_err(|_| ApiError::invalid(format!("grace {g:?} is not a duration like \"1h\"")))?,
        None => state.config.delivery.secret_rotation_grace,
    };
    let now = state.clock.now_ms();
    let old_expires_at = now + grace.as_millis() as i64;
    state
        .store
        .rotate_endpoint_secret(account, id.clone(), secret.clone(), old_expires_at, now)
        .await?;
    Ok(Json(serde_json::json!({
        "endpoint_id": id,
        "secret": secret,
        "previous_secrets_expire_at": rfc3339(old_expires_at),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(events: Option<&[&str]>, channels: &[&str]) -> Subscription {
        Subscription {
            events: events.map(|e| e.iter().map(|s| s.to_string()).collect()),
            channel_ids: channels.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn no_filter_matches_everything() {
        assert!(sub(None, &[]).matches("sms", Scope::default()));
    }

    #[test]
    fn type_filters_and_wildcards() {
        let s = sub(Some(&["device.*", "ussd"]), &[]);
        assert!(s.matches("device.disconnected", Scope::default()));
        assert!(s.matches("ussd", Scope::default()));
        assert!(!s.matches("sms", Scope::default()));
    }

    #[test]
    fn scope_filters_need_the_event_to_be_inside() {
        let s = sub(None, &["ch_1"]);
        let inside = Scope {
            channel_id: Some("ch_1"),
            ..Default::default()
        };
        let outside = Scope {
            channel_id: Some("ch_2"),
            ..Default::default()
        };
        assert!(s.matches("sms", inside));
        assert!(!s.matches("sms", outside));
        assert!(!s.matches("sms", Scope::default()));
    }

    #[test]
    fn urls_are_checked() {
        assert!(check_url("https://example.com/hook").is_ok());
        assert!(check_url("http://127.0.0.1:9000/").is_ok());
        assert!(check_url("ftp://example.com/").is_err());
        assert!(check_url("https://user:pw@example.com/").is_err());
        assert!(check_url("https://user@example.com/").is_err());
        assert!(check_url("not a url").is_err());
        assert!(check_url(&format!("https://e.com/{}", "a".repeat(3000))).is_err());
    }
}
