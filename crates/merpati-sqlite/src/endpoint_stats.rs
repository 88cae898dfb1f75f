//! Endpoints' attempts a minute: added in the transaction that records the attempts, read
//! summed over a window.

use merpati_domain::delivery::AttemptRecord;
use merpati_domain::endpoint_stats::{self, Backlog, EndpointStatsStore, Tally, BUCKETS, KEPT_MS};
use merpati_domain::ids::{AccountId, EndpointId};
use merpati_domain::StoreResult;
use rusqlite::{params, params_from_iter, OptionalExtension};

use crate::endpoints::require_endpoint;
use crate::error::DbResult;
use crate::writer::Tx;
use crate::SqliteStore;

const ADD: &str = "INSERT INTO endpoint_minutes
    (endpoint_id, minute, succeeded, failed, b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11, b12)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)
    ON CONFLICT (endpoint_id, minute) DO UPDATE SET
        succeeded = succeeded + excluded.succeeded, failed = failed + excluded.failed,
        b0 = b0 + excluded.b0, b1 = b1 + excluded.b1, b2 = b2 + excluded.b2,
        b3 = b3 + excluded.b3, b4 = b4 + excluded.b4, b5 = b5 + excluded.b5,
        b6 = b6 + excluded.b6, b7 = b7 + excluded.b7, b8 = b8 + excluded.b8,
        b9 = b9 + excluded.b9, b10 = b10 + excluded.b10, b11 = b11 + excluded.b11,
        b12 = b12 + excluded.b12";

/// Adds a batch of attempts to their endpoints' minutes, and lets minutes older than a day
/// go. Endpoints deleted meanwhile are skipped.
pub(crate) fn add_attempts(tx: &mut Tx<'_>, records: &[AttemptRecord]) -> DbResult<()> {
    let tallies = endpoint_stats::by_minute(records);
    // Endpoints purged meanwhile have no row to refer to.
    let mut current: Option<(&EndpointId, bool)> = None;
    for ((endpoint, minute), t) in &tallies {
        if current.is_none_or(|(e, _)| e != endpoint) {
            let exists = tx
                .prepare_cached("SELECT 1 FROM endpoints WHERE id = ?1")?
                .query_row([endpoint.as_str()], |_| Ok(()))
                .optional()?
                .is_some();
            if exists {
                tx.prepare_cached(
                    "DELETE FROM endpoint_minutes WHERE endpoint_id = ?1 AND minute < ?2",
                )?
                .execute(params![endpoint.as_str(), minute - KEPT_MS])?;
            }
            current = Some((endpoint, exists));
        }
        if current.is_some_and(|(_, exists)| !exists) {
            continue;
        }
        let mut values: Vec<rusqlite::types::Value> = vec![
            endpoint.as_str().to_string().into(),
            (*minute).into(),
            t.succeeded.into(),
            t.failed.into(),
        ];
        values.extend(t.latency.iter().map(|n| rusqlite::types::Value::from(*n)));
        tx.prepare_cached(ADD)?.execute(params_from_iter(values))?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl EndpointStatsStore for SqliteStore {
    async fn endpoint_backlog(
        &self,
        account: AccountId,
        endpoint: EndpointId,
    ) -> StoreResult<Backlog> {
        self.read(move |c| {
            require_endpoint(c, &account, &endpoint)?;
            // Each count reads its own partial index.
            let count = |status: &str| -> DbResult<i64> {
                Ok(c.prepare_cached(&format!(
                    "SELECT COUNT(*) FROM deliveries WHERE endpoint_id = ?1 AND status = '{status}'"
                ))?
                .query_row([endpoint.as_str()], |r| r.get(0))?)
            };
            Ok(Backlog {
                held: count("held")?,
                failed: count("failed")?,
            })
        })
        .await
    }

    async fn endpoint_tally(
        &self,
        account: AccountId,
        endpoint: EndpointId,
        from: i64,
        to: i64,
    ) -> StoreResult<Tally> {
        self.read(move |c| {
            require_endpoint(c, &account, &endpoint)?;
            let from_minute =
                from.div_euclid(endpoint_stats::MINUTE_MS) * endpoint_stats::MINUTE_MS;
            let t = c
                .prepare_cached(
                    "SELECT COALESCE(SUM(succeeded), 0), COALESCE(SUM(failed), 0),
                        COALESCE(SUM(b0), 0), COALESCE(SUM(b1), 0), COALESCE(SUM(b2), 0),
                        COALESCE(SUM(b3), 0), COALESCE(SUM(b4), 0), COALESCE(SUM(b5), 0),
                        COALESCE(SUM(b6), 0), COALESCE(SUM(b7), 0), COALESCE(SUM(b8), 0),
                        COALESCE(SUM(b9), 0), COALESCE(SUM(b10), 0), COALESCE(SUM(b11), 0),
                        COALESCE(SUM(b12), 0)
                     FROM endpoint_minutes WHERE endpoint_id = ?1 AND minute >= ?2 AND minute < ?3",
                )?
                .query_row(params![endpoint.as_str(), from_minute, to], |r| {
                    let mut t = Tally {
                        succeeded: r.get(0)?,
                        failed: r.get(1)?,
                        ..Default::default()
                    };
                    for i in 0..BUCKETS {
                        t.latency[i] = r.get(2 + i)?;
                    }
                    Ok(t)
                })?;
            Ok(t)
        })
        .await
    }
}
