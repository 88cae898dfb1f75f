//! Storing what devices received. Every request waiting for the writer is stored in one
//! pass of its group: one lookup finds what every request's rids became before, the
//! domain's dedup rule decides each request in turn (a request seeing what an earlier one of
//! the group stored), one round trip takes every number the group needs, and the new
//! events and deliveries go as arrays with the rest of the group's writes. A request refused
//! by the rule changes nothing; the deliveries due now are handed to the worker once the
//! commit is durable.

use std::collections::HashMap;
use std::sync::Arc;

use merpati_domain::delivery::Reservation;
use merpati_domain::device::DeviceContext;
use merpati_domain::fanout::{plan, EventBody, Handing};
use merpati_domain::ids::EventId;
use merpati_domain::ingest::{
    dedup, AcceptedItem, IngestResult, IngestStore, PreparedItem, Seen, SentBefore,
};
use merpati_domain::{StoreError, StoreResult};
use merpati_webhooks::Event;
use tokio::sync::oneshot;

use crate::error::{closed, DbResult};
use crate::fanout::{fan_out, insert_event, lock_queues, NewEvent};
use crate::writer::{Guard, Tx, WriteJob};
use crate::PostgresStore;

/// One request's items, on their way to the writer.
pub(crate) struct IngestWork {
    device: Arc<DeviceContext>,
    items: Vec<PreparedItem>,
    now: i64,
    handoff: Option<Box<dyn Reservation>>,
    result: Option<StoreResult<IngestResult>>,
}

pub(crate) struct IngestJob {
    work: IngestWork,
    reply: oneshot::Sender<StoreResult<IngestResult>>,
}

impl WriteJob for IngestJob {
    fn guard(&self) -> Guard {
        Guard::ChecksFirst
    }

    fn run(&mut self, tx: &mut Tx<'_>) -> bool {
        if let Err(e) = store_group(tx, &mut [&mut self.work]) {
            self.work.result = Some(Err(e.into()));
        }
        matches!(self.work.result, Some(Ok(_)))
    }

    fn failure(&self) -> Option<StoreError> {
        match &self.work.result {
            Some(Err(e)) => Some(e.clone()),
            _ => None,
        }
    }

    fn as_any(&mut self) -> &mut dyn std::any::Any {
        self
    }

    fn done(&self) -> bool {
        self.work.result.is_some()
    }

    fn stored_by_pass(&self) -> bool {
        true
    }

    fn finish(self: Box<Self>, commit: Result<(), StoreError>) {
        let IngestJob { mut work, reply } = *self;
        let answer = match (commit, work.result.take()) {
            (Ok(()), Some(Ok(result))) => {
                // Once committed, the leased deliveries go to the worker, even if the caller
                // has gone.
                if let Some(handoff) = work.handoff.take() {
                    handoff.hand_over();
                }
                Ok(result)
            }
            (Err(e @ StoreError::Unanswered(_)), Some(Ok(_))) => {
                // The request may be stored, with the deliveries it leased to the worker:
                // they are read back rather than left until their lease runs out. The
                // device is told to send again, and finds what was stored.
                if let Some(handoff) = work.handoff.take() {
                    handoff.unanswered();
                }
                Err(e)
            }
            (Ok(()), Some(Err(e))) | (Err(e), _) => Err(e),
            (Ok(()), None) => Err(StoreError::Internal("the write did not run".into())),
        };
        let _ = reply.send(answer);
    }
}

/// What an item's rid became: `(account, device, rid key)`.
type RidKey = (String, String, String);

