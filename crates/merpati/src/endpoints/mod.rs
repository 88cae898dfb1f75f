//! Endpoints: an account's webhook subscriptions (URL, secrets, event and scope filters,
//! body format and options). Which events each one receives is the domain's rule
//! (`Subscription::matches`); what an endpoint may be is checked in `validate`.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use merpati_domain::endpoint::{BodyFormat, DisableReason, Endpoint, Ordering};
use merpati_domain::ids::{BusinessId, ChannelId, DeviceId, EndpointId};
use merpati_runtime::bus::{Change, EndpointState};
use merpati_runtime::delivery::guard::Guard;
use merpati_webhooks::signing::{encode_secret, is_valid_secret};
use serde::{Deserialize, Serialize};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::api::extract::{Account, JsonBody, OptionalJsonBody, Query};
use crate::api::openapi::{ErrorBody, IfMatchHeader, IfNoneMatchHeader};
use crate::api::paging::{list_response, Listed, PageQuery};
use crate::api::revision::{self, IfMatch};
use crate::api::time::as_rfc3339;
use crate::api::validate::{double_option, rotation_expiry};
use crate::api::{ApiError, ApiResult, AppState};

mod stats;
mod validate;
mod views;

pub use validate::{check_url, check_url_allowed, MAX_URL_BYTES};
pub use views::EndpointView;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(read, update, remove))
        .routes(routes!(rotate_secret))
        .routes(routes!(stats::stats))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewEndpoint {
    /// An http(s) URL, or `mailto:a@example.com[,b@example.com]` for each event by e-mail
    /// (with the server's SMTP settings).
    url: String,
    description: Option<String>,
    events: Option<Vec<String>>,
    #[serde(default)]
    business_ids: Vec<String>,
    #[serde(default)]
    channel_ids: Vec<String>,
    #[serde(default)]
    device_ids: Vec<String>,
    format: Option<Format>,
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

#[derive(Deserialize, utoipa::ToSchema)]
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
    format: Option<Format>,
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

/// `format` as requests give it.
#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
enum Format {
    Json,
    Form,
}

impl From<Format> for BodyFormat {
    fn from(f: Format) -> BodyFormat {
        match f {
            Format::Json => BodyFormat::Json,
            Format::Form => BodyFormat::Form,
        }
    }
}

/// `ordering`: `"device"` or absent.
fn ordering(raw: Option<String>) -> ApiResult<Option<Ordering>> {
    match raw {
        None => Ok(None),
        Some(s) => Ordering::parse(&s).map(Some).ok_or_else(|| {
            ApiError::invalid(format!("ordering must be \"device\" or absent, not {s:?}"))
        }),
    }
}

fn ids<T: From<String>>(raw: Vec<String>) -> Vec<T> {
    raw.into_iter().map(T::from).collect()
}

fn guard_of(state: &AppState) -> Guard {
    Guard::new(state.config.delivery.allowed_networks.clone())
}

fn can_mail(state: &AppState) -> bool {
    state.config.alerts.smtp_url.is_some() && state.config.alerts.smtp_from.is_some()
}

fn new_secret() -> String {
    encode_secret(&rand::random::<[u8; 24]>())
}

/// The endpoint with the breaker's pause, while it lasts.
fn view(state: &AppState, e: &Endpoint) -> EndpointView {
    EndpointView::new(e, paused_until(state, e))
}

/// Until when the endpoint's breaker pauses it: as its lane here knows it when this node
/// owns its slot, else as its owner last kept it.
pub(crate) fn paused_until(state: &AppState, e: &Endpoint) -> Option<i64> {
    let now = state.clock.now_ms();
    let until = if state.ownership.takes(&e.id) {
        state.pauses.until(&e.id)
    } else {
        e.paused_until
    };
    until.filter(|until| *until > now)
}

#[utoipa::path(post, path = "/v1/endpoints", tag = "endpoints", security(("api_key" = [])),
    request_body = NewEndpoint,
    responses(
        (status = 201, description = "Created.", body = EndpointView),
        (status = 409, description = "The account has as many endpoints as its limit (`limit_reached`).", body = ErrorBody),
    ))]
