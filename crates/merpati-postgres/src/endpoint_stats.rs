//! Endpoints' attempts a minute: added in the transaction that records the attempts, read
//! summed over a window.

use merpati_domain::delivery::AttemptRecord;
use merpati_domain::endpoint_stats::{self, Backlog, EndpointStatsStore, Tally, BUCKETS, KEPT_MS};
use merpati_domain::ids::{AccountId, EndpointId};
use merpati_domain::StoreResult;

use crate::conn::Param;
use crate::endpoints::require_endpoint;
use crate::error::DbResult;
use crate::writer::Tx;
use crate::PostgresStore;

/// Adds each (endpoint, minute)'s tally, for endpoints still there, and lets the minutes of
/// those endpoints older than `$18` go: one statement.
const ADD: &str = "WITH gone AS (
         DELETE FROM endpoint_minutes
         WHERE endpoint_id IN (SELECT DISTINCT unnest($1::TEXT[])) AND minute < $18
     )
     INSERT INTO endpoint_minutes
         (endpoint_id, minute, succeeded, failed, b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, b10,
          b11, b12)
     SELECT t.* FROM UNNEST($1::TEXT[], $2::BIGINT[], $3::BIGINT[], $4::BIGINT[],
                            $5::BIGINT[], $6::BIGINT[], $7::BIGINT[], $8::BIGINT[],
                            $9::BIGINT[], $10::BIGINT[], $11::BIGINT[], $12::BIGINT[],
                            $13::BIGINT[], $14::BIGINT[], $15::BIGINT[], $16::BIGINT[],
                            $17::BIGINT[])
         AS t(endpoint_id, minute, succeeded, failed, b0, b1, b2, b3, b4, b5, b6, b7, b8, b9,
              b10, b11, b12)
     WHERE EXISTS (SELECT 1 FROM endpoints e WHERE e.id = t.endpoint_id)
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
    let Some(newest) = tallies.keys().map(|(_, minute)| *minute).max() else {
        return Ok(());
    };
    let endpoints: Vec<&str> = tallies.keys().map(|(e, _)| e.as_str()).collect();
    let minutes: Vec<i64> = tallies.keys().map(|(_, m)| *m).collect();
    let succeeded: Vec<i64> = tallies.values().map(|t| t.succeeded).collect();
    let failed: Vec<i64> = tallies.values().map(|t| t.failed).collect();
    let buckets: Vec<Vec<i64>> = (0..BUCKETS)
        .map(|b| tallies.values().map(|t| t.latency[b]).collect())
        .collect();
    let oldest_kept = newest - KEPT_MS;
    let mut params: Vec<Param<'_>> = vec![&endpoints, &minutes, &succeeded, &failed];
    params.extend(buckets.iter().map(|b| b as Param<'_>));
    params.push(&oldest_kept);
    tx.conn().execute(ADD, &params)?;
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
            require_endpoint(c, &account, &endpoint)?;
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
            require_endpoint(c, &account, &endpoint)?;
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
