//! The event log of an account: listing with filters and cursors, one event with every
//! delivery and attempt, resending a delivery and replaying an event.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use merpati_domain::event::{Attempt, DeliveryDetail, EventDetail, EventFilter, EventSummary};
use merpati_domain::ids::{self, BusinessId, ChannelId, DeliveryId, DeviceId, EndpointId, EventId};
use serde::{Deserialize, Serialize};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::api::extract::{Account, OptionalJsonBody, Query};
use crate::api::openapi::ErrorBody;
use crate::api::paging::{page_limit, parse_cursor, Listed};
use crate::api::time::as_rfc3339;
use crate::api::validate::{check_id, parse_id, parse_time};
use crate::api::{ApiError, ApiResult, AppState};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(read))
        .routes(routes!(replay))
        .routes(routes!(resend))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventSummaryView {
    #[schema(value_type = String)]
    pub id: EventId,
    #[serde(rename = "type")]
    pub event_type: String,
    #[schema(value_type = Option<String>)]
    pub device_id: Option<DeviceId>,
    #[schema(value_type = Option<String>)]
    pub channel_id: Option<ChannelId>,
    #[schema(value_type = Option<String>)]
    pub business_id: Option<BusinessId>,
    #[serde(with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
}

impl From<&EventSummary> for EventSummaryView {
    fn from(e: &EventSummary) -> Self {
        EventSummaryView {
            id: e.id.clone(),
            event_type: e.event_type.clone(),
            device_id: e.device_id.clone(),
            channel_id: e.channel_id.clone(),
            business_id: e.business_id.clone(),
            created_at: e.created_at,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventView {
    #[serde(flatten)]
    pub summary: EventSummaryView,
    /// The body as delivered (in JSON; form endpoints get the same fields form-encoded).
    pub payload: serde_json::Value,
    pub deliveries: Vec<DeliveryView>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryView {
    #[schema(value_type = i64)]
    pub id: DeliveryId,
    #[schema(value_type = String)]
    pub endpoint_id: EndpointId,
    /// `pending`, `held` (endpoint disabled), `succeeded` or `failed`.
    pub status: &'static str,
    pub attempt_count: i64,
    #[serde(with = "as_rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub next_attempt_at: Option<i64>,
    #[serde(with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    #[serde(with = "as_rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub completed_at: Option<i64>,
    pub attempts: Vec<AttemptView>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AttemptView {
    pub attempt: i64,
    #[serde(with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub started_at: i64,
    pub duration_ms: i64,
    pub status_code: Option<u16>,
    /// Why it failed without an answer, or with a non-2xx one: `http_status`, `timeout`,
    /// `connect`, `redirect`, …
    pub error_kind: Option<String>,
    pub error: Option<String>,
    /// The first 4 KiB of the answer.
    pub response_body: Option<String>,
}

impl From<EventDetail> for EventView {
    fn from(e: EventDetail) -> Self {
        EventView {
            summary: (&e.summary).into(),
            payload: e.payload,
            deliveries: e.deliveries.into_iter().map(DeliveryView::from).collect(),
        }
    }
}

impl From<DeliveryDetail> for DeliveryView {
    fn from(d: DeliveryDetail) -> Self {
        DeliveryView {
            id: d.id,
            endpoint_id: d.endpoint_id,
            status: d.status.as_str(),
            attempt_count: d.attempt_count,
            next_attempt_at: d.next_attempt_at,
            created_at: d.created_at,
            completed_at: d.completed_at,
            attempts: d.attempts.into_iter().map(AttemptView::from).collect(),
        }
    }
}

impl From<Attempt> for AttemptView {
    fn from(a: Attempt) -> Self {
        AttemptView {
            attempt: a.attempt,
            started_at: a.started_at,
            duration_ms: a.duration_ms,
            status_code: a.status_code,
            error_kind: a.error_kind,
            error: a.error,
            response_body: a.response_body,
        }
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(rename = "type")]
    event_type: Option<String>,
    device_id: Option<String>,
    /// Received at or after: RFC 3339 or Unix seconds.
    from: Option<String>,
    /// Received before.
    to: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

#[utoipa::path(get, path = "/v1/events", tag = "events", security(("api_key" = [])),
    params(ListQuery),
    responses((status = 200, description = "A page of events, newest first.", body = Listed<EventSummaryView>)))]
async fn list(
    Account(account): Account,
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Listed<EventSummaryView>>> {
    if let Some(t) = &q.event_type {
        if !merpati_webhooks::EVENT_TYPES.contains(&t.as_str()) {
            return Err(ApiError::invalid(format!("type: unknown event type {t:?}")));
        }
    }
    let device_id = q
        .device_id
        .map(|d| parse_id("device_id", d, DeviceId::parse))
        .transpose()?;
    let limit = page_limit(q.limit)?;
    let before = match q.cursor.as_deref() {
        Some(c) => Some(
            parse_cursor(c)?
                .parse::<i64>()
                .map_err(|_| ApiError::invalid("cursor is not valid"))?,
        ),
        None => None,
    };
    let from = q
        .from
        .as_deref()
        .map(|t| parse_time("from", t))
        .transpose()?;
    let to = q.to.as_deref().map(|t| parse_time("to", t)).transpose()?;
    if let (Some(from), Some(to)) = (from, to) {
        if from >= to {
            return Err(ApiError::invalid("from must be before to"));
        }
    }
    let filter = EventFilter {
        event_type: q.event_type,
        device_id,
        from,
        to,
    };
    let mut items = state
        .store
        .list_events(account, filter, before, limit + 1)
        .await?;
    let next_cursor = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|e| ids::encode_cursor(&e.seq.to_string()))
    } else {
        None
    };
    Ok(Json(Listed {
        data: items.iter().map(EventSummaryView::from).collect(),
        next_cursor,
    }))
}

#[utoipa::path(get, path = "/v1/events/{id}", tag = "events", security(("api_key" = [])),
    params(("id" = String, Path, description = "The event's id.")),
    responses((status = 200, description = "The event: its payload, its deliveries and each attempt.", body = EventView)))]
async fn read(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<EventView>> {
    Ok(Json(
        state.store.get_event(account, id.into()).await?.into(),
    ))
}

#[utoipa::path(post, path = "/v1/deliveries/{id}/resend", tag = "events", security(("api_key" = [])),
    params(("id" = i64, Path, description = "The delivery's id.")),
    responses(
        (status = 202, description = "A new delivery of the same event to the same endpoint.", body = Resent),
        (status = 409, description = "Its endpoint is disabled; enable it first.", body = ErrorBody),
    ))]
