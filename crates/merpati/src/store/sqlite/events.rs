use rusqlite::types::Value as SqlValue;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Row};

use super::endpoint_cache::subscriptions;
use super::endpoints::endpoint_owned;
use super::fanout::{enqueue, fan_out};
use super::SqliteStore;
use crate::endpoints::{Scope, Subscription};
use crate::events::{
    AttemptView, DeliveryDetail, EventDetail, EventFilter, EventStore, EventSummary,
};
use crate::store::{StoreError, StoreResult};

const SUMMARY_COLUMNS: &str = "id, type, device_id, channel_id, business_id, created_at, seq";

fn summary_row(r: &Row<'_>) -> rusqlite::Result<EventSummary> {
    Ok(EventSummary {
        id: r.get(0)?,
        event_type: r.get(1)?,
        device_id: r.get(2)?,
        channel_id: r.get(3)?,
        business_id: r.get(4)?,
        created_at: r.get(5)?,
        seq: r.get(6)?,
    })
}

/// The number below which every event was created before `before`, or None when there are
/// no events. Events are numbered as they are stored, so their times rise with their
/// numbers, and a bisection over the numbers finds it in a few dozen lookups with no index
/// on the time (which every event would write). Should the clock have stepped back, an event
/// out of step is pruned later than its age says, never earlier: pruning checks each time.
fn first_young_seq(c: &Connection, before: i64) -> StoreResult<Option<i64>> {
    let mut at_or_after = c.prepare_cached(
        "SELECT seq, created_at FROM events WHERE seq >= ?1 ORDER BY seq LIMIT 1",
    )?;
    let mut next = |seq: i64| -> StoreResult<Option<(i64, i64)>> {
        Ok(at_or_after
            .query_row([seq], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    };
    let Some((mut low, _)) = next(i64::MIN)? else {
        return Ok(None);
    };
    let last: i64 = c.query_row("SELECT MAX(seq) FROM events", [], |r| r.get(0))?;
    // The first event at or after `high` is young, or there is none; every one below `low`
    // is old.
    let mut high = last + 1;
    while low < high {
        let middle = low + (high - low) / 2;
        match next(middle)? {
            Some((seq, created_at)) if created_at < before => low = seq + 1,
            _ => high = middle,
        }
    }
    Ok(Some(low))
}

/// Deletes up to `limit` events created before `before`, oldest first, but for those with a
/// delivery still to make.
fn prune(c: &Connection, before: i64, limit: usize) -> StoreResult<usize> {
    let Some(young) = first_young_seq(c, before)? else {
        return Ok(0);
    };
    Ok(c.prepare_cached(
        "DELETE FROM events WHERE seq IN (
             SELECT e.seq FROM events e
             WHERE e.seq < ?3 AND e.created_at < ?1
               AND NOT EXISTS (SELECT 1 FROM deliveries d
                               WHERE d.event_seq = e.seq AND d.status IN ('pending', 'held'))
             ORDER BY e.seq LIMIT ?2)",
    )?
    .execute(params![before, limit as i64, young])?)
}

#[async_trait::async_trait]
impl EventStore for SqliteStore {
    async fn list_events(
        &self,
        account: String,
        filter: EventFilter,
        before_seq: Option<i64>,
        limit: usize,
    ) -> StoreResult<Vec<EventSummary>> {
        self.read(move |c| {
            // Only the conditions given, so that SQLite can pick the matching index.
            let mut sql = format!("SELECT {SUMMARY_COLUMNS} FROM events WHERE account_id = ?");
            let mut args = vec![SqlValue::from(account)];
            if let Some(t) = filter.event_type {
                sql.push_str(" AND type = ?");
                args.push(t.into());
            }
            if let Some(d) = filter.device_id {
                sql.push_str(" AND device_id = ?");
                args.push(d.into());
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

    async fn get_event(&self, account: String, id: String) -> StoreResult<EventDetail> {
        self.read(move |c| {
            let (summary, payload): (EventSummary, String) = c
                .prepare_cached(&format!(
                    "SELECT {SUMMARY_COLUMNS}, payload FROM events WHERE account_id = ?1 AND id = ?2"
                ))?
                .query_row(params![account, id], |r| Ok((summary_row(r)?, r.get(7)?)))
                .optional()?
                .ok_or(StoreError::NotFound("event"))?;
            let payload = serde_json::from_str(&payload)
                .map_err(|e| StoreError::Corrupt(format!("event {id} payload: {e}")))?;

            let mut deliveries: Vec<DeliveryDetail> = c
                .prepare_cached(
                    "SELECT id, endpoint_id, status, attempts, next_attempt_at, created_at,
                            completed_at
                     FROM deliveries WHERE event_seq = ?1
                       AND endpoint_id NOT IN (SELECT id FROM endpoints WHERE deleted_at IS NOT NULL)
                     ORDER BY id",
                )?
                .query_map([summary.seq], |r| {
                    let status: String = r.get(2)?;
                    let pending = status == "pending";
                    Ok(DeliveryDetail {
                        id: r.get(0)?,
                        endpoint_id: r.get(1)?,
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
                    .query_map([d.id], |r| {
                        Ok(AttemptView {
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

    async fn resend_delivery(
        &self,
        account: String,
        delivery_id: i64,
        now: i64,
    ) -> StoreResult<i64> {
        self.write(move |c| {
            type Found = (i64, String, bool, Option<String>);
            let (seq, endpoint, disabled, order_key): Found = c
                .prepare_cached(
                    "SELECT d.event_seq, d.endpoint_id, ep.disabled,
                            CASE WHEN ep.ordering = 'device' THEN e.device_id END
                     FROM deliveries d
                     JOIN events e ON e.seq = d.event_seq
                     JOIN endpoints ep ON ep.id = d.endpoint_id
                     WHERE d.id = ?1 AND e.account_id = ?2 AND ep.deleted_at IS NULL",
                )?
                .query_row(params![delivery_id, account], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })
                .optional()?
                .ok_or(StoreError::NotFound("delivery"))?;
            if disabled {
                return Err(StoreError::Conflict(
                    "the endpoint is disabled; enable it first".into(),
                ));
            }
            enqueue(c, seq, &endpoint, order_key.as_deref(), false, now)
        })
        .await
    }

    async fn replay_event(
        &self,
        account: String,
        id: String,
        endpoint_id: Option<String>,
        now: i64,
    ) -> StoreResult<usize> {
        self.write(move |c| {
            let e = c
                .prepare_cached(&format!(
                    "SELECT {SUMMARY_COLUMNS} FROM events WHERE account_id = ?1 AND id = ?2"
                ))?
                .query_row(params![account, id], summary_row)
                .optional()?
                .ok_or(StoreError::NotFound("event"))?;
            let scope = Scope {
                business_id: e.business_id.as_deref(),
                channel_id: e.channel_id.as_deref(),
                device_id: e.device_id.as_deref(),
            };
            let subs = subscriptions(c, &account)?;
            let subs = match endpoint_id {
                // An endpoint named explicitly gets the event whatever its filters say.
                Some(endpoint_id) => {
                    if !endpoint_owned(c, &account, &endpoint_id)? {
                        return Err(StoreError::NotFound("endpoint"));
                    }
                    let named = subs
                        .iter()
                        .filter(|s| s.endpoint_id == endpoint_id)
                        .map(|s| Subscription {
                            events: None,
                            business_ids: Vec::new(),
                            channel_ids: Vec::new(),
                            device_ids: Vec::new(),
                            ..s.clone()
                        })
                        .collect();
                    std::sync::Arc::new(named)
                }
                None => subs,
            };
            fan_out(c, &subs, e.seq, &e.event_type, scope, now, None)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events_at(times: &[(i64, i64)]) -> Connection {
        let c = super::super::schema_with_account();
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
    fn the_first_young_event_is_found_across_gaps_in_the_numbers() {
        let c = events_at(&[(3, 100), (4, 100), (7, 200), (10, 300), (11, 300)]);
        let found = |before| first_young_seq(&c, before).unwrap();
        assert_eq!(found(50), Some(3), "nothing is old");
        assert_eq!(found(101), Some(5), "3 and 4 are old");
        assert_eq!(found(200), Some(5));
        assert_eq!(found(201), Some(8));
        assert_eq!(found(300), Some(8));
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
        let left: Vec<i64> = super::super::column(&c, "SELECT seq FROM events ORDER BY seq");
        assert_eq!(left, [2, 4], "the old events go, the young ones stay");
    }
}
