//! Storing an event and fanning it out to the endpoints that subscribe to it, inside the
//! caller's transaction: the event and its deliveries are committed together or not at all.
//! Which deliveries and where each goes are the domain's rules (`merpati_domain::fanout`);
//! this runs their statements.

use merpati_domain::device::Scope;
use merpati_domain::endpoint::Subscription;
use merpati_domain::fanout::{hand_over, place, plan, take_stored, Handing, Place, Stored};
use merpati_domain::ids::{AccountId, DeliveryId, DeviceId, EndpointId, EventId};
use rusqlite::{params, Connection};

use crate::error::DbResult;
use crate::writer::Tx;

pub(crate) struct NewEvent<'a> {
    pub id: &'a EventId,
    pub account_id: &'a AccountId,
    pub event_type: &'a str,
    pub scope: Scope<'a>,
    pub created_at: i64,
    /// For an item a device sent: its rid (as a dedup key) and the digest of its content.
    pub inbound: Option<(&'a str, &'a [u8])>,
}

/// Inserts the event; `payload` is given the event's system-wide sequence number (the
/// `data.id` of inbound payloads) and returns the exact body to deliver. Returns the
/// sequence number and that body.
pub(crate) fn insert_event(
    tx: &mut Tx<'_>,
    e: &NewEvent<'_>,
    payload: impl FnOnce(i64) -> String,
) -> DbResult<(i64, String)> {
    // The one writer picks the next number itself, so the row is written once, payload
    // and all; AUTOINCREMENT keeps the largest number ever used in sqlite_sequence.
    let seq: i64 = match tx.state.next_seq {
        Some(seq) => seq,
        None => tx
            .prepare_cached(
                "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0) + 1",
            )?
            .query_row([], |r| r.get(0))?,
    };
    let payload = payload(seq);
    tx.prepare_cached(
        "INSERT INTO events (seq, id, account_id, type, device_id, channel_id, business_id,
                             payload, created_at, rid, content_hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(params![
        seq,
        e.id.as_str(),
        e.account_id.as_str(),
        e.event_type,
        e.scope.device_id.map(DeviceId::as_str),
        e.scope.channel_id.map(|c| c.as_str()),
        e.scope.business_id.map(|b| b.as_str()),
        payload,
        e.created_at,
        e.inbound.map(|i| i.0),
        e.inbound.map(|i| i.1),
    ])?;
    tx.state.next_seq = Some(seq + 1);
    Ok((seq, payload))
}

/// Creates one delivery per endpoint the event goes to; with `handing`, those due now are
/// leased to the worker while it has room, or offered to their slot's owner when another
/// node owns it. Returns how many are due now and neither handed over nor offered.
pub(crate) fn fan_out(
    tx: &mut Tx<'_>,
    subs: &[Subscription],
    event_seq: i64,
    event_type: &str,
    scope: Scope<'_>,
    now: i64,
    mut handing: Option<Handing<'_>>,
) -> DbResult<usize> {
    let mut due = 0;
    for planned in plan(subs, event_type, scope) {
        let placed = place(planned.disabled, planned.order_key, |key| {
            queue_busy(tx, planned.endpoint_id, key)
        })?;
        let placed = hand_over(
            placed,
            planned.endpoint_id,
            handing.as_mut().map(|h| &mut *h.reservation),
        );
        let delivery = insert_delivery(
            tx,
            event_seq,
            planned.endpoint_id,
            planned.order_key,
            placed,
            now,
        )?;
        // Offers carry their deliveries whole; this store reads every target afresh
        // (`offered_targets`), so it counts no changes to endpoints.
        let stored = Stored {
            place: placed,
            delivery,
            endpoint: planned.endpoint_id,
            endpoints_seen: Some(0),
        };
        if take_stored(stored, handing.as_mut(), || {
            tx.target(planned.endpoint_id, now)
        })? {
            due += 1;
        }
    }
    Ok(due)
}

/// Queues one delivery of the event to the endpoint, where the rules place it.
pub(crate) fn enqueue(
    c: &Connection,
    event_seq: i64,
    endpoint: &EndpointId,
    order_key: Option<&DeviceId>,
    disabled: bool,
    now: i64,
) -> DbResult<DeliveryId> {
    let placed = place(disabled, order_key, |key| queue_busy(c, endpoint, key))?;
    insert_delivery(c, event_seq, endpoint, order_key, placed, now)
}

/// Returns the new delivery's id.
fn insert_delivery(
    c: &Connection,
    event_seq: i64,
    endpoint: &EndpointId,
    order_key: Option<&DeviceId>,
    placed: Place,
    now: i64,
) -> DbResult<DeliveryId> {
    let (status, next, claimed_at) = match placed {
        Place::Held => ("held", None, None),
        Place::Waiting => ("pending", None, None),
        Place::Due => ("pending", Some(now), None),
        Place::Leased(until) | Place::Offered(until) => ("pending", Some(until), Some(now)),
    };
    c.prepare_cached(
        "INSERT INTO deliveries (event_seq, endpoint_id, status, next_attempt_at, created_at,
                                 order_key, claimed_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        event_seq,
        endpoint.as_str(),
        status,
        next,
        now,
        order_key.map(DeviceId::as_str),
        claimed_at
    ])?;
    Ok(DeliveryId(c.last_insert_rowid()))
}

