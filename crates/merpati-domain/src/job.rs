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
}

impl Chunk {
    /// Whether nothing is left to do.
    pub fn finished(&self) -> bool {
        self.job
            .as_ref()
            .is_none_or(|job| job.status == JobStatus::Done)
    }
}

#[async_trait::async_trait]
pub trait JobStore: Send + Sync {
    /// A job to send again every delivery to the endpoint, made since `since`, that failed
    /// and was not followed by another delivery of its event there. Conflict when the
    /// endpoint is disabled.
    async fn create_recover_job(
        &self,
        account: AccountId,
        endpoint: EndpointId,
        since: i64,
        now: i64,
    ) -> StoreResult<Job>;
    async fn get_job(&self, account: AccountId, id: JobId) -> StoreResult<Job>;
    /// Ids of the jobs still running.
    async fn running_jobs(&self) -> StoreResult<Vec<JobId>>;
    /// Does the next chunk of up to `limit` deliveries of a job.
    async fn run_job_chunk(&self, id: JobId, limit: usize, now: i64) -> StoreResult<Chunk>;
}
