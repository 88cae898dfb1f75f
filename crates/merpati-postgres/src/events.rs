//! The event log: listing and reading events with their deliveries and attempts, resending
//! and replaying, and pruning what retention lets go.

use merpati_domain::delivery::DeliveryStatus;
use merpati_domain::device::Scope;
use merpati_domain::event::{
    Attempt, DeliveryDetail, EventDetail, EventFilter, EventStore, EventSummary,
};
use merpati_domain::fanout::{order_key, replay_to};
use merpati_domain::ids::{
    AccountId, BusinessId, ChannelId, DeliveryId, DeviceId, EndpointId, EventId,
};
use merpati_domain::retention::first_young;
use merpati_domain::{StoreError, StoreResult};
use postgres::Row;

use crate::conn::{Conn, Param};
use crate::endpoints::endpoint_owned;
use crate::error::DbResult;
use crate::fanout::{enqueue, fan_out};
use crate::rows::word;
use crate::PostgresStore;

const SUMMARY_COLUMNS: &str = "id, type, device_id, channel_id, business_id, created_at, seq";

fn summary_row(r: &Row) -> EventSummary {
    EventSummary {
        id: EventId::from(r.get::<_, String>(0)),
        event_type: r.get(1),
        device_id: r.get::<_, Option<String>>(2).map(DeviceId::from),
        channel_id: r.get::<_, Option<String>>(3).map(ChannelId::from),
        business_id: r.get::<_, Option<String>>(4).map(BusinessId::from),
        created_at: r.get(5),
        seq: r.get(6),
    }
}

/// The number below which every event was created before `before` (the domain's bisection
/// over the stored numbers), or None when there are no events.
pub(crate) fn first_young_seq(c: &mut Conn, before: i64) -> DbResult<Option<i64>> {
    let Some((first, _)) = at_or_after(c, i64::MIN)? else {
        return Ok(None);
    };
    let last: i64 = c.query_one("SELECT MAX(seq) FROM events", &[])?.get(0);
    Ok(Some(first_young(first, last, before, |seq| {
        at_or_after(c, seq)
    })?))
}

/// The first event numbered `seq` or more, and when it was created.
fn at_or_after(c: &mut Conn, seq: i64) -> StoreResult<Option<(i64, i64)>> {
    Ok(c.query_opt(
        "SELECT seq, created_at FROM events WHERE seq >= $1 ORDER BY seq LIMIT 1",
        &[&seq],
    )
    .map_err(StoreError::from)?
    .map(|r| (r.get(0), r.get(1))))
}

/// A statement deleting the events that `gone` (a query of their numbers, `seq`) names,
/// with their deliveries, those deliveries' attempts and the events' rids: the backend
/// keeps these references (migration 7). It changes as many rows as events went.
pub(crate) fn delete_events(gone: &str) -> String {
    format!(
        "WITH gone AS ({gone}), deliveries_gone AS (
             DELETE FROM deliveries WHERE event_seq IN (SELECT seq FROM gone) RETURNING id
         ), attempts_gone AS (
             DELETE FROM attempts WHERE delivery_id IN (SELECT id FROM deliveries_gone)
         ), rids_gone AS (
             DELETE FROM event_rids WHERE event_seq IN (SELECT seq FROM gone)
         )
         DELETE FROM events WHERE seq IN (SELECT seq FROM gone)"
    )
}

