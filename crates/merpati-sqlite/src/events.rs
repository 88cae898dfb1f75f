//! The event log: listing and reading events with their deliveries and attempts, resending
//! and replaying, and pruning what retention lets go.

use merpati_domain::delivery::DeliveryStatus;
use merpati_domain::device::Scope;
use merpati_domain::event::{
    Attempt, DeliveryDetail, EventDetail, EventFilter, EventStore, EventSummary,
};
use merpati_domain::fanout::{order_key, replay_to};
use merpati_domain::ids::{AccountId, DeliveryId, DeviceId, EndpointId, EventId};
use merpati_domain::retention::first_young;
use merpati_domain::{StoreError, StoreResult};
use rusqlite::types::Value as SqlValue;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Row};

use crate::endpoints::endpoint_owned;
use crate::error::DbResult;
use crate::fanout::{enqueue, fan_out};
use crate::rows::{id, opt_id, word};
use crate::SqliteStore;

const SUMMARY_COLUMNS: &str = "id, type, device_id, channel_id, business_id, created_at, seq";

fn summary_row(r: &Row<'_>) -> rusqlite::Result<EventSummary> {
    Ok(EventSummary {
        id: id(r, 0)?,
        event_type: r.get(1)?,
        device_id: opt_id(r, 2)?,
        channel_id: opt_id(r, 3)?,
        business_id: opt_id(r, 4)?,
        created_at: r.get(5)?,
        seq: r.get(6)?,
    })
}

/// The number below which every event was created before `before` (the domain's bisection
/// over the stored numbers), or None when there are no events.
pub(crate) fn first_young_seq(c: &Connection, before: i64) -> DbResult<Option<i64>> {
    let mut at_or_after = c.prepare_cached(
        "SELECT seq, created_at FROM events WHERE seq >= ?1 ORDER BY seq LIMIT 1",
    )?;
    let mut next = |seq: i64| -> StoreResult<Option<(i64, i64)>> {
        at_or_after
            .query_row([seq], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(|e| crate::error::sqlite_error(&e))
    };
    let Some((first, _)) = next(i64::MIN)? else {
        return Ok(None);
    };
    let last: i64 = c.query_row("SELECT MAX(seq) FROM events", [], |r| r.get(0))?;
    Ok(Some(first_young(first, last, before, next)?))
}

/// The statuses of a delivery that still owes its event, as SQL.
fn owed_statuses() -> String {
    [
        DeliveryStatus::Pending,
        DeliveryStatus::Held,
        DeliveryStatus::Succeeded,
        DeliveryStatus::Failed,
    ]
    .into_iter()
    .filter(|s| s.is_owed())
    .map(|s| format!("'{}'", s.as_str()))
    .collect::<Vec<_>>()
    .join(", ")
}

/// Deletes up to `limit` events created before `before`, oldest first, but for those a
/// delivery still owes.
fn prune(c: &Connection, before: i64, limit: usize) -> DbResult<usize> {
    let Some(young) = first_young_seq(c, before)? else {
        return Ok(0);
    };
    Ok(c.prepare_cached(&format!(
        "DELETE FROM events WHERE seq IN (
             SELECT e.seq FROM events e
             WHERE e.seq < ?3 AND e.created_at < ?1
               AND NOT EXISTS (SELECT 1 FROM deliveries d
                               WHERE d.event_seq = e.seq AND d.status IN ({}))
             ORDER BY e.seq LIMIT ?2)",
        owed_statuses()
    ))?
    .execute(params![before, limit as i64, young])?)
}

