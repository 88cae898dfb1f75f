//! The event log of an account: listing with filters and cursors, one event with every
//! delivery and attempt, and replay.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::api::extract::{Account, OptionalJsonBody, Query};
use crate::api::{check_id, page_limit, parse_cursor, ApiError, ApiResult, AppState};
use crate::clock::as_rfc3339;
use crate::ids;
use crate::store::StoreResult;

#[derive(Debug, Clone, Serialize)]
pub struct EventSummary {
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub device_id: Option<String>,
    pub channel_id: Option<String>,
    pub business_id: Option<String>,
    #[serde(with = "as_rfc3339")]
    pub created_at: i64,
    #[serde(skip)]
    pub seq: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct EventDetail {
    #[serde(flatten)]
    pub summary: EventSummary,
    /// The body as delivered (in JSON; form endpoints get the same fields form-encoded).
    pub payload: serde_json::Value,
    pub deliveries: Vec<DeliveryDetail>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeliveryDetail {
    pub id: i64,
    pub endpoint_id: String,
    /// `pending`, `held` (endpoint disabled), `succeeded` or `failed`.
    pub status: String,
    pub attempt_count: i64,
    #[serde(with = "as_rfc3339::option")]
    pub next_attempt_at: Option<i64>,
    #[serde(with = "as_rfc3339")]
    pub created_at: i64,
    #[serde(with = "as_rfc3339::option")]
    pub completed_at: Option<i64>,
    pub attempts: Vec<AttemptView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AttemptView {
    pub attempt: i64,
    #[serde(with = "as_rfc3339")]
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

#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub event_type: Option<String>,
    pub device_id: Option<String>,
}

#[async_trait::async_trait]
pub trait EventStore: Send + Sync {
    /// Newest first, those before `before_seq` when given.
    async fn list_events(
        &self,
        account: String,
        filter: EventFilter,
        before_seq: Option<i64>,
        limit: usize,
    ) -> StoreResult<Vec<EventSummary>>;
    async fn get_event(&self, account: String, id: String) -> StoreResult<EventDetail>;
    /// Deletes up to `limit` events created before `before` whose deliveries are all final,
    /// with their deliveries, attempts and dedup records. Returns how many.
    async fn prune_events(&self, before: i64, limit: usize) -> StoreResult<usize>;
    /// A new delivery of the same event to the same endpoint; returns its id. Conflict when
    /// the endpoint is disabled.
    async fn resend_delivery(
        &self,
        account: String,
        delivery_id: i64,
        now: i64,
    ) -> StoreResult<i64>;
    /// New deliveries of the event: to `endpoint_id`, or to every endpoint it matches now.
    /// Returns how many are due.
    async fn replay_event(
        &self,
        account: String,
        id: String,
        endpoint_id: Option<String>,
        now: i64,
    ) -> StoreResult<usize>;
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/events", get(list))
        .route("/v1/events/{id}", get(read))
        .route("/v1/events/{id}/replay", post(replay))
        .route("/v1/deliveries/{id}/resend", post(resend))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(rename = "type")]
    event_type: Option<String>,
    device_id: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

async fn list(
    Account(account): Account,
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    if let Some(t) = &q.event_type {
        if !merpati_webhooks::EVENT_TYPES.contains(&t.as_str()) {
            return Err(ApiError::invalid(format!("type: unknown event type {t:?}")));
        }
    }
    if let Some(d) = &q.device_id {
        check_id("device_id", d)?;
    }
    let limit = page_limit(q.limit)?;
    let before = match q.cursor.as_deref() {
        Some(c) => Some(
            parse_cursor(c)?
                .parse::<i64>()
                .map_err(|_| ApiError::invalid("cursor is not valid"))?,
        ),
        None => None,
    };
    let filter = EventFilter {
        event_type: q.event_type,
        device_id: q.device_id,
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
    Ok(Json(json!({"data": items, "next_cursor": next_cursor})))
}

async fn read(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<EventDetail>> {
    Ok(Json(state.store.get_event(account, id).await?))
}

async fn resend(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let id: i64 = id.parse().map_err(|_| ApiError::not_found("delivery"))?;
    let now = state.clock.now_ms();
    let new_id = state.store.resend_delivery(account, id, now).await?;
    state.delivery.wake();
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"resent_from": id, "delivery_id": new_id})),
    ))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    endpoint_id: Option<String>,
}

async fn replay(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
    OptionalJsonBody(body): OptionalJsonBody<ReplayBody>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let endpoint_id = body.endpoint_id;
    if let Some(e) = &endpoint_id {
        check_id("endpoint_id", e)?;
    }
    let now = state.clock.now_ms();
    let due = state
        .store
        .replay_event(account, id.clone(), endpoint_id, now)
        .await?;
    if due > 0 {
        state.delivery.wake();
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"event_id": id, "deliveries": due})),
    ))
}
