//! The app's HTTP side: the router made of every feature's routes, and the few routes of
//! the server itself (health, readiness, fallbacks).

use axum::extract::{DefaultBodyLimit, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::api::extract::Admin;
use crate::api::{ApiError, ApiResult, AppState, MAX_BODY_BYTES};

pub fn router(state: AppState) -> Router {
    let api = api(state.clone());
    // The dashboard reads and acts through the API, in process: what it shows and does is
    // what the API shows and does.
    let dashboard = crate::dashboard::routes(api.clone()).with_state(state);
    api.merge(dashboard)
        .fallback(|| async { ApiError::not_found("route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
}

/// Every route of the API.
fn api(state: AppState) -> Router {
    Router::new()
        .merge(crate::accounts::routes())
        .merge(crate::devices::routes())
        .merge(crate::endpoints::routes())
        .merge(crate::events::routes())
        .merge(crate::ingest::routes())
        .merge(crate::presence::routes())
        .merge(crate::jobs::routes())
        .merge(crate::alerts::routes())
        .merge(crate::stream::routes())
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        // Bodies are read by `extract::read_body`; this bounds any other extractor too.
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Prometheus (OpenMetrics text), for the admin token.
async fn metrics(_: Admin, State(state): State<AppState>) -> ApiResult<Response> {
    let counts = state.store.counts().await?;
    let paused = state.pauses.paused_at(state.clock.now_ms());
    let text = state.metrics.render(&counts, paused);
    Ok((
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

async fn readyz(State(state): State<AppState>) -> ApiResult<Json<serde_json::Value>> {
    state.store.ping().await?;
    Ok(Json(json!({"status": "ready"})))
}
