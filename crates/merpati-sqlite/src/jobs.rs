//! Long jobs, a chunk per transaction: recovering an endpoint's failed deliveries.

use merpati_domain::fanout::order_key;
use merpati_domain::ids::{AccountId, DeviceId, EndpointId, JobId};
use merpati_domain::job::{Chunk, Job, JobStatus, JobStore};
use merpati_domain::{StoreError, StoreResult};
use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::cluster::NOW_MS;
use crate::endpoints::endpoint_owned;
use crate::error::DbResult;
use crate::fanout::enqueue;
use crate::rows::{id, opt_id, word};
use crate::SqliteStore;

const COLUMNS: &str =
    "id, account_id, kind, endpoint_id, since, status, total, done, created_at, finished_at";

fn job_row(r: &Row<'_>) -> rusqlite::Result<Job> {
    Ok(Job {
        id: id(r, 0)?,
        account_id: id(r, 1)?,
        kind: r.get(2)?,
        endpoint_id: id(r, 3)?,
        since: r.get(4)?,
        status: word(r, 5, JobStatus::parse)?,
        total: r.get(6)?,
        done: r.get(7)?,
        created_at: r.get(8)?,
        finished_at: r.get(9)?,
    })
}

fn job(c: &Connection, id: &JobId) -> DbResult<Option<Job>> {
    Ok(
        c.prepare_cached(&format!("SELECT {COLUMNS} FROM jobs WHERE id = ?1"))?
            .query_row([id.as_str()], job_row)
            .optional()?,
    )
}

/// Failed deliveries to ?1 since ?2, with id above ?3, not followed by another delivery of
/// the same event to the same endpoint. The later ones are looked for among the event's
/// deliveries: the endpoint's would be everything it was sent since.
pub(crate) const CANDIDATES: &str = "FROM deliveries d
     WHERE d.endpoint_id = ?1 AND d.status = 'failed' AND d.created_at >= ?2 AND d.id > ?3
       AND NOT EXISTS (SELECT 1 FROM deliveries later INDEXED BY deliveries_event
                       WHERE later.event_seq = d.event_seq AND later.endpoint_id = d.endpoint_id
                         AND later.id > d.id)";