async fn create(
    Account(account): Account,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<NewEndpoint>,
) -> ApiResult<(StatusCode, Json<EndpointView>)> {
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
        id: EndpointId::generate(),
        url: body.url,
        description: body.description,
        events: body.events,
        business_ids: ids::<BusinessId>(body.business_ids),
        channel_ids: ids::<ChannelId>(body.channel_ids),
        device_ids: ids::<DeviceId>(body.device_ids),
        format: body.format.map_or(BodyFormat::Json, BodyFormat::from),
        secret_in_body: body.secret_in_body,
        headers: body.headers,
        ordering: ordering(body.ordering)?,
        max_concurrency: body.max_concurrency,
        rate_limit: body.rate_limit,
        disabled: body.disabled,
        disabled_reason: body.disabled.then_some(DisableReason::Manual),
        disabled_at: body.disabled.then_some(now),
        failing_since: None,
        paused_until: None,
        created_at: now,
        updated_at: now,
        revision: 0,
    };
    validate::check_endpoint(&e, &guard_of(&state), can_mail(&state))?;
    let cap = state.limits_of(&account).await?.max_endpoints;
    let e = state
        .store
        .create_endpoint(account, e, secret.clone(), cap)
        .await?;
    let mut out = view(&state, &e);
    out.secret = Some(secret);
    Ok((StatusCode::CREATED, Json(out)))
}

#[utoipa::path(get, path = "/v1/endpoints", tag = "endpoints", security(("api_key" = [])),
    params(PageQuery),
    responses((status = 200, description = "A page of endpoints.", body = Listed<EndpointView>)))]
async fn list(
    Account(account): Account,
    State(state): State<AppState>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<Listed<EndpointView>>> {
    let page = q.page()?;
    let items: Vec<EndpointView> = state
        .store
        .list_endpoints(account, page.clone())
        .await?
        .iter()
        .map(|e| view(&state, e))
        .collect();
    Ok(list_response(items, &page, |e| e.id.to_string()))
}

#[utoipa::path(get, path = "/v1/endpoints/{id}", tag = "endpoints", security(("api_key" = [])),
    params(("id" = String, Path, description = "The endpoint's id."), IfNoneMatchHeader),
    responses((status = 200, description = "The endpoint, with its `ETag`.", body = EndpointView)))]
async fn read(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let e = state.store.get_endpoint(account, id.into()).await?;
    Ok(revision::read(&headers, view(&state, &e)))
}

impl EndpointPatch {
    fn apply(&self, e: &mut Endpoint) -> ApiResult<()> {
        if let Some(v) = &self.url {
            e.url = v.clone();
        }
        if let Some(v) = &self.description {
            e.description = v.clone();
        }
        if let Some(v) = &self.events {
            e.events = v.clone();
        }
        if let Some(v) = &self.business_ids {
            e.business_ids = ids(v.clone());
        }
        if let Some(v) = &self.channel_ids {
            e.channel_ids = ids(v.clone());
        }
        if let Some(v) = &self.device_ids {
            e.device_ids = ids(v.clone());
        }
        if let Some(v) = self.format {
            e.format = v.into();
        }
        if let Some(v) = self.secret_in_body {
            e.secret_in_body = v;
        }
        if let Some(v) = &self.headers {
            e.headers = v.clone();
        }
        if let Some(v) = &self.ordering {
            e.ordering = ordering(v.clone())?;
        }
        if let Some(v) = self.max_concurrency {
            e.max_concurrency = v;
        }
        if let Some(v) = self.rate_limit {
            e.rate_limit = v;
        }
        if let Some(disabled) = self.disabled {
            e.disabled = disabled;
        }
        Ok(())
    }
}

#[utoipa::path(patch, path = "/v1/endpoints/{id}", tag = "endpoints", security(("api_key" = [])),
    params(("id" = String, Path, description = "The endpoint's id."), IfMatchHeader),
    request_body = EndpointPatch,
    responses((status = 200, description = "Changed.", body = EndpointView)))]
