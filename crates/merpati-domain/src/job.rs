//! Jobs that take a while, with progress: recovering an endpoint's failed deliveries since a
//! time, a chunk per transaction.

use crate::ids::{AccountId, EndpointId, JobId};
use crate::storage::StoreResult;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub id: JobId,
    pub account_id: AccountId,
    pub kind: String,
    pub endpoint_id: EndpointId,
    pub since: i64,
    pub status: JobStatus,
    /// Deliveries to recover, counted when the job was made.
    pub total: i64,
    /// Deliveries sent again so far.
    pub done: i64,
    pub created_at: i64,
    pub finished_at: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    Running,
    Done,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Running => "running",
            JobStatus::Done => "done",
        }
    }
    pub fn parse(s: &str) -> Option<JobStatus> {
        match s {
            "running" => Some(JobStatus::Running),
            "done" => Some(JobStatus::Done),
            _ => None,
        }
    }
}

/// What one chunk of a job did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Deliveries it made due.
    pub made_due: usize,
    /// The job after the chunk; `None` when it is gone (with its endpoint or account).
    pub job: Option<Job>,
    /// Another node took the job up (this one was taken for gone): the chunk did nothing,
    /// and this node leaves the job to it.
    pub runs_elsewhere: bool,
}

impl Chunk {
    /// Whether nothing is left for this node to do.
    pub fn finished(&self) -> bool {
        self.runs_elsewhere
            || self
                .job
                .as_ref()
                .is_none_or(|job| job.status == JobStatus::Done)
    }
}

#[async_trait::async_trait]
pub trait JobStore: Send + Sync {
    /// A job to send again every delivery to the endpoint, made since `since`, that failed
    /// and was not followed by another delivery of its event there. Conflict when the
    /// endpoint is disabled. `node` runs it.
    async fn create_recover_job(
        &self,
        account: AccountId,
        endpoint: EndpointId,
        since: i64,
        now: i64,
        node: String,
    ) -> StoreResult<Job>;
    async fn get_job(&self, account: AccountId, id: JobId) -> StoreResult<Job>;
    /// Makes `node` run every job still running whose node is gone (its lease ran out, or
    /// it left); their ids, oldest first.
    async fn take_up_jobs(&self, node: String) -> StoreResult<Vec<JobId>>;
    /// Does the next chunk of up to `limit` deliveries of a job, if `node` still runs it.
    async fn run_job_chunk(
        &self,
        id: JobId,
        node: String,
        limit: usize,
        now: i64,
    ) -> StoreResult<Chunk>;
}