async fn resend(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Resent>)> {
    let id = DeliveryId(id.parse().map_err(|_| ApiError::not_found("delivery"))?);
    let now = state.clock.now_ms();
    let new_id = state.store.resend_delivery(account, id, now).await?;
    state.delivery.wake();
    Ok((
        StatusCode::ACCEPTED,
        Json(Resent {
            resent_from: id,
            delivery_id: new_id,
        }),
    ))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Resent {
    /// The delivery sent again.
    #[schema(value_type = i64)]
    resent_from: DeliveryId,
    /// The new delivery.
    #[schema(value_type = i64)]
    delivery_id: DeliveryId,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Replayed {
    event_id: String,
    /// Deliveries made for it.
    deliveries: usize,
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    endpoint_id: Option<String>,
}

#[utoipa::path(post, path = "/v1/events/{id}/replay", tag = "events", security(("api_key" = [])),
    params(("id" = String, Path, description = "The event's id.")),
    request_body(content = Option<ReplayBody>, description = "Optional: one endpoint only; every matching endpoint when absent."),
    responses((status = 202, description = "Delivered again, with the same webhook id.", body = Replayed)))]
async fn replay(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
    OptionalJsonBody(body): OptionalJsonBody<ReplayBody>,
) -> ApiResult<(StatusCode, Json<Replayed>)> {
    if let Some(e) = &body.endpoint_id {
        check_id("endpoint_id", e)?;
    }
    let now = state.clock.now_ms();
    let due = state
        .store
        .replay_event(
            account,
            id.clone().into(),
            body.endpoint_id.map(EndpointId::from),
            now,
        )
        .await?;
    if due > 0 {
        state.delivery.wake();
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(Replayed {
            event_id: id,
            deliveries: due,
        }),
    ))
}
