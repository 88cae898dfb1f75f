//! `GET /v1/endpoints/{id}/stats`: how an endpoint has been doing over the last hour and
//! day (attempts, success rate, latency p50/p99 from the stored minute tallies) and what
//! waits on someone (held and failed deliveries), with its breaker's pause.

use axum::extract::{Path, State};
use axum::Json;
use merpati_domain::endpoint_stats::Tally;
use merpati_domain::ids::EndpointId;
use serde::Serialize;

use crate::api::extract::Account;
use crate::api::time::as_rfc3339;
use crate::api::{ApiResult, AppState};

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EndpointStats {
    #[schema(value_type = String)]
    endpoint_id: EndpointId,
    last_hour: WindowStats,
    last_day: WindowStats,
    /// Deliveries waiting while the endpoint is disabled.
    held: i64,
    /// Deliveries that gave up, kept to be resent or recovered.
    failed: i64,
    /// `open` while the breaker pauses the endpoint, else `closed`.
    breaker: &'static str,
    #[serde(with = "as_rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    paused_until: Option<i64>,
}

/// Attempts over a window, from the minute tallies.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct WindowStats {
    attempts: i64,
    succeeded: i64,
    failed: i64,
    /// `null` without attempts.
    success_percent: Option<f64>,
    /// Estimated from latency buckets; `null` without attempts.
    latency_p50_ms: Option<f64>,
    latency_p99_ms: Option<f64>,
}

impl From<&Tally> for WindowStats {
    fn from(t: &Tally) -> Self {
        let round = |v: Option<f64>| v.map(|ms| (ms * 10.0).round() / 10.0);
        WindowStats {
            attempts: t.attempts(),
            succeeded: t.succeeded,
            failed: t.failed,
            success_percent: t.success_percent(),
            latency_p50_ms: round(t.quantile_ms(0.5)),
            latency_p99_ms: round(t.quantile_ms(0.99)),
        }
    }
}

#[utoipa::path(get, path = "/v1/endpoints/{id}/stats", tag = "endpoints",
    security(("api_key" = [])),
    params(("id" = String, Path, description = "The endpoint's id.")),
    responses((status = 200, description = "Its last hour and day, and what waits.", body = EndpointStats)))]
pub async fn stats(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<EndpointStats>> {
    let id = EndpointId::from(id);
    let now = state.clock.now_ms();
    let hour = state
        .store
        .endpoint_tally(account.clone(), id.clone(), now - 3_600_000, now + 1)
        .await?;
    let day = state
        .store
        .endpoint_tally(account.clone(), id.clone(), now - 86_400_000, now + 1)
        .await?;
    let backlog = state
        .store
        .endpoint_backlog(account.clone(), id.clone())
        .await?;
    let endpoint = state
        .store
        .get_endpoint(account.clone(), id.clone())
        .await?;
    let paused_until = super::paused_until(&state, &endpoint);
    Ok(Json(EndpointStats {
        endpoint_id: id,
        last_hour: (&hour).into(),
        last_day: (&day).into(),
        held: backlog.held,
        failed: backlog.failed,
        breaker: if paused_until.is_some() {
            "open"
        } else {
            "closed"
        },
        paused_until,
    }))
}
