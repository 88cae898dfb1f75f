//! Jobs that take a while, with progress: recovering an endpoint's failed deliveries since a
//! time. One runner task works through them in chunks (a transaction each), so a job of a
//! million deliveries never holds the database for long; a job interrupted by a stop goes on
//! after the next start from where it was.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::api::extract::{Account, JsonBody};
use crate::api::{parse_time, ApiError, ApiResult, AppState};
use crate::clock::{as_rfc3339, SharedClock};
use crate::delivery::DeliveryWaker;
use crate::store::{SharedStore, StoreResult};

#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub id: String,
    pub kind: String,
    pub endpoint_id: String,
    #[serde(with = "as_rfc3339")]
    pub since: i64,
    /// `running` or `done`.
    pub status: String,
    /// Deliveries to recover, counted when the job was made.
    pub total: i64,
    /// Deliveries sent again so far.
    pub done: i64,
    #[serde(with = "as_rfc3339")]
    pub created_at: i64,
    #[serde(with = "as_rfc3339::option")]
    pub finished_at: Option<i64>,
}

#[async_trait::async_trait]
pub trait JobStore: Send + Sync {
    /// A job to send again every delivery to the endpoint, made since `since`, that failed
    /// and was not followed by another delivery of its event there. Conflict when the
    /// endpoint is disabled.
    async fn create_recover_job(
        &self,
        account: String,
        endpoint_id: String,
        since: i64,
        now: i64,
    ) -> StoreResult<Job>;
    async fn get_job(&self, account: String, id: String) -> StoreResult<Job>;
    /// Ids of the jobs still running.
    async fn running_jobs(&self) -> StoreResult<Vec<String>>;
    /// Does the next chunk of a job; returns how many deliveries it made due, and whether
    /// the job is finished.
    async fn run_job_chunk(&self, id: String, limit: usize, now: i64)
        -> StoreResult<(usize, bool)>;
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/endpoints/{id}/recover", post(recover))
        .route("/v1/jobs/{id}", get(read))
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
) -> ApiResult<(StatusCode, Json<Job>)> {
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
        .create_recover_job(account, endpoint_id, since, now)
        .await?;
    state.jobs.start(job.id.clone());
    Ok((StatusCode::ACCEPTED, Json(job)))
}

async fn read(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Job>> {
    Ok(Json(state.store.get_job(account, id).await?))
}

/// How the API hands a new job to the runner.
#[derive(Clone)]
pub struct JobQueue(mpsc::UnboundedSender<String>);

impl JobQueue {
    pub fn start(&self, id: String) {
        // The job is stored: if the runner is gone, the next start picks it up.
        let _ = self.0.send(id);
    }
}

const CHUNK: usize = 500;

pub struct Runner {
    store: SharedStore,
    clock: SharedClock,
    waker: DeliveryWaker,
    shutdown: CancellationToken,
    rx: mpsc::UnboundedReceiver<String>,
}

pub fn runner(
    store: SharedStore,
    clock: SharedClock,
    waker: DeliveryWaker,
    shutdown: CancellationToken,
) -> (JobQueue, Runner) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        JobQueue(tx),
        Runner {
            store,
            clock,
            waker,
            shutdown,
            rx,
        },
    )
}

impl Runner {
    pub async fn run(mut self) {
        let mut queue: std::collections::VecDeque<String> = match self.store.running_jobs().await {
            Ok(ids) => ids.into(),
            Err(e) => {
                tracing::error!(error = %e, "could not read running jobs");
                Default::default()
            }
        };
        loop {
            while let Some(id) = queue.pop_front() {
                if !self.work(&id).await {
                    return;
                }
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                next = self.rx.recv() => match next {
                    Some(id) => queue.push_back(id),
                    None => return,
                },
            }
        }
    }

    /// Runs a job to its end; false when the server is stopping.
    async fn work(&self, id: &str) -> bool {
        loop {
            if self.shutdown.is_cancelled() {
                return false;
            }
            match self
                .store
                .run_job_chunk(id.to_string(), CHUNK, self.clock.now_ms())
                .await
            {
                Ok((due, finished)) => {
                    if due > 0 {
                        self.waker.wake();
                    }
                    if finished {
                        return true;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, job = id, "job chunk failed; retrying later");
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return false,
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    }
                }
            }
            // Let other writes in between chunks.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
