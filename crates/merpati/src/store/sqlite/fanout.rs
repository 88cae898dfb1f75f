//! Storing an event and fanning it out to the endpoints that subscribe to it, inside the
//! caller's transaction: the event and its deliveries are committed together or not at all.

use std::cell::Cell;

use rusqlite::{params, Connection};

use super::endpoint_cache;
use crate::delivery::{DueDelivery, Reserved};
use crate::endpoints::{Scope, Subscription};
use crate::store::StoreResult;

pub(super) struct NewEvent<'a> {
    pub id: &'a str,
    pub account_id: &'a str,
    pub event_type: &'a str,
    pub scope: Scope<'a>,
    pub created_at: i64,
    /// For an item a device sent: its rid (as a dedup key) and the digest of its content.
    pub inbound: Option<(&'a str, &'a [u8])>,
}

/// What a delivery handed over carries of its event.
pub(super) struct EventBody<'a> {
    pub id: &'a str,
    pub payload: std::sync::Arc<str>,
}

thread_local! {
    /// The number the writer gives its next event, once it has read it: only the writer
    /// stores events, so after that it need not read it again. Forgotten with every
    /// rollback (`forget_next_seq`), after which it is read again.
    static NEXT_SEQ: Cell<Option<i64>> = const { Cell::new(None) };
}

pub(super) fn forget_next_seq() {
    NEXT_SEQ.set(None);
}

/// Inserts the event; `payload` is given the event's system-wide sequence number (the
/// `data.id` of inbound payloads) and returns the exact body to deliver. Returns the
/// sequence number and that body.
pub(super) fn insert_event(
    c: &Connection,
    e: &NewEvent<'_>,
    payload: impl FnOnce(i64) -> String,
) -> StoreResult<(i64, String)> {
    // The one writer picks the next number itself, so the row is written once, payload
    // and all; AUTOINCREMENT keeps the largest number ever used in sqlite_sequence.
    let seq: i64 = match NEXT_SEQ.get() {
        Some(seq) => seq,
        None => c
            .prepare_cached(
                "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0) + 1",
            )?
            .query_row([], |r| r.get(0))?,
    };
    let payload = payload(seq);
    c.prepare_cached(
        "INSERT INTO events (seq, id, account_id, type, device_id, channel_id, business_id,
                             payload, created_at, rid, content_hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(params![
        seq,
        e.id,
        e.account_id,
        e.event_type,
        e.scope.device_id,
        e.scope.channel_id,
        e.scope.business_id,
        payload,
        e.created_at,
        e.inbound.map(|i| i.0),
        e.inbound.map(|i| i.1),
    ])?;
    NEXT_SEQ.set(Some(seq + 1));
    Ok((seq, payload))
}

/// Deliveries leased to the worker as they are inserted, for ingest to hand over once the
/// transaction commits.
pub(super) struct Handing<'a> {
    pub reserved: &'a mut Reserved,
    pub lease_until: i64,
}

/// Creates one delivery per matching endpoint; with `handing`, those due now are leased
/// to the worker while it has room. Returns how many are due now and not handed over.
pub(super) fn fan_out(
    c: &Connection,
    subs: &[Subscription],
    event_seq: i64,
    event_type: &str,
    scope: Scope<'_>,
    now: i64,
    mut handing: Option<(&mut Handing<'_>, &EventBody<'_>)>,
) -> StoreResult<usize> {
    let mut due = 0;
    for sub in subs.iter().filter(|s| s.matches(event_type, scope)) {
        let order_key = scope.device_id.filter(|_| sub.ordered);
        let place = placement(c, &sub.endpoint_id, order_key, sub.disabled)?;
        let handing = match handing.as_mut() {
            Some((h, event)) if place == Place::Due => h.reserved.take_room().then_some((h, event)),
            _ => None,
        };
        let Some((h, event)) = handing else {
            insert_delivery(c, event_seq, &sub.endpoint_id, order_key, place, now)?;
            due += usize::from(place == Place::Due);
            continue;
        };
        let leased = Place::Leased(h.lease_until);
        let delivery_id = insert_delivery(c, event_seq, &sub.endpoint_id, order_key, leased, now)?;
        let target = endpoint_cache::target(c, &sub.endpoint_id, now)?;
        h.reserved.push(DueDelivery {
            delivery_id,
            attempt: 1,
            event_id: event.id.to_owned(),
            payload: event.payload.clone(),
            endpoint: target,
        });
    }
    Ok(due)
}

/// Where a new delivery goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// Its endpoint is disabled.
    Held,
    /// Behind an earlier delivery of its device queue.
    Waiting,
    Due,
    /// Due now and leased to the worker until the given time.
    Leased(i64),
}

/// Queues one delivery of the event to the endpoint: held while the endpoint is disabled,
/// waiting when an earlier delivery of the same device queue has not reached its outcome,
/// due now otherwise.
pub(super) fn enqueue(
    c: &Connection,
    event_seq: i64,
    endpoint_id: &str,
    order_key: Option<&str>,
    disabled: bool,
    now: i64,
) -> StoreResult<i64> {
    let place = placement(c, endpoint_id, order_key, disabled)?;
    insert_delivery(c, event_seq, endpoint_id, order_key, place, now)
}

