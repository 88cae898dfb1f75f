//! The app's HTTP side: the router made of every feature's routes, the OpenAPI document
//! those routes declare, and the few routes of the server itself (health, readiness,
//! metrics, the document, fallbacks).

use std::sync::LazyLock;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::Serialize;
use utoipa::OpenApi;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::api::extract::Admin;
use crate::api::openapi::ApiDoc;
use crate::api::{ApiError, ApiResult, AppState, MAX_BODY_BYTES};

pub fn router(state: AppState) -> Router {
    let (api, _) = api().split_for_parts();
    // Bodies are read by `extract::read_body`; this bounds any other extractor too.
    let api: Router = api
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::audit::record_changes,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state.clone());
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

/// The OpenAPI document of every route of the API, as the routes declare themselves.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = api().split_for_parts().1;
    crate::api::openapi::finish(&mut doc);
    doc
}

/// The document as `/openapi.json` and `merpati openapi` give it.
pub fn openapi_json() -> &'static str {
    static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
        let mut json = openapi().to_pretty_json().expect("the document serializes");
        json.push('\n');
        json
    });
    &DOCUMENT
}

/// Every route of the API, with its part of the document.
fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(crate::accounts::routes())
        .merge(crate::devices::routes())
        .merge(crate::endpoints::routes())
        .merge(crate::events::routes())
        .merge(crate::ingest::routes())
        .merge(crate::presence::routes())
        .merge(crate::jobs::routes())
        .merge(crate::alerts::routes())
        .merge(crate::connectors::routes())
        .merge(crate::stream::routes())
        .merge(crate::audit::routes())
        .merge(crate::cluster::routes())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(document))
}

#[derive(Serialize, utoipa::ToSchema)]
struct Health {
    /// `ok` (alive) or `ready` (and its database answers).
    status: &'static str,
}

/// Whether the process answers at all.
#[utoipa::path(get, path = "/healthz", tag = "server",
    responses((status = 200, description = "Alive.", body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Whether it can take work: its database answers.
#[utoipa::path(get, path = "/readyz", tag = "server",
    responses((status = 200, description = "Ready.", body = Health)))]
async fn readyz(State(state): State<AppState>) -> ApiResult<Json<Health>> {
    state.store.ping().await?;
    Ok(Json(Health { status: "ready" }))
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "server",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API.",
        content_type = "application/json", body = Object)))]
async fn document() -> Response {
    ([(CONTENT_TYPE, "application/json")], openapi_json()).into_response()
}

/// Prometheus metrics (OpenMetrics text); no label is an id, so series stay bounded.
#[utoipa::path(get, path = "/metrics", tag = "server", security(("admin_token" = [])),
    responses((status = 200, description = "The metrics.",
        content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8", body = String)))]
async fn metrics(_: Admin, State(state): State<AppState>) -> ApiResult<Response> {
    // A scrape during an outage still answers: the outage is what it must show.
    let counts = match state.store.counts().await {
        Ok(counts) => Some(counts),
        Err(e) => {
            tracing::warn!(error = %e, "metrics: the store's counts could not be read");
            None
        }
    };
    let paused = state.pauses.paused_at(state.clock.now_ms());
    let text = state.metrics.render(counts.as_ref(), paused);
    Ok((
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}