/// The events the group's rids became before: one look into the rid index for each. A
/// join the planner may hash reads the whole table: the statement's plan is made once for
/// the connection, often while the table is nearly empty, and kept as it grows (4 to 6 ms
/// a group at 60,000 rids). The `LIMIT` keeps the look a look whatever the estimates. In
/// the same round trip, the number of changes to endpoints, which the writer checks what
/// it keeps of them against (`EndpointCache`), and an event number for each rid not found
/// with as many delivery ids as it likely fans out to ($4, from the subscriptions the
/// writer kept). One row: the number, the found rids as columns, the numbers, the ids.
const SENT_BEFORE: &str = "WITH keys AS (
         SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::BIGINT[])
             AS k(account_id, device_id, rid, deliveries)
     ), found AS (
         SELECT r.account_id, r.device_id, r.rid, r.content_hash, r.event_seq, r.event_id
         FROM keys k
         CROSS JOIN LATERAL (
             SELECT * FROM event_rids r
             WHERE r.account_id = k.account_id AND r.device_id = k.device_id
               AND r.rid = k.rid
             LIMIT 1
         ) r
     ), new AS (
         SELECT k.deliveries FROM keys k
         WHERE NOT EXISTS (SELECT 1 FROM found f WHERE f.account_id = k.account_id
                               AND f.device_id = k.device_id AND f.rid = k.rid)
     )
     SELECT (SELECT version FROM endpoint_changes),
            ARRAY(SELECT account_id FROM found), ARRAY(SELECT device_id FROM found),
            ARRAY(SELECT rid FROM found), ARRAY(SELECT content_hash FROM found),
            ARRAY(SELECT event_seq FROM found), ARRAY(SELECT event_id FROM found),
            ARRAY(SELECT nextval('event_numbers')
                  FROM generate_series(1, (SELECT COUNT(*) FROM new))),
            ARRAY(SELECT nextval('delivery_numbers')
                  FROM generate_series(1, (SELECT COALESCE(SUM(deliveries), 0) FROM new)))";

/// The writer's group pass: every request waiting in the group, stored together.
pub(crate) fn store_requests(tx: &mut Tx<'_>, group: &mut [Box<dyn WriteJob>]) -> DbResult<()> {
    let mut works: Vec<&mut IngestWork> = group
        .iter_mut()
        .filter_map(|j| j.as_any().downcast_mut::<IngestJob>())
        .map(|j| &mut j.work)
        .collect();
    if works.is_empty() {
        return Ok(());
    }
    store_group(tx, &mut works)
}

/// The group's rid keys, each once, in their order, with how many deliveries its event
/// likely fans out to (from the subscriptions the writer kept, unchecked: ids taken and
/// not used are skipped, and what is missing is taken once the endpoints are known).
type Keys<'a> = (Vec<&'a str>, Vec<&'a str>, Vec<&'a str>, Vec<i64>);

fn group_keys<'a>(tx: &Tx<'_>, works: &'a [&mut IngestWork]) -> Keys<'a> {
    let mut keys: Keys<'a> = Default::default();
    let mut seen: std::collections::HashSet<(&str, &str, &str)> = Default::default();
    for w in works {
        let subs = tx.state.endpoints.kept_subscriptions(&w.device.account_id);
        let (account, device) = (w.device.account_id.as_str(), w.device.device_id.as_str());
        for item in &w.items {
            if !seen.insert((account, device, &item.rid_key)) {
                continue;
            }
            let deliveries = subs.as_ref().map_or(0, |subs| {
                plan(subs, item.event.event_type(), w.device.scope()).count()
            });
            keys.0.push(account);
            keys.1.push(device);
            keys.2.push(&item.rid_key);
            keys.3.push(deliveries as i64);
        }
    }
    keys
}

/// Stores the requests of a group in their order. A request refused by the rules gets its
/// error and changes nothing; an error of the server fails them all (the transaction is
/// aborted) and is returned.
pub(crate) fn store_group(tx: &mut Tx<'_>, works: &mut [&mut IngestWork]) -> DbResult<()> {
    let found = {
        let keys = group_keys(tx, works);
        tx.query_one(SENT_BEFORE, &[&keys.0, &keys.1, &keys.2, &keys.3])?
    };
    tx.state.endpoints.check(found.get(0));
    tx.take_numbers(found.get(7), found.get(8));
    let (accounts, devices, rids) = (
        found.get::<_, Vec<String>>(1),
        found.get::<_, Vec<String>>(2),
        found.get::<_, Vec<String>>(3),
    );
    let (hashes, seqs, event_ids) = (
        found.get::<_, Vec<Option<Vec<u8>>>>(4),
        found.get::<_, Vec<i64>>(5),
        found.get::<_, Vec<String>>(6),
    );
    let mut before: HashMap<RidKey, SentBefore> = accounts
        .into_iter()
        .zip(devices)
        .zip(rids)
        .zip(hashes.into_iter().zip(seqs).zip(event_ids))
        .map(
            |(((account, device), rid), ((content_hash, seq), event_id))| {
                let sent = SentBefore {
                    content_hash: content_hash.unwrap_or_default(),
                    seq,
                    event_id: EventId::from(event_id),
                };
                ((account, device, rid), sent)
            },
        )
        .collect();
    // The numbers of every item not stored before, taken at once (a refused request's go
    // unused and are skipped).
    let (mut events, mut deliveries) = (0, 0);
    let mut counted: std::collections::HashSet<RidKey> = Default::default();
    for w in works.iter() {
        let subs = tx.subscriptions(&w.device.account_id)?;
        for item in &w.items {
            let key = (
                w.device.account_id.to_string(),
                w.device.device_id.to_string(),
                item.rid_key.clone(),
            );
            if before.contains_key(&key) || !counted.insert(key) {
                continue;
            }
            events += 1;
            deliveries += plan(&subs, item.event.event_type(), w.device.scope()).count();
        }
    }
    tx.reserve(events, deliveries)?;
    let mut queued: Vec<&str> = Vec::new();
    for w in works.iter() {
        if tx
            .subscriptions(&w.device.account_id)?
            .iter()
            .any(|s| s.ordered)
        {
            queued.push(w.device.device_id.as_str());
        }
    }
    lock_queues(tx, &queued)?;
    for w in works.iter_mut() {
        let mark = tx.state.outbox.mark();
        let stored = store_one(tx, w, &mut before);
        w.result = Some(match stored {
            Ok(result) => Ok(result),
            Err(crate::error::DbError::Store(refused)) => {
                tx.state.outbox.back_to(mark);
                Err(refused)
            }
            Err(server) => return Err(server),
        });
    }
    Ok(())
}