async fn update(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
    if_match: IfMatch,
    JsonBody(patch): JsonBody<EndpointPatch>,
) -> ApiResult<Response> {
    let id = EndpointId::from(id);
    let guard = guard_of(&state);
    revision::patch(
        &if_match,
        "endpoint",
        || state.store.get_endpoint(account.clone(), id.clone()),
        |e: &Endpoint| view(&state, e),
        |e: &mut Endpoint| {
            patch.apply(e)?;
            validate::check_endpoint(e, &guard, can_mail(&state))?;
            e.updated_at = state.clock.now_ms();
            Ok(())
        },
        |e, was| save(&state, &account, e, was),
    )
    .await
}

/// Stores a patched endpoint (`was` as it was read), then enables or disables it if the
/// patch asked for that.
async fn save(
    state: &AppState,
    account: &merpati_domain::ids::AccountId,
    e: Endpoint,
    was: Endpoint,
) -> ApiResult<Endpoint> {
    let (id, now, enable) = (e.id.clone(), e.updated_at, !e.disabled);
    let switch = (e.disabled != was.disabled).then_some(enable);
    revision::saved(state.store.update_endpoint(account.clone(), e).await)?;
    // Switching ordering off may have made waiting deliveries due.
    state.delivery.wake();
    if let Some(enable) = switch {
        let released = state
            .store
            .set_endpoint_enabled(account.clone(), id.clone(), enable, now)
            .await?;
        if released > 0 {
            state.delivery.wake();
        }
        let change = if enable {
            EndpointState::Enabled
        } else {
            EndpointState::Disabled(DisableReason::Manual)
        };
        state.bus.publish_with(|| Change::Endpoint {
            account: account.clone(),
            endpoint: id.clone(),
            state: change,
        });
    }
    Ok(state.store.get_endpoint(account.clone(), id).await?)
}

#[utoipa::path(delete, path = "/v1/endpoints/{id}", tag = "endpoints", security(("api_key" = [])),
    params(("id" = String, Path, description = "The endpoint's id.")),
    responses((status = 204, description = "Deleted: nothing more is sent to it; its deliveries are purged after."),))]
async fn remove(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = EndpointId::from(id);
    let now = state.clock.now_ms();
    state
        .store
        .delete_endpoint(account, id.clone(), now)
        .await?;
    state.handoff.endpoint_deleted(id);
    state.purge.notify_one();
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RotateSecret {
    /// The new secret; one is made when absent.
    secret: Option<String>,
    /// How long the current secrets keep signing, e.g. `"1h"`; `"0s"` drops them at once.
    grace: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct RotatedSecret {
    endpoint_id: String,
    /// The new secret (`whsec_…`), shown this once.
    secret: String,
    /// Until when the previous secrets still sign, next to the new one.
    #[serde(with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    previous_secrets_expire_at: i64,
}

#[utoipa::path(post, path = "/v1/endpoints/{id}/secret/rotate", tag = "endpoints", security(("api_key" = [])),
    params(("id" = String, Path, description = "The endpoint's id.")),
    request_body(content = Option<RotateSecret>, description = "Optional: the new secret and the grace; an empty body makes a secret and keeps the configured grace."),
    responses((status = 200, description = "The new secret, shown this once; the previous ones sign alongside it until their grace ends.", body = RotatedSecret)))]
async fn rotate_secret(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
    OptionalJsonBody(body): OptionalJsonBody<RotateSecret>,
) -> ApiResult<Json<RotatedSecret>> {
    let secret = match body.secret {
        Some(s) if is_valid_secret(&s) && s.len() <= 128 => s,
        Some(_) => {
            return Err(ApiError::invalid(
                "secret must be \"whsec_\" followed by base64",
            ))
        }
        None => new_secret(),
    };
    let now = state.clock.now_ms();
    let old_expires_at = rotation_expiry(
        body.grace.as_deref(),
        state.config.delivery.secret_rotation_grace,
        now,
    )?;
    state
        .store
        .rotate_endpoint_secret(
            account,
            id.clone().into(),
            secret.clone(),
            old_expires_at,
            now,
        )
        .await?;
    Ok(Json(RotatedSecret {
        endpoint_id: id,
        secret,
        previous_secrets_expire_at: old_expires_at,
    }))
}
