use rusqlite::{params, OptionalExtension, Row};

use super::endpoints::endpoint_owned;
use super::fanout::enqueue;
use super::SqliteStore;
use crate::jobs::{Job, JobStore};
use crate::store::{StoreError, StoreResult};

const COLUMNS: &str = "id, kind, endpoint_id, since, status, total, done, created_at, finished_at";

fn job_row(r: &Row<'_>) -> rusqlite::Result<Job> {
    Ok(Job {
        id: r.get(0)?,
        kind: r.get(1)?,
        endpoint_id: r.get(2)?,
        since: r.get(3)?,
        status: r.get(4)?,
        total: r.get(5)?,
        done: r.get(6)?,
        created_at: r.get(7)?,
        finished_at: r.get(8)?,
    })
}

/// Failed deliveries to ?1 since ?2, with id above ?3, not followed by another delivery of
/// the same event to the same endpoint. The later ones are looked for among the event's
/// deliveries: the endpoint's would be everything it was sent since.
pub(super) const CANDIDATES: &str = "FROM deliveries d
     WHERE d.endpoint_id = ?1 AND d.status = 'failed' AND d.created_at >= ?2 AND d.id > ?3
       AND NOT EXISTS (SELECT 1 FROM deliveries later INDEXED BY deliveries_event
                       WHERE later.event_seq = d.event_seq AND later.endpoint_id = d.endpoint_id
                         AND later.id > d.id)";

#[async_trait::async_trait]
impl JobStore for SqliteStore {
    async fn create_recover_job(
        &self,
        account: String,
        endpoint_id: String,
        since: i64,
        now: i64,
    ) -> StoreResult<Job> {
        self.write(move |c| {
            if !endpoint_owned(c, &account, &endpoint_id)? {
                return Err(StoreError::NotFound("endpoint"));
            }
            let disabled: bool = c.query_row(
                "SELECT disabled FROM endpoints WHERE id = ?1",
                [&endpoint_id],
                |r| r.get(0),
            )?;
            if disabled {
                return Err(StoreError::Conflict(
                    "the endpoint is disabled; enable it first".into(),
                ));
            }
            let total: i64 = c.query_row(
                &format!("SELECT COUNT(*) {CANDIDATES}"),
                params![endpoint_id, since, 0],
                |r| r.get(0),
            )?;
            let id = crate::ids::new_id("job");
            c.execute(
                "INSERT INTO jobs (id, account_id, kind, endpoint_id, since, status, total, created_at)
                 VALUES (?1, ?2, 'recover', ?3, ?4, 'running', ?5, ?6)",
                params![id, account, endpoint_id, since, total, now],
            )?;
            Ok(c.query_row(
                &format!("SELECT {COLUMNS} FROM jobs WHERE id = ?1"),
                [&id],
                job_row,
            )?)
        })
        .await
    }

    async fn get_job(&self, account: String, id: String) -> StoreResult<Job> {
        self.read(move |c| {
            c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM jobs WHERE account_id = ?1 AND id = ?2
                   AND endpoint_id NOT IN (SELECT id FROM endpoints WHERE deleted_at IS NOT NULL)"
            ))?
            .query_row(params![account, id], job_row)
            .optional()?
            .ok_or(StoreError::NotFound("job"))
        })
        .await
    }

    async fn running_jobs(&self) -> StoreResult<Vec<String>> {
        self.read(|c| {
            let mut s = c.prepare_cached(
                "SELECT id FROM jobs WHERE status = 'running' ORDER BY created_at",
            )?;
            let rows = s.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn run_job_chunk(
        &self,
        id: String,
        limit: usize,
        now: i64,
    ) -> StoreResult<(usize, bool)> {
        self.write(move |c| {
            let job: Option<(String, i64, i64, String)> = c
                .query_row(
                    "SELECT endpoint_id, since, cursor, status FROM jobs WHERE id = ?1",
                    [&id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()?;
            // Gone with its endpoint or account, or already done.
            let Some((endpoint, since, cursor, status)) = job else {
                return Ok((0, true));
            };
            if status != "running" {
                return Ok((0, true));
            }
            let (ordered, disabled, deleted): (bool, bool, bool) = c.query_row(
                "SELECT ordering IS 'device', disabled, deleted_at IS NOT NULL
                 FROM endpoints WHERE id = ?1",
                [&endpoint],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            // Its endpoint deleted, the job goes with it once the endpoint is purged.
            if deleted {
                return Ok((0, true));
            }
            let picked: Vec<(i64, i64, Option<String>)> = c
                .prepare(&format!(
                    "SELECT d.id, d.event_seq,
                            (SELECT device_id FROM events WHERE seq = d.event_seq)
                     {CANDIDATES} ORDER BY d.id LIMIT ?4"
                ))?
                .query_map(params![endpoint, since, cursor, limit as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?
                .collect::<Result<_, _>>()?;
            for (_, seq, device) in &picked {
                let order_key = device.as_deref().filter(|_| ordered);
                enqueue(c, *seq, &endpoint, order_key, disabled, now)?;
            }
            let finished = picked.len() < limit;
            let last = picked.last().map(|p| p.0).unwrap_or(cursor);
            c.execute(
                "UPDATE jobs SET done = done + ?2, cursor = ?3,
                        status = CASE WHEN ?4 THEN 'done' ELSE status END,
                        finished_at = CASE WHEN ?4 THEN ?5 ELSE NULL END
                 WHERE id = ?1",
                params![id, picked.len() as i64, last, finished, now],
            )?;
            Ok((picked.len(), finished))
        })
        .await
    }
}
