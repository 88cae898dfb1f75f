//! A write's new events and deliveries: kept as columns while the write runs and sent as
//! arrays, in one statement, when it is done.

use std::collections::HashSet;

use merpati_domain::ids::{DeviceId, EndpointId};
use merpati_domain::slots::slot_of;

use crate::conn::Conn;
use crate::error::DbResult;

/// How far the outbox was filled.
pub(crate) struct Mark {
    events: usize,
    deliveries: usize,
    busy: HashSet<(EndpointId, DeviceId)>,
}

/// One event as stored.
pub(crate) struct EventRow {
    pub seq: i64,
    pub id: String,
    pub account_id: String,
    pub event_type: String,
    pub device_id: Option<String>,
    pub channel_id: Option<String>,
    pub business_id: Option<String>,
    pub payload: String,
    pub created_at: i64,
    pub rid: Option<String>,
    pub content_hash: Option<Vec<u8>>,
}

/// One delivery as stored.
pub(crate) struct DeliveryRow<'a> {
    pub id: i64,
    pub event_seq: i64,
    pub endpoint_id: &'a EndpointId,
    pub status: &'static str,
    pub next_attempt_at: Option<i64>,
    pub created_at: i64,
    pub order_key: Option<&'a DeviceId>,
    pub claimed_at: Option<i64>,
}

/// A write's new events and deliveries, kept as columns and sent as arrays (one statement
/// for each table) when the write is done, with the device queues it made busy.
#[derive(Default)]
pub(crate) struct Outbox {
    events: EventColumns,
    deliveries: DeliveryColumns,
    /// Device queues that got a pending delivery in this write.
    busy: HashSet<(EndpointId, DeviceId)>,
}

#[derive(Default)]
struct EventColumns {
    seq: Vec<i64>,
    id: Vec<String>,
    account_id: Vec<String>,
    event_type: Vec<String>,
    device_id: Vec<Option<String>>,
    channel_id: Vec<Option<String>>,
    business_id: Vec<Option<String>>,
    payload: Vec<String>,
    created_at: Vec<i64>,
    rid: Vec<Option<String>>,
    content_hash: Vec<Option<Vec<u8>>>,
}

#[derive(Default)]
struct DeliveryColumns {
    id: Vec<i64>,
    event_seq: Vec<i64>,
    endpoint_id: Vec<String>,
    status: Vec<&'static str>,
    next_attempt_at: Vec<Option<i64>>,
    created_at: Vec<i64>,
    order_key: Vec<Option<String>>,
    claimed_at: Vec<Option<i64>>,
    slot: Vec<i16>,
}

impl Outbox {
    pub(crate) fn clear(&mut self) {
        *self = Outbox::default();
    }

    pub(crate) fn add_event(&mut self, e: EventRow) {
        let c = &mut self.events;
        c.seq.push(e.seq);
        c.id.push(e.id);
        c.account_id.push(e.account_id);
        c.event_type.push(e.event_type);
        c.device_id.push(e.device_id);
        c.channel_id.push(e.channel_id);
        c.business_id.push(e.business_id);
        c.payload.push(e.payload);
        c.created_at.push(e.created_at);
        c.rid.push(e.rid);
        c.content_hash.push(e.content_hash);
    }

    pub(crate) fn add_delivery(&mut self, d: DeliveryRow<'_>) {
        if let (Some(key), "pending") = (d.order_key, d.status) {
            self.busy.insert((d.endpoint_id.clone(), key.clone()));
        }
        let c = &mut self.deliveries;
        c.id.push(d.id);
        c.event_seq.push(d.event_seq);
        c.endpoint_id.push(d.endpoint_id.to_string());
        c.status.push(d.status);
        c.next_attempt_at.push(d.next_attempt_at);
        c.created_at.push(d.created_at);
        c.order_key.push(d.order_key.map(|k| k.to_string()));
        c.claimed_at.push(d.claimed_at);
        c.slot.push(slot_of(d.endpoint_id) as i16);
    }

