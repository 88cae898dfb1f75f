//! Storing what a device received: the dedup verdict first (the domain's rule), then each
//! new item's event and its deliveries, in one transaction; the deliveries due now are
//! handed to the worker once the commit is durable.

use std::sync::Arc;

use merpati_domain::delivery::Reservation;
use merpati_domain::device::DeviceContext;
use merpati_domain::fanout::{EventBody, Handing};
use merpati_domain::ids::EventId;
use merpati_domain::ingest::{
    dedup, AcceptedItem, IngestResult, IngestStore, PreparedItem, Seen, SentBefore,
};
use merpati_domain::StoreResult;
use merpati_webhooks::Event;
use rusqlite::{params, OptionalExtension};

use crate::fanout::{fan_out, insert_event, NewEvent};
use crate::rows::id;
use crate::SqliteStore;

/// The event a device's item with this rid became.
pub(crate) const SENT_BEFORE: &str = "SELECT content_hash, seq, id FROM events
     WHERE account_id = ?1 AND device_id = ?2 AND rid = ?3";

#[async_trait::async_trait]
impl IngestStore for SqliteStore {
    async fn ingest(
        &self,
        device: Arc<DeviceContext>,
        items: Vec<PreparedItem>,
        now_ms: i64,
        mut handoff: Box<dyn Reservation>,
    ) -> StoreResult<IngestResult> {
        let write = move |tx: &mut crate::writer::Tx<'_>| {
            // Every check first, so that a refused batch has changed nothing.
            let seen = {
                let mut lookup = tx.conn().prepare_cached(SENT_BEFORE)?;
                dedup(&items, |item| {
                    let key = params![
                        device.account_id.as_str(),
                        device.device_id.as_str(),
                        item.rid_key
                    ];
                    let found = lookup
                        .query_row(key, |r| {
                            Ok(SentBefore {
                                content_hash: r.get(0)?,
                                seq: r.get(1)?,
                                event_id: id(r, 2)?,
                            })
                        })
                        .optional()
                        .map_err(|e| crate::error::sqlite_error(&e))?;
                    Ok(found)
                })?
            };
            let subs = tx.subscriptions(&device.account_id)?;
            let mut accepted: Vec<AcceptedItem> = Vec::with_capacity(items.len());
            let mut new_deliveries = 0;
            for (item, seen) in items.into_iter().zip(seen) {
                let (id, event_id, new) = match seen {
                    Seen::Stored { seq, event_id } => (seq, event_id, false),
                    Seen::EarlierInBatch(i) => {
                        (accepted[i].id, accepted[i].event_id.clone(), false)
                    }
                    Seen::New => {
                        let event_id = EventId::generate();
                        let mut event = item.event;
                        let event_type = event.event_type();
                        let new = NewEvent {
                            id: &event_id,
                            account_id: &device.account_id,
                            event_type,
                            scope: device.scope(),
                            created_at: now_ms,
                            inbound: Some((&item.rid_key, &item.content_hash)),
                        };
                        let (seq, payload) = insert_event(tx, &new, |seq| {
                            event.set_system_id(seq);
                            String::from_utf8(Event::Inbound(event).to_json())
                                .expect("JSON is UTF-8")
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
                            now_ms,
                            Some(handing),
                        )?;
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
            let result = IngestResult {
                items: accepted,
                new_deliveries,
            };
            Ok((result, handoff))
        };
        // Once committed, the leased deliveries go to the worker, even if the caller has gone.
        self.write_checked_then(
            write,
            |(result, handoff): (IngestResult, Box<dyn Reservation>)| {
                handoff.hand_over();
                result
            },
        )
        .await
    }
}
