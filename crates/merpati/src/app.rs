//! The app's HTTP side: the router made of every feature's routes, and the few routes of
//! the server itself (health, readiness, fallbacks).

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::api::{ApiError, ApiResult, AppState, MAX_BODY_BYTES};

pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(crate::accounts::routes())
        .merge(crate::devices::routes())
        .merge(crate::endpoints::routes())
        .merge(crate::events::routes())
        .merge(crate::ingest::routes())
        .merge(crate::presence::routes())
        .merge(crate::jobs::routes())
        .merge(crate::alerts::routes())
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .fallback(|| async { ApiError::not_found("route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
        // Bodies are read by `extract::read_body`; this bounds any other extractor too.
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn readyz(State(state): State<AppState>) -> ApiResult<Json<serde_json::Value>> {
    state.store.ping().await?;
    Ok(Json(json!({"status": "ready"})))
}
