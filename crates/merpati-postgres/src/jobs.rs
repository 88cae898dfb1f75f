//! Long operations run in chunks: recovering an endpoint's failed deliveries, each chunk
//! its own write, resumed after a restart from the job's cursor.

use merpati_domain::fanout::order_key;
use merpati_domain::ids::{AccountId, DeviceId, EndpointId, JobId};
use merpati_domain::job::{Chunk, Job, JobStatus, JobStore};
use merpati_domain::{StoreError, StoreResult};
use postgres::Row;

use crate::cluster::NOW_MS;
use crate::conn::Conn;
use crate::endpoints::endpoint_owned;
use crate::error::DbResult;
use crate::fanout::enqueue;
use crate::rows::word;
use crate::PostgresStore;

const COLUMNS: &str =
    "id, account_id, kind, endpoint_id, since, status, total, done, created_at, finished_at";

fn job_row(r: &Row) -> DbResult<Job> {
    Ok(Job {
        id: JobId::from(r.get::<_, String>(0)),
        account_id: AccountId::from(r.get::<_, String>(1)),
        kind: r.get(2),
        endpoint_id: EndpointId::from(r.get::<_, String>(3)),
        since: r.get(4),
        status: word(r.get(5), JobStatus::parse)?,
        total: r.get(6),
        done: r.get(7),
        created_at: r.get(8),
        finished_at: r.get(9),
    })
}

fn job(c: &mut Conn, id: &JobId) -> DbResult<Option<Job>> {
    c.query_opt(
        &format!("SELECT {COLUMNS} FROM jobs WHERE id = $1"),
        &[&id.as_str()],
    )?
    .as_ref()
    .map(job_row)
    .transpose()
}

/// The endpoint's failed deliveries since $2 after the cursor $3 that no later delivery of
/// the same event to the same endpoint has followed.
pub(crate) const CANDIDATES: &str = "FROM deliveries d
     WHERE d.endpoint_id = $1 AND d.status = 'failed' AND d.created_at >= $2 AND d.id > $3
       AND NOT EXISTS (SELECT 1 FROM deliveries later
                       WHERE later.event_seq = d.event_seq AND later.endpoint_id = d.endpoint_id
                         AND later.id > d.id)";

