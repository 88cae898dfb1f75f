//! Storing an event and fanning it out to the endpoints that subscribe to it, inside the
//! caller's transaction: the event and its deliveries are committed together or not at all.
//! Which deliveries and where each goes are the domain's rules (`merpati_domain::fanout`);
//! this runs their statements.

use merpati_domain::device::Scope;
use merpati_domain::endpoint::Subscription;
use merpati_domain::fanout::{hand_over, place, plan, take_stored, Handing, Place, Stored};
use merpati_domain::ids::{AccountId, DeliveryId, DeviceId, EndpointId, EventId};

use crate::error::DbResult;
use crate::outbox::{DeliveryRow, EventRow};
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

/// Adds the event to the write; `payload` is given the event's system-wide sequence number
/// (the `data.id` of inbound payloads) and returns the exact body to deliver. Returns the
/// sequence number and that body.
pub(crate) fn insert_event(
    tx: &mut Tx<'_>,
    e: &NewEvent<'_>,
    payload: impl FnOnce(i64) -> String,
) -> DbResult<(i64, String)> {
    let seq = tx.next_seq()?;
    let payload = payload(seq);
    tx.state.outbox.add_event(EventRow {
        seq,
        id: e.id.to_string(),
        account_id: e.account_id.to_string(),
        event_type: e.event_type.to_owned(),
        device_id: e.scope.device_id.map(|d| d.to_string()),
        channel_id: e.scope.channel_id.map(|c| c.to_string()),
        business_id: e.scope.business_id.map(|b| b.to_string()),
        payload: payload.clone(),
        created_at: e.created_at,
        rid: e.inbound.map(|i| i.0.to_owned()),
        content_hash: e.inbound.map(|i| i.1.to_vec()),
    });
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
    let planned: Vec<_> = plan(subs, event_type, scope).collect();
    tx.reserve(0, planned.len())?;
    let mut due = 0;
    for planned in planned {
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
        // Sent whole with the offer, so that the owner reads nothing of it; what this write
        // saw of endpoints tells the owner how new a target it needs.
        let stored = Stored {
            place: placed,
            delivery,
            endpoint: planned.endpoint_id,
            endpoints_seen: tx.state.endpoints.seen(),
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
    tx: &mut Tx<'_>,
    event_seq: i64,
    endpoint: &EndpointId,
    order_key: Option<&DeviceId>,
    disabled: bool,
    now: i64,
) -> DbResult<DeliveryId> {
    let placed = place(disabled, order_key, |key| queue_busy(tx, endpoint, key))?;
    insert_delivery(tx, event_seq, endpoint, order_key, placed, now)
}

/// Adds the delivery to the write; returns its id.
fn insert_delivery(
    tx: &mut Tx<'_>,
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
    let id = tx.next_delivery_id()?;
    tx.state.outbox.add_delivery(DeliveryRow {
        id,
        event_seq,
        endpoint_id: endpoint,
        status,
        next_attempt_at: next,
        created_at: now,
        order_key,
        claimed_at,
    });
    Ok(DeliveryId(id))
}

/// Whether a device queue has a delivery that has not reached its outcome.
pub(crate) const QUEUE_BUSY: &str = "SELECT EXISTS (SELECT 1 FROM deliveries
                    WHERE endpoint_id = $1 AND order_key = $2 AND status = 'pending')";

/// Whether the queue has a pending delivery, stored or added by this write.
fn queue_busy(tx: &mut Tx<'_>, endpoint: &EndpointId, key: &DeviceId) -> DbResult<bool> {
    if tx.state.outbox.made_busy(endpoint, key) {
        return Ok(true);
    }
    lock_queues(tx, &[key.as_str()])?;
    Ok(tx
        .conn()
        .query_one(QUEUE_BUSY, &[&endpoint.as_str(), &key.as_str()])?
        .get(0))
}

/// Takes the device queues named (by their device ids) for the rest of the transaction, in
/// one order for every node: placing a delivery behind a queue's head (ingest, on any
/// node) and moving a queue on (the recorder, on its owner) each read what the other
/// writes, and unserialized, a delivery placed behind a head whose outcome was committed
/// meanwhile would wait forever. The locks are taken before those reads, each read a
/// statement of its own, so that it sees what the transaction it waited for committed.
pub(crate) fn lock_queues(tx: &mut Tx<'_>, device_ids: &[&str]) -> DbResult<()> {
    let device_ids: Vec<&str> = device_ids
        .iter()
        .copied()
        .filter(|d| !tx.state.locked_queues.contains(*d))
        .collect();
    if device_ids.is_empty() {
        return Ok(());
    }
    // Held until the commit, with the deliveries placed behind them.
    tx.open_transaction()?;
    tx.state
        .locked_queues
        .extend(device_ids.iter().map(|d| d.to_string()));
    tx.conn().query(
        "SELECT pg_advisory_xact_lock(h) FROM (
             SELECT DISTINCT hashtextextended(k, 0) AS h FROM UNNEST($1::TEXT[]) AS k
             ORDER BY h
         ) AS queues",
        &[&device_ids],
    )?;
    Ok(())
}

/// Makes the first waiting delivery of a device queue due, unless one of the queue is
/// already due or under way.
pub(crate) const ADVANCE_QUEUE: &str = "UPDATE deliveries SET next_attempt_at = $3
     WHERE id = (SELECT id FROM deliveries
                 WHERE endpoint_id = $1 AND order_key = $2 AND status = 'pending'
                 ORDER BY event_seq, id LIMIT 1)
       AND next_attempt_at IS NULL";

/// Returns how many became due (0 or 1).
pub(crate) fn advance_queue(
    tx: &mut Tx<'_>,
    endpoint: &EndpointId,
    key: &str,
    now: i64,
) -> DbResult<usize> {
    lock_queues(tx, &[key])?;
    Ok(tx.execute(ADVANCE_QUEUE, &[&endpoint.as_str(), &key, &now])? as usize)
}

/// Releases an endpoint's held deliveries: unordered ones are due now, and each device
/// queue starts again from its earliest event. Returns how many are due.
pub(crate) fn release_held(tx: &mut Tx<'_>, endpoint: &EndpointId, now: i64) -> DbResult<usize> {
    let mut due = tx.execute(
        "UPDATE deliveries SET status = 'pending', next_attempt_at = $2
         WHERE endpoint_id = $1 AND status = 'held' AND order_key IS NULL",
        &[&endpoint.as_str(), &now],
    )? as usize;
    tx.execute(
        "UPDATE deliveries SET status = 'pending', next_attempt_at = NULL
         WHERE endpoint_id = $1 AND status = 'held' AND order_key IS NOT NULL",
        &[&endpoint.as_str()],
    )?;
    let keys: Vec<String> = tx
        .query(
            "SELECT DISTINCT order_key FROM deliveries
             WHERE endpoint_id = $1 AND status = 'pending' AND order_key IS NOT NULL",
            &[&endpoint.as_str()],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for key in keys {
        due += advance_queue(tx, endpoint, &key, now)?;
    }
    Ok(due)
}