fn placement(
    c: &Connection,
    endpoint_id: &str,
    order_key: Option<&str>,
    disabled: bool,
) -> StoreResult<Place> {
    Ok(match order_key {
        _ if disabled => Place::Held,
        Some(key) if queue_busy(c, endpoint_id, key)? => Place::Waiting,
        _ => Place::Due,
    })
}

/// Returns the new delivery's id.
fn insert_delivery(
    c: &Connection,
    event_seq: i64,
    endpoint_id: &str,
    order_key: Option<&str>,
    place: Place,
    now: i64,
) -> StoreResult<i64> {
    let (status, next, claimed_at) = match place {
        Place::Held => ("held", None, None),
        Place::Waiting => ("pending", None, None),
        Place::Due => ("pending", Some(now), None),
        Place::Leased(until) => ("pending", Some(until), Some(now)),
    };
    c.prepare_cached(
        "INSERT INTO deliveries (event_seq, endpoint_id, status, next_attempt_at, created_at,
                                 order_key, claimed_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        event_seq,
        endpoint_id,
        status,
        next,
        now,
        order_key,
        claimed_at
    ])?;
    Ok(c.last_insert_rowid())
}

/// Whether a device queue has a delivery that has not reached its outcome.
pub(super) const QUEUE_BUSY: &str = "SELECT EXISTS (SELECT 1 FROM deliveries
                    WHERE endpoint_id = ?1 AND order_key = ?2 AND status = 'pending')";

fn queue_busy(c: &Connection, endpoint_id: &str, key: &str) -> StoreResult<bool> {
    Ok(c.prepare_cached(QUEUE_BUSY)?
        .query_row(params![endpoint_id, key], |r| r.get(0))?)
}

/// Makes the first waiting delivery of a device queue due, unless one of the queue is
/// already due or under way.
pub(super) const ADVANCE_QUEUE: &str = "UPDATE deliveries SET next_attempt_at = ?3
     WHERE id = (SELECT id FROM deliveries
                 WHERE endpoint_id = ?1 AND order_key = ?2 AND status = 'pending'
                 ORDER BY event_seq, id LIMIT 1)
       AND next_attempt_at IS NULL";

/// Returns how many became due (0 or 1).
pub(super) fn advance_queue(
    c: &Connection,
    endpoint_id: &str,
    key: &str,
    now: i64,
) -> StoreResult<usize> {
    Ok(c.prepare_cached(ADVANCE_QUEUE)?
        .execute(params![endpoint_id, key, now])?)
}

/// An endpoint's held deliveries outside device queues become due at ?2.
pub(super) const RELEASE_UNQUEUED: &str =
    "UPDATE deliveries SET status = 'pending', next_attempt_at = ?2
     WHERE endpoint_id = ?1 AND status = 'held' AND order_key IS NULL";

/// An endpoint's held deliveries in device queues become pending, waiting for their turn.
pub(super) const RELEASE_QUEUED: &str =
    "UPDATE deliveries SET status = 'pending', next_attempt_at = NULL
     WHERE endpoint_id = ?1 AND status = 'held' AND order_key IS NOT NULL";

/// An endpoint's device queues with pending deliveries.
pub(super) const PENDING_QUEUES: &str = "SELECT DISTINCT order_key FROM deliveries
     WHERE endpoint_id = ?1 AND status = 'pending' AND order_key IS NOT NULL";

/// Releases an endpoint's held deliveries: unordered ones are due now, and each device
/// queue starts again from its earliest event. Returns how many are due.
pub(super) fn release_held(c: &Connection, endpoint_id: &str, now: i64) -> StoreResult<usize> {
    let mut due = c
        .prepare_cached(RELEASE_UNQUEUED)?
        .execute(params![endpoint_id, now])?;
    c.prepare_cached(RELEASE_QUEUED)?.execute([endpoint_id])?;
    let keys: Vec<String> = c
        .prepare_cached(PENDING_QUEUES)?
        .query_map([endpoint_id], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for key in keys {
        due += advance_queue(c, endpoint_id, &key, now)?;
    }
    Ok(due)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insert(c: &Connection, id: &str) -> i64 {
        let new = NewEvent {
            id,
            account_id: "a",
            event_type: "t",
            scope: Scope::default(),
            created_at: 0,
            inbound: None,
        };
        insert_event(c, &new, |_| "{}".into()).unwrap().0
    }

    /// The writer keeps the next number between writes; after a rollback it reads it again,
    /// so an undone event's number is given again and none is skipped.
    #[test]
    fn event_numbers_go_on_from_what_is_stored_after_a_rollback() {
        let c = super::super::schema_with_account();
        assert_eq!(insert(&c, "evt_1"), 1);
        assert_eq!(insert(&c, "evt_2"), 2);
        c.execute_batch("BEGIN").unwrap();
        assert_eq!(insert(&c, "evt_3"), 3);
        c.execute_batch("ROLLBACK").unwrap();
        forget_next_seq();
        assert_eq!(insert(&c, "evt_3b"), 3);
        assert_eq!(insert(&c, "evt_4"), 4);
    }
}