#[async_trait::async_trait]
impl JobStore for SqliteStore {
    async fn create_recover_job(
        &self,
        account: AccountId,
        endpoint: EndpointId,
        since: i64,
        now: i64,
        node: String,
    ) -> StoreResult<Job> {
        self.write(move |c| {
            if !endpoint_owned(c, &account, &endpoint)? {
                return Err(StoreError::NotFound("endpoint").into());
            }
            let disabled: bool = c.query_row(
                "SELECT disabled FROM endpoints WHERE id = ?1",
                [endpoint.as_str()],
                |r| r.get(0),
            )?;
            if disabled {
                return Err(StoreError::Conflict(
                    "the endpoint is disabled; enable it first".into(),
                )
                .into());
            }
            let total: i64 = c.query_row(
                &format!("SELECT COUNT(*) {CANDIDATES}"),
                params![endpoint.as_str(), since, 0],
                |r| r.get(0),
            )?;
            let id = JobId::generate();
            c.execute(
                "INSERT INTO jobs (id, account_id, kind, endpoint_id, since, status, total,
                                   created_at, node)
                 VALUES (?1, ?2, 'recover', ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    id.as_str(),
                    account.as_str(),
                    endpoint.as_str(),
                    since,
                    JobStatus::Running.as_str(),
                    total,
                    now,
                    node
                ],
            )?;
            Ok(job(c, &id)?.ok_or(StoreError::NotFound("job"))?)
        })
        .await
    }

    async fn get_job(&self, account: AccountId, id: JobId) -> StoreResult<Job> {
        self.read(move |c| {
            Ok(c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM jobs WHERE account_id = ?1 AND id = ?2
                   AND endpoint_id NOT IN (SELECT id FROM endpoints WHERE deleted_at IS NOT NULL)"
            ))?
            .query_row(params![account.as_str(), id.as_str()], job_row)
            .optional()?
            .ok_or(StoreError::NotFound("job"))?)
        })
        .await
    }

    async fn take_up_jobs(&self, node: String) -> StoreResult<Vec<JobId>> {
        self.write(move |c| {
            let mut s = c.prepare_cached(&format!(
                "UPDATE jobs SET node = ?1
                 WHERE status = 'running'
                   AND (node IS NULL OR node NOT IN
                        (SELECT id FROM cluster_nodes WHERE lease_until > {NOW_MS}))
                 RETURNING id, created_at"
            ))?;
            let mut taken: Vec<(JobId, i64)> = s
                .query_map([node.as_str()], |r| Ok((id(r, 0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            taken.sort_by_key(|(_, created_at)| *created_at);
            Ok(taken.into_iter().map(|(id, _)| id).collect())
        })
        .await
    }

    async fn run_job_chunk(
        &self,
        id: JobId,
        node: String,
        limit: usize,
        now: i64,
    ) -> StoreResult<Chunk> {
        self.write(move |c| {
            let gone = Chunk {
                made_due: 0,
                job: None,
                runs_elsewhere: false,
            };
            let state: Option<(EndpointId, i64, i64, String, Option<String>)> = c
                .query_row(
                    "SELECT endpoint_id, since, cursor, status, node FROM jobs WHERE id = ?1",
                    [id.as_str()],
                    |r| {
                        Ok((
                            crate::rows::id(r, 0)?,
                            r.get(1)?,
                            r.get(2)?,
                            r.get(3)?,
                            r.get(4)?,
                        ))
                    },
                )
                .optional()?;
            // Gone with its endpoint or account, or already done.
            let Some((endpoint, since, cursor, status, runner)) = state else {
                return Ok(gone);
            };
            let runs_elsewhere = runner.as_deref() != Some(node.as_str());
            if runs_elsewhere || status != JobStatus::Running.as_str() {
                return Ok(Chunk {
                    made_due: 0,
                    job: job(c, &id)?,
                    runs_elsewhere,
                });
            }
            let (ordered, disabled, deleted): (bool, bool, bool) = c.query_row(
                "SELECT ordering IS 'device', disabled, deleted_at IS NOT NULL
                 FROM endpoints WHERE id = ?1",
                [endpoint.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            // Its endpoint deleted, the job goes with it once the endpoint is purged.
            if deleted {
                return Ok(gone);
            }
            let picked: Vec<(i64, i64, Option<DeviceId>)> = c
                .prepare(&format!(
                    "SELECT d.id, d.event_seq,
                            (SELECT device_id FROM events WHERE seq = d.event_seq)
                     {CANDIDATES} ORDER BY d.id LIMIT ?4"
                ))?
                .query_map(
                    params![endpoint.as_str(), since, cursor, limit as i64],
                    |r| Ok((r.get(0)?, r.get(1)?, opt_id(r, 2)?)),
                )?
                .collect::<Result<_, _>>()?;
            for (_, seq, device) in &picked {
                let key = order_key(ordered, device.as_ref());
                enqueue(c, *seq, &endpoint, key, disabled, now)?;
            }
            let finished = picked.len() < limit;
            let last = picked.last().map(|p| p.0).unwrap_or(cursor);
            c.execute(
                "UPDATE jobs SET done = done + ?2, cursor = ?3,
                        status = CASE WHEN ?4 THEN ?6 ELSE status END,
                        finished_at = CASE WHEN ?4 THEN ?5 ELSE NULL END
                 WHERE id = ?1",
                params![
                    id.as_str(),
                    picked.len() as i64,
                    last,
                    finished,
                    now,
                    JobStatus::Done.as_str()
                ],
            )?;
            Ok(Chunk {
                made_due: picked.len(),
                job: job(c, &id)?,
                runs_elsewhere: false,
            })
        })
        .await
    }
}
