//! Storing an event and fanning it out to the endpoints that subscribe to it, inside the
//! caller's transaction: the event and its deliveries are committed together or not at all.

use rusqlite::{params, Connection};

use super::parse_json_column;
use crate::endpoints::{Scope, Subscription};
use crate::store::StoreResult;

/// An account's endpoints, loaded once per transaction.
pub(super) fn subscriptions(c: &Connection, account: &str) -> StoreResult<Vec<Subscription>> {
    let mut s = c.prepare_cached(
        "SELECT id, events, business_ids, channel_ids, device_ids, disabled
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

/// Creates one delivery per matching endpoint: due now, or held while the endpoint is
/// disabled. Returns how many are due.
pub(super) fn fan_out(
    c: &Connection,
    subs: &[Subscription],
    event_seq: i64,
    event_type: &str,
    scope: Scope<'_>,
    now: i64,
) -> StoreResult<usize> {
    let mut due = 0;
    let mut insert = c.prepare_cached(
        "INSERT INTO deliveries (event_seq, endpoint_id, status, next_attempt_at, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for sub in subs.iter().filter(|s| s.matches(event_type, scope)) {
        let (status, next) = if sub.disabled {
            ("held", None)
        } else {
            due += 1;
            ("pending", Some(now))
        };
        insert.execute(params![event_seq, sub.endpoint_id, status, next, now])?;
    }
    Ok(due)
}