/// Whether a device queue has a delivery that has not reached its outcome.
pub(crate) const QUEUE_BUSY: &str = "SELECT EXISTS (SELECT 1 FROM deliveries
                    WHERE endpoint_id = ?1 AND order_key = ?2 AND status = 'pending')";

fn queue_busy(c: &Connection, endpoint: &EndpointId, key: &DeviceId) -> DbResult<bool> {
    Ok(c.prepare_cached(QUEUE_BUSY)?
        .query_row(params![endpoint.as_str(), key.as_str()], |r| r.get(0))?)
}

/// Makes the first waiting delivery of a device queue due, unless one of the queue is
/// already due or under way.
pub(crate) const ADVANCE_QUEUE: &str = "UPDATE deliveries SET next_attempt_at = ?3
     WHERE id = (SELECT id FROM deliveries
                 WHERE endpoint_id = ?1 AND order_key = ?2 AND status = 'pending'
                 ORDER BY event_seq, id LIMIT 1)
       AND next_attempt_at IS NULL";

/// Returns how many became due (0 or 1).
pub(crate) fn advance_queue(
    c: &Connection,
    endpoint: &EndpointId,
    key: &str,
    now: i64,
) -> DbResult<usize> {
    Ok(c.prepare_cached(ADVANCE_QUEUE)?
        .execute(params![endpoint.as_str(), key, now])?)
}

/// An endpoint's held deliveries outside device queues become due at ?2.
pub(crate) const RELEASE_UNQUEUED: &str =
    "UPDATE deliveries SET status = 'pending', next_attempt_at = ?2
     WHERE endpoint_id = ?1 AND status = 'held' AND order_key IS NULL";

/// An endpoint's held deliveries in device queues become pending, waiting for their turn.
pub(crate) const RELEASE_QUEUED: &str =
    "UPDATE deliveries SET status = 'pending', next_attempt_at = NULL
     WHERE endpoint_id = ?1 AND status = 'held' AND order_key IS NOT NULL";

/// An endpoint's device queues with pending deliveries.
pub(crate) const PENDING_QUEUES: &str = "SELECT DISTINCT order_key FROM deliveries
     WHERE endpoint_id = ?1 AND status = 'pending' AND order_key IS NOT NULL";

/// Releases an endpoint's held deliveries: unordered ones are due now, and each device
/// queue starts again from its earliest event. Returns how many are due.
pub(crate) fn release_held(c: &Connection, endpoint: &EndpointId, now: i64) -> DbResult<usize> {
    let mut due = c
        .prepare_cached(RELEASE_UNQUEUED)?
        .execute(params![endpoint.as_str(), now])?;
    c.prepare_cached(RELEASE_QUEUED)?
        .execute([endpoint.as_str()])?;
    let keys: Vec<String> = c
        .prepare_cached(PENDING_QUEUES)?
        .query_map([endpoint.as_str()], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for key in keys {
        due += advance_queue(c, endpoint, &key, now)?;
    }
    Ok(due)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{schema_with_account, writer_state};

    fn insert(tx: &mut Tx<'_>, id: &str) -> i64 {
        let (id, account) = (EventId::from(id), AccountId::from("a"));
        let new = NewEvent {
            id: &id,
            account_id: &account,
            event_type: "t",
            scope: Scope::default(),
            created_at: 0,
            inbound: None,
        };
        insert_event(tx, &new, |_| "{}".into()).unwrap().0
    }

    /// The writer keeps the next number between writes; after a rollback it reads it again,
    /// so an undone event's number is given again and none is skipped.
    #[test]
    fn event_numbers_go_on_from_what_is_stored_after_a_rollback() {
        let c = schema_with_account();
        let mut state = writer_state(&c);
        let mut tx = Tx::new(&c, &mut state);
        assert_eq!(insert(&mut tx, "evt_1"), 1);
        assert_eq!(insert(&mut tx, "evt_2"), 2);
        c.execute_batch("BEGIN").unwrap();
        assert_eq!(insert(&mut tx, "evt_3"), 3);
        c.execute_batch("ROLLBACK").unwrap();
        tx.state.forget();
        assert_eq!(insert(&mut tx, "evt_3b"), 3);
        assert_eq!(insert(&mut tx, "evt_4"), 4);
    }
}