/// The statuses of a delivery that still owes its event, as SQL.
pub(crate) fn owed_statuses() -> String {
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

#[async_trait::async_trait]
impl EventStore for PostgresStore {
    async fn list_events(
        &self,
        account: AccountId,
        filter: EventFilter,
        before_seq: Option<i64>,
        limit: usize,
    ) -> StoreResult<Vec<EventSummary>> {
        self.read(move |c| {
            let account = account.into_string();
            let event_type = filter.event_type;
            let device = filter.device_id.map(DeviceId::into_string);
            let limit = limit as i64;
            let mut sql = format!("SELECT {SUMMARY_COLUMNS} FROM events WHERE account_id = $1");
            let mut params: Vec<Param<'_>> = vec![&account];
            let conditions: [(&str, Option<Param<'_>>); 5] = [
                ("type = ", event_type.as_ref().map(|t| t as Param<'_>)),
                ("device_id = ", device.as_ref().map(|d| d as Param<'_>)),
                (
                    "created_at >= ",
                    filter.from.as_ref().map(|f| f as Param<'_>),
                ),
                ("created_at < ", filter.to.as_ref().map(|t| t as Param<'_>)),
                ("seq < ", before_seq.as_ref().map(|b| b as Param<'_>)),
            ];
            for (condition, value) in conditions {
                if let Some(v) = value {
                    params.push(v);
                    sql.push_str(&format!(" AND {condition}${}", params.len()));
                }
            }
            params.push(&limit);
            sql.push_str(&format!(" ORDER BY seq DESC LIMIT ${}", params.len()));
            Ok(c.query(&sql, &params)?.iter().map(summary_row).collect())
        })
        .await
    }

    async fn get_event(&self, account: AccountId, event: EventId) -> StoreResult<EventDetail> {
        self.read(move |c| {
            let row = c
                .query_opt(
                    &format!(
                        "SELECT {SUMMARY_COLUMNS}, payload FROM events
                         WHERE account_id = $1 AND id = $2"
                    ),
                    &[&account.as_str(), &event.as_str()],
                )?
                .ok_or(StoreError::NotFound("event"))?;
            let summary = summary_row(&row);
            let payload = serde_json::from_str(row.get(7))
                .map_err(|e| StoreError::Internal(format!("event {event} payload: {e}")))?;
            let mut deliveries = c
                .query(
                    "SELECT id, endpoint_id, status, attempts, next_attempt_at, created_at,
                            completed_at
                     FROM deliveries WHERE event_seq = $1
                       AND endpoint_id NOT IN (SELECT id FROM endpoints WHERE deleted_at IS NOT NULL)
                     ORDER BY id",
                    &[&summary.seq],
                )?
                .iter()
                .map(|r| {
                    let status = word(r.get(2), DeliveryStatus::parse)?;
                    let pending = status == DeliveryStatus::Pending;
                    Ok(DeliveryDetail {
                        id: DeliveryId(r.get(0)),
                        endpoint_id: EndpointId::from(r.get::<_, String>(1)),
                        status,
                        attempt_count: r.get(3),
                        next_attempt_at: if pending { r.get(4) } else { None },
                        created_at: r.get(5),
                        completed_at: r.get(6),
                        attempts: Vec::new(),
                    })
                })
                .collect::<DbResult<Vec<DeliveryDetail>>>()?;
            for d in &mut deliveries {
                d.attempts = c
                    .query(
                        "SELECT attempt, started_at, duration_ms, status_code, error_kind, error,
                                response_body
                         FROM attempts WHERE delivery_id = $1 ORDER BY attempt",
                        &[&d.id.0],
                    )?
                    .iter()
                    .map(|r| Attempt {
                        attempt: r.get(0),
                        started_at: r.get(1),
                        duration_ms: r.get(2),
                        status_code: r.get::<_, Option<i64>>(3).map(|s| s as u16),
                        error_kind: r.get(4),
                        error: r.get(5),
                        response_body: r.get(6),
                    })
                    .collect();
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
        self.prune_parts(before, limit).await
    }

    async fn turn_event_log(&self, now: i64, span: std::time::Duration) -> StoreResult<bool> {
        self.turn_parts(now, span).await
    }

    async fn resend_delivery(
        &self,
        account: AccountId,
        delivery: DeliveryId,
        now: i64,
    ) -> StoreResult<DeliveryId> {
        self.write(move |c| {
            let r = c
                .query_opt(
                    "SELECT d.event_seq, d.endpoint_id, ep.disabled,
                            ep.ordering IS NOT DISTINCT FROM 'device', e.device_id
                     FROM deliveries d
                     JOIN events e ON e.seq = d.event_seq
                     JOIN endpoints ep ON ep.id = d.endpoint_id
                     WHERE d.id = $1 AND e.account_id = $2 AND ep.deleted_at IS NULL",
                    &[&delivery.0, &account.as_str()],
                )?
                .ok_or(StoreError::NotFound("delivery"))?;
            let (seq, endpoint, disabled, ordered): (i64, String, bool, bool) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            let device = r.get::<_, Option<String>>(4).map(DeviceId::from);
            if disabled {
                return Err(StoreError::Conflict(
                    "the endpoint is disabled; enable it first".into(),
                )
                .into());
            }
            let key = order_key(ordered, device.as_ref());
            enqueue(c, seq, &EndpointId::from(endpoint), key, false, now)
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
                .query_opt(
                    &format!(
                        "SELECT {SUMMARY_COLUMNS} FROM events WHERE account_id = $1 AND id = $2"
                    ),
                    &[&account.as_str(), &event.as_str()],
                )?
                .as_ref()
                .map(summary_row)
                .ok_or(StoreError::NotFound("event"))?;
            if let Some(endpoint) = &endpoint {
                if !endpoint_owned(tx.conn(), &account, endpoint)? {
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
