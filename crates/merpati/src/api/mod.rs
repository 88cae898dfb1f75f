//! HTTP wiring only: the shared state, the router made of every feature's routes, and the
//! helpers all routes use (errors, extractors, pagination, validation).

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::clock::SharedClock;
use crate::config::Config;
use crate::delivery::DeliveryWaker;
use crate::ids;
use crate::store::{Page, SharedStore};

mod error;
pub mod extract;

pub use error::{ApiError, ApiResult};

/// Every request body is refused past this size (413).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub store: SharedStore,
    pub config: Arc<Config>,
    pub clock: SharedClock,
    pub admin_token_hash: Arc<Vec<u8>>,
    /// Tells the delivery worker that new deliveries are due.
    pub delivery: DeliveryWaker,
    /// Hands fresh deliveries to the delivery worker.
    pub handoff: crate::delivery::Handoff,
    /// Endpoints their circuit breaker has paused, as the worker last saw them.
    pub pauses: crate::delivery::Pauses,
    pub presence: crate::presence::PresenceHandle,
    pub presence_policy: crate::presence::Policy,
    /// Tasks the shutdown waits for (device links), and the signal to stop.
    pub tasks: tokio_util::task::TaskTracker,
    pub shutdown: tokio_util::sync::CancellationToken,
    pub jobs: crate::jobs::JobQueue,
    /// Recently resolved device tokens.
    pub device_tokens: crate::devices::token_cache::TokenCache,
    /// Wakes the pruner: an endpoint was deleted, its rows are to go.
    pub purge: Arc<tokio::sync::Notify>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(crate::accounts::routes())
        .merge(crate::devices::routes())
        .merge(crate::endpoints::routes())
        .merge(crate::events::routes())
        .merge(crate::ingest::routes())
        .merge(crate::presence::routes())
        .merge(crate::jobs::routes())
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .fallback(|| async { ApiError::not_found("route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
        // Bodies are read by `extract::read_body`; this bounds any other extractor too.
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn readyz(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> ApiResult<Json<serde_json::Value>> {
    state.store.ping().await?;
    Ok(Json(json!({"status": "ready"})))
}

/// `?limit=&cursor=` of every list route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

pub const DEFAULT_PAGE: usize = 50;
pub const MAX_PAGE: usize = 500;

impl PageQuery {
    /// The page to ask the store for: one more than shown, to know whether more follow.
    pub fn page(&self) -> ApiResult<Page> {
        Ok(Page {
            after: self.cursor.as_deref().map(parse_cursor).transpose()?,
            limit: page_limit(self.limit)? + 1,
        })
    }
}

pub fn page_limit(limit: Option<usize>) -> ApiResult<usize> {
    match limit.unwrap_or(DEFAULT_PAGE) {
        n @ 1..=MAX_PAGE => Ok(n),
        _ => Err(ApiError::invalid(format!("limit must be 1 to {MAX_PAGE}"))),
    }
}

pub fn parse_cursor(cursor: &str) -> ApiResult<String> {
    ids::decode_cursor(cursor).ok_or_else(|| ApiError::invalid("cursor is not valid"))
}

/// `{"data": [...], "next_cursor": …}` from a page fetched with one item too many.
pub fn list_response<T: Serialize>(
    mut items: Vec<T>,
    page: &Page,
    position: impl Fn(&T) -> String,
) -> Json<serde_json::Value> {
    let shown = page.limit - 1;
    let next_cursor = if items.len() > shown {
        items.truncate(shown);
        items.last().map(|last| ids::encode_cursor(&position(last)))
    } else {
        None
    };
    Json(json!({"data": items, "next_cursor": next_cursor}))
}

/// A given id, validated, or a new one with `prefix`.
pub fn id_or_new(field: &str, id: Option<String>, prefix: &str) -> ApiResult<String> {
    match id {
        Some(id) => {
            check_id(field, &id)?;
            Ok(id)
        }
        None => Ok(ids::new_id(prefix)),
    }
}

/// A time given as RFC 3339 or as Unix seconds, in ms.
pub fn parse_time(field: &str, raw: &str) -> ApiResult<i64> {
    if let Ok(secs) = raw.parse::<i64>() {
        return Ok(secs * 1000);
    }
    humantime::parse_rfc3339_weak(raw)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64)
        .ok_or_else(|| {
            ApiError::invalid(format!("{field} must be an RFC 3339 time or Unix seconds"))
        })
}

pub fn check_id(field: &str, id: &str) -> ApiResult<()> {
    ids::validate_id(id).map_err(|why| ApiError::invalid(format!("{field} {why}")))
}

pub const MAX_NAME_CHARS: usize = 256;

pub fn check_name(field: &str, value: &str) -> ApiResult<()> {
    if value.trim().is_empty() {
        return Err(ApiError::invalid(format!("{field} must not be empty")));
    }
    if value.chars().count() > MAX_NAME_CHARS {
        return Err(ApiError::invalid(format!(
            "{field} must be at most {MAX_NAME_CHARS} characters"
        )));
    }
    Ok(())
}

/// For PATCH bodies: tells an absent field (`None`) from an explicit `null` (`Some(None)`).
pub fn double_option<'de, T, D>(de: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    Option::<T>::deserialize(de).map(Some)
}