    /// Where the outbox is now, to go back to if what is added next is refused.
    pub(crate) fn mark(&self) -> Mark {
        Mark {
            events: self.events.seq.len(),
            deliveries: self.deliveries.id.len(),
            busy: self.busy.clone(),
        }
    }

    /// Forgets what was added since `mark`.
    pub(crate) fn back_to(&mut self, mark: Mark) {
        let (e, d) = (&mut self.events, &mut self.deliveries);
        e.seq.truncate(mark.events);
        e.id.truncate(mark.events);
        e.account_id.truncate(mark.events);
        e.event_type.truncate(mark.events);
        e.device_id.truncate(mark.events);
        e.channel_id.truncate(mark.events);
        e.business_id.truncate(mark.events);
        e.payload.truncate(mark.events);
        e.created_at.truncate(mark.events);
        e.rid.truncate(mark.events);
        e.content_hash.truncate(mark.events);
        d.id.truncate(mark.deliveries);
        d.event_seq.truncate(mark.deliveries);
        d.endpoint_id.truncate(mark.deliveries);
        d.status.truncate(mark.deliveries);
        d.next_attempt_at.truncate(mark.deliveries);
        d.created_at.truncate(mark.deliveries);
        d.order_key.truncate(mark.deliveries);
        d.claimed_at.truncate(mark.deliveries);
        d.slot.truncate(mark.deliveries);
        self.busy = mark.busy;
    }

    /// Whether this write put a pending delivery in the device queue.
    pub(crate) fn made_busy(&self, endpoint: &EndpointId, key: &DeviceId) -> bool {
        self.busy.contains(&(endpoint.clone(), key.clone()))
    }

    /// Sends the events (with the rids of those a device sent) and the deliveries in one
    /// statement; a side with no rows inserts none.
    pub(crate) fn flush(self, c: &mut Conn) -> DbResult<()> {
        let (e, d) = (&self.events, &self.deliveries);
        if e.seq.is_empty() && d.id.is_empty() {
            return Ok(());
        }
        c.execute(
            "WITH new_events AS (
                 SELECT * FROM UNNEST($1::BIGINT[], $2::TEXT[], $3::TEXT[], $4::TEXT[],
                                      $5::TEXT[], $6::TEXT[], $7::TEXT[], $8::TEXT[],
                                      $9::BIGINT[], $10::TEXT[], $11::BYTEA[])
                     AS n(seq, id, account_id, type, device_id, channel_id, business_id,
                          payload, created_at, rid, content_hash)
             ), stored AS (
                 INSERT INTO events (seq, id, account_id, type, device_id, channel_id,
                                     business_id, payload, created_at)
                 SELECT seq, id, account_id, type, device_id, channel_id, business_id,
                        payload, created_at
                 FROM new_events
             ), rids AS (
                 INSERT INTO event_rids (account_id, device_id, rid, content_hash, event_seq,
                                         event_id)
                 SELECT account_id, device_id, rid, content_hash, seq, id
                 FROM new_events WHERE rid IS NOT NULL AND device_id IS NOT NULL
             )
             INSERT INTO deliveries (id, event_seq, endpoint_id, status, next_attempt_at,
                                     created_at, order_key, claimed_at, slot)
             SELECT * FROM UNNEST($12::BIGINT[], $13::BIGINT[], $14::TEXT[], $15::TEXT[],
                                  $16::BIGINT[], $17::BIGINT[], $18::TEXT[], $19::BIGINT[],
                                  $20::SMALLINT[])",
            &[
                &e.seq,
                &e.id,
                &e.account_id,
                &e.event_type,
                &e.device_id,
                &e.channel_id,
                &e.business_id,
                &e.payload,
                &e.created_at,
                &e.rid,
                &e.content_hash,
                &d.id,
                &d.event_seq,
                &d.endpoint_id,
                &d.status,
                &d.next_attempt_at,
                &d.created_at,
                &d.order_key,
                &d.claimed_at,
                &d.slot,
            ],
        )?;
        Ok(())
    }
}