#[async_trait::async_trait]
impl EventStore for SqliteStore {
    async fn list_events(
        &self,
        account: AccountId,
        filter: EventFilter,
        before_seq: Option<i64>,
        limit: usize,
    ) -> StoreResult<Vec<EventSummary>> {
        self.read(move |c| {
            // Only the conditions given, so that SQLite can pick the matching index.
            let mut sql = format!("SELECT {SUMMARY_COLUMNS} FROM events WHERE account_id = ?");
            let mut args = vec![SqlValue::from(account.into_string())];
            if let Some(t) = filter.event_type {
                sql.push_str(" AND type = ?");
                args.push(t.into());
            }
            if let Some(d) = filter.device_id {
                sql.push_str(" AND device_id = ?");
                args.push(d.into_string().into());
            }
            if let Some(from) = filter.from {
                sql.push_str(" AND created_at >= ?");
                args.push(from.into());
            }
            if let Some(to) = filter.to {
                sql.push_str(" AND created_at < ?");
                args.push(to.into());
            }
            if let Some(before) = before_seq {
                sql.push_str(" AND seq < ?");
                args.push(before.into());
            }
            sql.push_str(" ORDER BY seq DESC LIMIT ?");
            args.push((limit as i64).into());
            let mut s = c.prepare_cached(&sql)?;
            let rows = s.query_map(params_from_iter(args), summary_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn get_event(&self, account: AccountId, event: EventId) -> StoreResult<EventDetail> {
        self.read(move |c| {
            let (summary, payload): (EventSummary, String) = c
                .prepare_cached(&format!(
                    "SELECT {SUMMARY_COLUMNS}, payload FROM events WHERE account_id = ?1 AND id = ?2"
                ))?
                .query_row(params![account.as_str(), event.as_str()], |r| {
                    Ok((summary_row(r)?, r.get(7)?))
                })
                .optional()?
                .ok_or(StoreError::NotFound("event"))?;
            let payload = serde_json::from_str(&payload)
                .map_err(|e| StoreError::Internal(format!("event {event} payload: {e}")))?;

            let mut deliveries: Vec<DeliveryDetail> = c
                .prepare_cached(
                    "SELECT id, endpoint_id, status, attempts, next_attempt_at, created_at,
                            completed_at
                     FROM deliveries WHERE event_seq = ?1
                       AND endpoint_id NOT IN (SELECT id FROM endpoints WHERE deleted_at IS NOT NULL)
                     ORDER BY id",
                )?
                .query_map([summary.seq], |r| {
                    let status = word(r, 2, DeliveryStatus::parse)?;
                    let pending = status == DeliveryStatus::Pending;
                    Ok(DeliveryDetail {
                        id: DeliveryId(r.get(0)?),
                        endpoint_id: id(r, 1)?,
                        status,
                        attempt_count: r.get(3)?,
                        next_attempt_at: if pending { r.get(4)? } else { None },
                        created_at: r.get(5)?,
                        completed_at: r.get(6)?,
                        attempts: Vec::new(),
                    })
                })?
                .collect::<Result<_, _>>()?;
            let mut attempts = c.prepare_cached(
                "SELECT attempt, started_at, duration_ms, status_code, error_kind, error,
                        response_body
                 FROM attempts WHERE delivery_id = ?1 ORDER BY attempt",
            )?;
            for d in &mut deliveries {
                d.attempts = attempts
                    .query_map([d.id.0], |r| {
                        Ok(Attempt {
                            attempt: r.get(0)?,
                            started_at: r.get(1)?,
                            duration_ms: r.get(2)?,
                            status_code: r.get(3)?,
                            error_kind: r.get(4)?,
                            error: r.get(5)?,
                            response_body: r.get(6)?,
                        })
                    })?
                    .collect::<Result<_, _>>()?;
            }
            Ok(EventDetail {
                summary,
                payload,
                deliveries,
            })
        })
        .await
    }

    async fn prune_events(&self, before: i64, limit: usize) -> StoreResult<usize> {
        self.write(move |c| prune(c, before, limit)).await
    }

    /// One file's log is kept whole: retention deletes it by rows.
    async fn turn_event_log(&self, _now: i64, _span: std::time::Duration) -> StoreResult<bool> {
        Ok(false)
    }

    async fn resend_delivery(
        &self,
        account: AccountId,
        delivery: DeliveryId,
        now: i64,
    ) -> StoreResult<DeliveryId> {
        self.write(move |c| {
            type Found = (i64, EndpointId, bool, bool, Option<DeviceId>);
            let (seq, endpoint, disabled, ordered, device): Found = c
                .prepare_cached(
                    "SELECT d.event_seq, d.endpoint_id, ep.disabled, ep.ordering IS 'device',
                            e.device_id
                     FROM deliveries d
                     JOIN events e ON e.seq = d.event_seq
                     JOIN endpoints ep ON ep.id = d.endpoint_id
                     WHERE d.id = ?1 AND e.account_id = ?2 AND ep.deleted_at IS NULL",
                )?
                .query_row(params![delivery.0, account.as_str()], |r| {
                    Ok((r.get(0)?, id(r, 1)?, r.get(2)?, r.get(3)?, opt_id(r, 4)?))
                })
                .optional()?
                .ok_or(StoreError::NotFound("delivery"))?;
            if disabled {
                return Err(StoreError::Conflict(
                    "the endpoint is disabled; enable it first".into(),
                )
                .into());
            }
            let key = order_key(ordered, device.as_ref());
            enqueue(c, seq, &endpoint, key, false, now)
        })
        .await
    }

    async fn replay_event(
        &self,
        account: AccountId,
        event: EventId,
        endpoint: Option<EndpointId>,
        now: i64,
    ) -> StoreResult<usize> {
        self.write(move |tx| {
            let e = tx
                .prepare_cached(&format!(
                    "SELECT {SUMMARY_COLUMNS} FROM events WHERE account_id = ?1 AND id = ?2"
                ))?
                .query_row(params![account.as_str(), event.as_str()], summary_row)
                .optional()?
                .ok_or(StoreError::NotFound("event"))?;
            if let Some(endpoint) = &endpoint {
                if !endpoint_owned(tx, &account, endpoint)? {
                    return Err(StoreError::NotFound("endpoint").into());
                }
            }
            let scope = Scope {
                business_id: e.business_id.as_ref(),
                channel_id: e.channel_id.as_ref(),
                device_id: e.device_id.as_ref(),
            };
            let subs = replay_to(&tx.subscriptions(&account)?, endpoint.as_ref());
            fan_out(tx, &subs, e.seq, &e.event_type, scope, now, None)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{column, schema_with_account};

    fn events_at(times: &[(i64, i64)]) -> Connection {
        let c = schema_with_account();
        for (seq, created_at) in times {
            c.execute(
                "INSERT INTO events (seq, id, account_id, type, payload, created_at)
                 VALUES (?1, 'evt_' || ?1, 'a', 't', '{}', ?2)",
                [seq, created_at],
            )
            .unwrap();
        }
        c
    }

    #[test]
    fn the_first_young_event_is_found_in_the_stored_numbers() {
        let c = events_at(&[(3, 100), (4, 100), (7, 200), (10, 300), (11, 300)]);
        let found = |before| first_young_seq(&c, before).unwrap();
        assert_eq!(found(50), Some(3), "nothing is old");
        assert_eq!(found(201), Some(8));
        assert_eq!(found(301), Some(12), "everything is old");
        assert_eq!(first_young_seq(&events_at(&[]), 100).unwrap(), None);
    }

    /// With the clock stepped back, the bound may pass a young event; pruning checks each
    /// event's time, so that one is kept.
    #[test]
    fn a_clock_stepped_back_never_prunes_a_young_event() {
        let c = events_at(&[(1, 100), (2, 500), (3, 100), (4, 600), (5, 100)]);
        let young = first_young_seq(&c, 200).unwrap().unwrap();
        assert!(young > 2, "the bisection passed event 2: {young}");
        assert_eq!(prune(&c, 200, 100).unwrap(), 3);
        let left: Vec<i64> = column(&c, "SELECT seq FROM events ORDER BY seq");
        assert_eq!(left, [2, 4], "the old events go, the young ones stay");
    }

    #[test]
    fn an_event_a_delivery_still_owes_is_kept() {
        assert_eq!(owed_statuses(), "'pending', 'held'");
    }
}
