//! Long jobs over HTTP: recovering an endpoint's failed deliveries since a time, and the
//! job's progress. The runtime's job runner does the work, a chunk at a time.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use merpati_domain::ids::{EndpointId, JobId};
use merpati_domain::job::Job;
use serde::{Deserialize, Serialize};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::api::extract::{Account, JsonBody};
use crate::api::openapi::ErrorBody;
use crate::api::time::as_rfc3339;
use crate::api::validate::parse_time;
use crate::api::{ApiError, ApiResult, AppState};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(recover))
        .routes(routes!(read))
}

/// A job as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobView {
    #[schema(value_type = String)]
    pub id: JobId,
    pub kind: String,
    #[schema(value_type = String)]
    pub endpoint_id: EndpointId,
    #[serde(with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub since: i64,
    /// `running` or `done`.
    pub status: &'static str,
    /// Deliveries to recover, counted when the job was made.
    pub total: i64,
    /// Deliveries sent again so far.
    pub done: i64,
    #[serde(with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    #[serde(with = "as_rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
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

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RecoverBody {
    /// RFC 3339 or Unix seconds.
    #[schema(schema_with = crate::api::openapi::time_schema)]
    since: serde_json::Value,
}

#[utoipa::path(post, path = "/v1/endpoints/{id}/recover", tag = "jobs", security(("api_key" = [])),
    params(("id" = String, Path, description = "The endpoint's id.")),
    request_body = RecoverBody,
    responses(
        (status = 202, description = "A job that sends the endpoint's failed deliveries since then again; follow it at `/v1/jobs/{id}`.", body = JobView),
        (status = 409, description = "The endpoint is disabled; enable it first.", body = ErrorBody),
    ))]
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
        .create_recover_job(
            account,
            endpoint_id.into(),
            since,
            now,
            state.ownership.node(),
        )
        .await?;
    state.jobs.start(job.id.clone());
    Ok((StatusCode::ACCEPTED, Json((&job).into())))
}

#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", security(("api_key" = [])),
    params(("id" = String, Path, description = "The job's id.")),
    responses((status = 200, description = "The job and its progress.", body = JobView)))]
async fn read(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<JobView>> {
    Ok(Json(
        (&state.store.get_job(account, id.into()).await?).into(),
    ))
}