/// One request: the dedup verdict first, so that a refused request has changed nothing.
fn store_one(
    tx: &mut Tx<'_>,
    w: &mut IngestWork,
    before: &mut HashMap<RidKey, SentBefore>,
) -> DbResult<IngestResult> {
    let device = w.device.clone();
    let key = |rid: &str| {
        (
            device.account_id.to_string(),
            device.device_id.to_string(),
            rid.to_owned(),
        )
    };
    let seen = dedup(&w.items, |item| {
        Ok(before.get(&key(&item.rid_key)).cloned())
    })?;
    let subs = tx.subscriptions(&device.account_id)?;
    let handoff = w.handoff.as_mut().expect("a request is stored once");
    let mut accepted: Vec<AcceptedItem> = Vec::with_capacity(w.items.len());
    let mut new_deliveries = 0;
    for (item, seen) in std::mem::take(&mut w.items).into_iter().zip(seen) {
        let (id, event_id, new) = match seen {
            Seen::Stored { seq, event_id } => (seq, event_id, false),
            Seen::EarlierInBatch(i) => (accepted[i].id, accepted[i].event_id.clone(), false),
            Seen::New => {
                let event_id = EventId::generate();
                let mut event = item.event;
                let event_type = event.event_type();
                let new = NewEvent {
                    id: &event_id,
                    account_id: &device.account_id,
                    event_type,
                    scope: device.scope(),
                    created_at: w.now,
                    inbound: Some((&item.rid_key, &item.content_hash)),
                };
                let (seq, payload) = insert_event(tx, &new, |seq| {
                    event.set_system_id(seq);
                    String::from_utf8(Event::Inbound(event).to_json()).expect("JSON is UTF-8")
                })?;
                let body = EventBody {
                    id: &event_id,
                    payload: payload.into(),
                };
                let handing = Handing {
                    reservation: handoff.as_mut(),
                    event: &body,
                };
                new_deliveries += fan_out(
                    tx,
                    &subs,
                    seq,
                    event_type,
                    device.scope(),
                    w.now,
                    Some(handing),
                )?;
                // A later request of the group with this rid finds it stored.
                before.insert(
                    key(&item.rid_key),
                    SentBefore {
                        content_hash: item.content_hash.clone(),
                        seq,
                        event_id: event_id.clone(),
                    },
                );
                (seq, event_id, true)
            }
        };
        accepted.push(AcceptedItem {
            rid: item.rid,
            id,
            event_id,
            new,
        });
    }
    Ok(IngestResult {
        items: accepted,
        new_deliveries,
    })
}

#[async_trait::async_trait]
impl IngestStore for PostgresStore {
    async fn ingest(
        &self,
        device: Arc<DeviceContext>,
        items: Vec<PreparedItem>,
        now_ms: i64,
        handoff: Box<dyn Reservation>,
    ) -> StoreResult<IngestResult> {
        let (reply, answer) = oneshot::channel();
        let job = IngestJob {
            work: IngestWork {
                device,
                items,
                now: now_ms,
                handoff: Some(handoff),
                result: None,
            },
            reply,
        };
        self.send(Box::new(job)).await?;
        answer.await.map_err(|_| closed())?
    }
}
