//! Long jobs over HTTP: recovering an endpoint's failed deliveries since a time, and the
//! job's progress. The runtime's job runner does the work, a chunk at a time.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use merpati_domain::ids::{EndpointId, JobId};
use merpati_domain::job::Job;
use serde::{Deserialize, Serialize};

use crate::api::extract::{Account, JsonBody};
use crate::api::time::as_rfc3339;
use crate::api::validate::parse_time;
use crate::api::{ApiError, ApiResult, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/endpoints/{id}/recover", post(recover))
        .route("/v1/jobs/{id}", get(read))
}

/// A job as the API shows it.
#[derive(Debug, Serialize)]
pub struct JobView {
    pub id: JobId,
    pub kind: String,
    pub endpoint_id: EndpointId,
    #[serde(with = "as_rfc3339")]
    pub since: i64,
    /// `running` or `done`.
    pub status: &'static str,
    /// Deliveries to recover, counted when the job was made.
    pub total: i64,
    /// Deliveries sent again so far.
    pub done: i64,
    #[serde(with = "as_rfc3339")]
    pub created_at: i64,
    #[serde(with = "as_rfc3339::option")]
    pub finished_at: Option<i64>,
}

impl From<&Job> for JobView {
    fn from(j: &Job) -> Self {
        JobView {
            id: j.id.clone(),
            kind: j.kind.clone(),
            endpoint_id: j.endpoint_id.clone(),
            since: j.since,
            status: j.status.as_str(),
            total: j.total,
            done: j.done,
            created_at: j.created_at,
            finished_at: j.finished_at,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecoverBody {
    /// RFC 3339 or Unix seconds.
    since: serde_json::Value,
}

async fn recover(
    Account(account): Account,
    State(state): State<AppState>,
    Path(endpoint_id): Path<String>,
    JsonBody(body): JsonBody<RecoverBody>,
) -> ApiResult<(StatusCode, Json<JobView>)> {
    let since = match &body.since {
        serde_json::Value::Number(n) => parse_time("since", &n.to_string())?,
        serde_json::Value::String(s) => parse_time("since", s)?,
        _ => {
            return Err(ApiError::invalid(
                "since must be an RFC 3339 time or Unix seconds",
            ))
        }
    };
    let now = state.clock.now_ms();
    if since > now {
        return Err(ApiError::invalid("since is in the future"));
    }
    let job = state
        .store
        .create_recover_job(account, endpoint_id.into(), since, now)
        .await?;
    state.jobs.start(job.id.clone());
    Ok((StatusCode::ACCEPTED, Json((&job).into())))
}

async fn read(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<JobView>> {
    Ok(Json(
        (&state.store.get_job(account, id.into()).await?).into(),
    ))
}
