//! `GET /v1/endpoints/{id}/stats`: how an endpoint has been doing over the last hour and
//! day (attempts, success rate, latency p50/p99 from the stored minute tallies) and what
//! waits on someone (held and failed deliveries), with its breaker's pause.

use axum::extract::{Path, State};
use axum::Json;
use merpati_domain::endpoint_stats::Tally;
use merpati_domain::ids::EndpointId;
use serde_json::{json, Value};

use crate::api::extract::Account;
use crate::api::time::rfc3339;
use crate::api::{ApiResult, AppState};

fn window_json(t: &Tally) -> Value {
    let round = |v: Option<f64>| v.map(|ms| (ms * 10.0).round() / 10.0);
    json!({
        "attempts": t.attempts(),
        "succeeded": t.succeeded,
        "failed": t.failed,
        "success_percent": t.success_percent(),
        "latency_p50_ms": round(t.quantile_ms(0.5)),
        "latency_p99_ms": round(t.quantile_ms(0.99)),
    })
}

pub async fn stats(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
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
    let backlog = state.store.endpoint_backlog(account, id.clone()).await?;
    let paused_until = state.pauses.until(&id).filter(|until| *until > now);
    Ok(Json(json!({
        "endpoint_id": id,
        "last_hour": window_json(&hour),
        "last_day": window_json(&day),
        "held": backlog.held,
        "failed": backlog.failed,
        "breaker": if paused_until.is_some() { "open" } else { "closed" },
        "paused_until": paused_until.map(rfc3339),
    })))
}