#[async_trait::async_trait]
impl JobStore for PostgresStore {
    async fn create_recover_job(
        &self,
        account: AccountId,
        endpoint: EndpointId,
        since: i64,
        now: i64,
        node: String,
    ) -> StoreResult<Job> {
        self.write(move |c| {
            if !endpoint_owned(c.conn(), &account, &endpoint)? {
                return Err(StoreError::NotFound("endpoint").into());
            }
            let disabled: bool = c
                .query_one(
                    "SELECT disabled FROM endpoints WHERE id = $1",
                    &[&endpoint.as_str()],
                )?
                .get(0);
            if disabled {
                return Err(StoreError::Conflict(
                    "the endpoint is disabled; enable it first".into(),
                )
                .into());
            }
            let total: i64 = c
                .query_one(
                    &format!("SELECT COUNT(*) {CANDIDATES}"),
                    &[&endpoint.as_str(), &since, &0i64],
                )?
                .get(0);
            let id = JobId::generate();
            c.execute(
                "INSERT INTO jobs (id, account_id, kind, endpoint_id, since, status, total,
                                   created_at, node)
                 VALUES ($1, $2, 'recover', $3, $4, $5, $6, $7, $8)",
                &[
                    &id.as_str(),
                    &account.as_str(),
                    &endpoint.as_str(),
                    &since,
                    &JobStatus::Running.as_str(),
                    &total,
                    &now,
                    &node,
                ],
            )?;
            Ok(job(c.conn(), &id)?.ok_or(StoreError::NotFound("job"))?)
        })
        .await
    }

    async fn get_job(&self, account: AccountId, id: JobId) -> StoreResult<Job> {
        self.read(move |c| {
            let row = c
                .query_opt(
                    &format!(
                        "SELECT {COLUMNS} FROM jobs WHERE account_id = $1 AND id = $2
                           AND endpoint_id NOT IN
                               (SELECT id FROM endpoints WHERE deleted_at IS NOT NULL)"
                    ),
                    &[&account.as_str(), &id.as_str()],
                )?
                .ok_or(StoreError::NotFound("job"))?;
            job_row(&row)
        })
        .await
    }

    async fn take_up_jobs(&self, node: String) -> StoreResult<Vec<JobId>> {
        self.write(move |c| {
            let mut taken: Vec<(i64, JobId)> = c
                .query(
                    &format!(
                        "UPDATE jobs SET node = $1
                         WHERE status = 'running'
                           AND (node IS NULL OR node NOT IN
                                (SELECT id FROM cluster_nodes WHERE lease_until > {NOW_MS}))
                         RETURNING created_at, id"
                    ),
                    &[&node],
                )?
                .iter()
                .map(|r| (r.get(0), JobId::from(r.get::<_, String>(1))))
                .collect();
            taken.sort();
            Ok(taken.into_iter().map(|(_, id)| id).collect())
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
            // Locked: a node taken for gone may still be running a chunk.
            let Some(state) = c.query_opt(
                "SELECT endpoint_id, since, cursor, status, node FROM jobs WHERE id = $1
                 FOR UPDATE",
                &[&id.as_str()],
            )?
            else {
                return Ok(gone);
            };
            let endpoint = EndpointId::from(state.get::<_, String>(0));
            let (since, cursor, status): (i64, i64, String) =
                (state.get(1), state.get(2), state.get(3));
            let runs_elsewhere = state.get::<_, Option<&str>>(4) != Some(node.as_str());
            if runs_elsewhere || status != JobStatus::Running.as_str() {
                return Ok(Chunk {
                    made_due: 0,
                    job: job(c.conn(), &id)?,
                    runs_elsewhere,
                });
            }
            let e = c.query_one(
                "SELECT ordering IS NOT DISTINCT FROM 'device', disabled, deleted_at IS NOT NULL
                 FROM endpoints WHERE id = $1",
                &[&endpoint.as_str()],
            )?;
            let (ordered, disabled, deleted): (bool, bool, bool) = (e.get(0), e.get(1), e.get(2));
            if deleted {
                return Ok(gone);
            }
            let picked: Vec<(i64, i64, Option<DeviceId>)> = c
                .query(
                    &format!(
                        "SELECT d.id, d.event_seq,
                                (SELECT device_id FROM events WHERE seq = d.event_seq)
                         {CANDIDATES} ORDER BY d.id LIMIT $4"
                    ),
                    &[&endpoint.as_str(), &since, &cursor, &(limit as i64)],
                )?
                .iter()
                .map(|r| {
                    (
                        r.get(0),
                        r.get(1),
                        r.get::<_, Option<String>>(2).map(DeviceId::from),
                    )
                })
                .collect();
            for (_, seq, device) in &picked {
                let key = order_key(ordered, device.as_ref());
                enqueue(c, *seq, &endpoint, key, disabled, now)?;
            }
            let finished = picked.len() < limit;
            let last = picked.last().map(|p| p.0).unwrap_or(cursor);
            c.execute(
                "UPDATE jobs SET done = done + $2, cursor = $3,
                        status = CASE WHEN $4 THEN $6::TEXT ELSE status END,
                        finished_at = CASE WHEN $4 THEN $5::BIGINT ELSE NULL END
                 WHERE id = $1",
                &[
                    &id.as_str(),
                    &(picked.len() as i64),
                    &last,
                    &finished,
                    &now,
                    &JobStatus::Done.as_str(),
                ],
            )?;
            Ok(Chunk {
                made_due: picked.len(),
                job: job(c.conn(), &id)?,
                runs_elsewhere: false,
            })
        })
        .await
    }
}
