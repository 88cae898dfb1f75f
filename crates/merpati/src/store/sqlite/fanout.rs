//! Storing an event and fanning it out to the endpoints that subscribe to it, inside the
//! caller's transaction: the event and its deliveries are committed together or not at all.

use rusqlite::{params, Connection};

use super::parse_json_column;
use crate::endpoints::{Scope, Subscription};
use crate::store::StoreResult;

/// An account's endpoints, loaded once per transaction.
pub(super) fn subscriptions(c: &Connection, account: &str) -> StoreResult<Vec<Subscription>> {
    let mut s = c.prepare_cached(
        "SELECT id, events, business_ids, channel_ids, device_ids, disabled, ordering
         FROM endpoints WHERE account_id = ?1",
    )?;
    let rows = s.query_map([account], |r| {
        let events: Option<String> = r.get(1)?;
        Ok(Subscription {
            endpoint_id: r.get(0)?,
            events: events.as_deref().map(parse_json_column).transpose()?,
            business_ids: parse_json_column(&r.get::<_, String>(2)?)?,
            channel_ids: parse_json_column(&r.get::<_, String>(3)?)?,
            device_ids: parse_json_column(&r.get::<_, String>(4)?)?,
            disabled: r.get(5)?,
            ordered: r.get::<_, Option<String>>(6)?.as_deref() == Some("device"),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(super) struct NewEvent<'a> {
    pub id: &'a str,
    pub account_id: &'a str,
    pub event_type: &'a str,
    pub scope: Scope<'a>,
    pub created_at: i64,
}

/// Inserts the event; `payload` is given the event's system-wide sequence number (the
/// `data.id` of inbound payloads) and returns the exact body to deliver.
pub(super) fn insert_event(
    c: &Connection,
    e: &NewEvent<'_>,
    payload: impl FnOnce(i64) -> String,
) -> StoreResult<i64> {
    c.prepare_cached(
        "INSERT INTO events (id, account_id, type, device_id, channel_id, business_id, payload,
                             created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, '', ?7)",
    )?
    .execute(params![
        e.id,
        e.account_id,
        e.event_type,
        e.scope.device_id,
        e.scope.channel_id,
        e.scope.business_id,
        e.created_at
    ])?;
    let seq = c.last_insert_rowid();
    c.prepare_cached("UPDATE events SET payload = ?2 WHERE seq = ?1")?
        .execute(params![seq, payload(seq)])?;
    Ok(seq)
}

/// Creates one delivery per matching endpoint. Returns how many are due now.
pub(super) fn fan_out(
    c: &Connection,
    subs: &[Subscription],
    event_seq: i64,
    event_type: &str,
    scope: Scope<'_>,
    now: i64,
) -> StoreResult<usize> {
    let mut due = 0;
    for sub in subs.iter().filter(|s| s.matches(event_type, scope)) {
        let order_key = scope.device_id.filter(|_| sub.ordered);
        if enqueue(c, event_seq, &sub.endpoint_id, order_key, sub.disabled, now)? {
            due += 1;
        }
    }
    Ok(due)
}

/// Queues one delivery of the event to the endpoint: held while the endpoint is disabled,
/// waiting when an earlier delivery of the same device queue has not reached its outcome,
/// due now otherwise. Returns whether it is due now.
pub(super) fn enqueue(
    c: &Connection,
    event_seq: i64,
    endpoint_id: &str,
    order_key: Option<&str>,
    disabled: bool,
    now: i64,
) -> StoreResult<bool> {
    let waits = match order_key {
        Some(key) if !disabled => queue_busy(c, endpoint_id, key)?,
        _ => false,
    };
    let (status, next) = if disabled {
        ("held", None)
    } else if waits {
        ("pending", None)
    } else {
        ("pending", Some(now))
    };
    c.prepare_cached(
        "INSERT INTO deliveries (event_seq, endpoint_id, status, next_attempt_at, created_at,
                                 order_key)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        event_seq,
        endpoint_id,
        status,
        next,
        now,
        order_key
    ])?;
    Ok(next.is_some())
}

/// Whether a device queue has a delivery that has not reached its outcome.
fn queue_busy(c: &Connection, endpoint_id: &str, key: &str) -> StoreResult<bool> {
    Ok(c.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM deliveries
                        WHERE endpoint_id = ?1 AND order_key = ?2 AND status = 'pending')",
    )?
    .query_row(params![endpoint_id, key], |r| r.get(0))?)
}

/// Makes the first waiting delivery of a device queue due, unless one of the queue is
/// already due or under way. Returns how many became due (0 or 1).
pub(super) fn advance_queue(
    c: &Connection,
    endpoint_id: &str,
    key: &str,
    now: i64,
) -> StoreResult<usize> {
    Ok(c.prepare_cached(
        "UPDATE deliveries SET next_attempt_at = ?3
         WHERE id = (SELECT id FROM deliveries
                     WHERE endpoint_id = ?1 AND order_key = ?2 AND status = 'pending'
                     ORDER BY event_seq, id LIMIT 1)
           AND next_attempt_at IS NULL",
    )?
    .execute(params![endpoint_id, key, now])?)
}

/// Releases an endpoint's held deliveries: unordered ones are due now, and each device
/// queue starts again from its earliest event. Returns how many are due.
pub(super) fn release_held(c: &Connection, endpoint_id: &str, now: i64) -> StoreResult<usize> {
    let mut due = c
        .prepare_cached(
            "UPDATE deliveries SET status = 'pending', next_attempt_at = ?2
             WHERE endpoint_id = ?1 AND status = 'held' AND order_key IS NULL",
        )?
        .execute(params![endpoint_id, now])?;
    c.prepare_cached(
        "UPDATE deliveries SET status = 'pending', next_attempt_at = NULL
         WHERE endpoint_id = ?1 AND status = 'held' AND order_key IS NOT NULL",
    )?
    .execute([endpoint_id])?;
    let keys: Vec<String> = c
        .prepare_cached(
            "SELECT DISTINCT order_key FROM deliveries
             WHERE endpoint_id = ?1 AND status = 'pending' AND order_key IS NOT NULL",
        )?
        .query_map([endpoint_id], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for key in keys {
        due += advance_queue(c, endpoint_id, &key, now)?;
    }
    Ok(due)
}
