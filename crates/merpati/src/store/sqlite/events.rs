use rusqlite::types::Value as SqlValue;
use rusqlite::{params, params_from_iter, OptionalExtension, Row};

use super::devices::owned;
use super::endpoint_cache::subscriptions;
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
                     FROM deliveries WHERE event_seq = ?1 ORDER BY id",
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
        self.write(move |c| {
            Ok(c.prepare_cached(
                "DELETE FROM events WHERE seq IN (
                     SELECT e.seq FROM events e
                     WHERE e.created_at < ?1
                       AND NOT EXISTS (SELECT 1 FROM deliveries d
                                       WHERE d.event_seq = e.seq
                                         AND d.status IN ('pending', 'held'))
                     ORDER BY e.seq LIMIT ?2)",
            )?
            .execute(params![before, limit as i64])?)
        })
        .await
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
                     WHERE d.id = ?1 AND e.account_id = ?2",
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
                    if !owned(c, "endpoints", &account, &endpoint_id)? {
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
