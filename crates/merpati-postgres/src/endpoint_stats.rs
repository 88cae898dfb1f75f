//! Endpoints' attempts a minute: added in the transaction that records the attempts, read
//! summed over a window.

use merpati_domain::delivery::AttemptRecord;
use merpati_domain::endpoint_stats::{self, Backlog, EndpointStatsStore, Tally, BUCKETS, KEPT_MS};
use merpati_domain::ids::{AccountId, EndpointId};
use merpati_domain::{StoreError, StoreResult};

use crate::conn::{Conn, Param};
use crate::error::DbResult;
use crate::writer::Tx;
use crate::PostgresStore;

const ADD: &str = "INSERT INTO endpoint_minutes
    (endpoint_id, minute, succeeded, failed, b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11, b12)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
    ON CONFLICT (endpoint_id, minute) DO UPDATE SET
        succeeded = endpoint_minutes.succeeded + excluded.succeeded,
        failed = endpoint_minutes.failed + excluded.failed,
        b0 = endpoint_minutes.b0 + excluded.b0, b1 = endpoint_minutes.b1 + excluded.b1,
        b2 = endpoint_minutes.b2 + excluded.b2, b3 = endpoint_minutes.b3 + excluded.b3,
        b4 = endpoint_minutes.b4 + excluded.b4, b5 = endpoint_minutes.b5 + excluded.b5,
        b6 = endpoint_minutes.b6 + excluded.b6, b7 = endpoint_minutes.b7 + excluded.b7,
        b8 = endpoint_minutes.b8 + excluded.b8, b9 = endpoint_minutes.b9 + excluded.b9,
        b10 = endpoint_minutes.b10 + excluded.b10, b11 = endpoint_minutes.b11 + excluded.b11,
        b12 = endpoint_minutes.b12 + excluded.b12";

/// Adds a batch of attempts to their endpoints' minutes, and lets minutes older than a day
/// go. Endpoints deleted meanwhile are skipped.
pub(crate) fn add_attempts(tx: &mut Tx<'_>, records: &[AttemptRecord]) -> DbResult<()> {
    let tallies = endpoint_stats::by_minute(records);
    // Endpoints purged meanwhile have no row to refer to.
    let mut current: Option<(&EndpointId, bool)> = None;
    for ((endpoint, minute), t) in &tallies {
        if current.is_none_or(|(e, _)| e != endpoint) {
            let exists = tx
                .query_opt(
                    "SELECT 1 FROM endpoints WHERE id = $1",
                    &[&endpoint.as_str()],
                )?
                .is_some();
            if exists {
                tx.execute(
                    "DELETE FROM endpoint_minutes WHERE endpoint_id = $1 AND minute < $2",
                    &[&endpoint.as_str(), &(minute - KEPT_MS)],
                )?;
            }
            current = Some((endpoint, exists));
        }
        if current.is_some_and(|(_, exists)| !exists) {
            continue;
        }
        let id = endpoint.as_str();
        let mut values: Vec<Param<'_>> = vec![&id, minute, &t.succeeded, &t.failed];
        values.extend(t.latency.iter().map(|n| n as Param<'_>));
        tx.execute(ADD, &values)?;
    }
    Ok(())
}

fn endpoint_of(c: &mut Conn, account: &AccountId, endpoint: &EndpointId) -> DbResult<()> {
    c.query_opt(
        "SELECT 1 FROM endpoints WHERE id = $1 AND account_id = $2 AND deleted_at IS NULL",
        &[&endpoint.as_str(), &account.as_str()],
    )?
    .ok_or(StoreError::NotFound("endpoint"))?;
    Ok(())
}

#[async_trait::async_trait]
impl EndpointStatsStore for PostgresStore {
    async fn endpoint_backlog(
        &self,
        account: AccountId,
        endpoint: EndpointId,
    ) -> StoreResult<Backlog> {
        self.read(move |c| {
            endpoint_of(c, &account, &endpoint)?;
            // Each count reads its own partial index.
            let mut count = |status: &str| -> DbResult<i64> {
                Ok(c.query_one(
                    &format!(
                        "SELECT COUNT(*) FROM deliveries
                         WHERE endpoint_id = $1 AND status = '{status}'"
                    ),
                    &[&endpoint.as_str()],
                )?
                .get(0))
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
            endpoint_of(c, &account, &endpoint)?;
            let from_minute =
                from.div_euclid(endpoint_stats::MINUTE_MS) * endpoint_stats::MINUTE_MS;
            let sums = (0..2 + BUCKETS)
                .map(|i| {
                    let column = match i {
                        0 => "succeeded".to_string(),
                        1 => "failed".to_string(),
                        b => format!("b{}", b - 2),
                    };
                    format!("COALESCE(SUM({column}), 0)::BIGINT")
                })
                .collect::<Vec<_>>()
                .join(", ");
            let r = c.query_one(
                &format!(
                    "SELECT {sums} FROM endpoint_minutes
                     WHERE endpoint_id = $1 AND minute >= $2 AND minute < $3"
                ),
                &[&endpoint.as_str(), &from_minute, &to],
            )?;
            let mut t = Tally {
                succeeded: r.get(0),
                failed: r.get(1),
                ..Default::default()
            };
            for i in 0..BUCKETS {
                t.latency[i] = r.get(2 + i);
            }
            Ok(t)
        })
        .await
    }
}
