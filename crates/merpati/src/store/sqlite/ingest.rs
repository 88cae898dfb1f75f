use merpati_webhooks::Event;
use rusqlite::{params, OptionalExtension};

use super::endpoint_cache::subscriptions;
use super::fanout::{fan_out, insert_event, EventBody, Handing, NewEvent};
use super::SqliteStore;
use crate::delivery::{Handoff, Reserved};
use crate::devices::DeviceContext;
use crate::endpoints::Scope;
use crate::ids;
use crate::ingest::{AcceptedItem, IngestResult, IngestStore, PreparedItem};
use crate::store::{StoreError, StoreResult};

pub(super) fn scope(d: &DeviceContext) -> Scope<'_> {
    Scope {
        business_id: Some(&d.business_id),
        channel_id: Some(&d.channel_id),
        device_id: Some(&d.device_id),
    }
}

#[async_trait::async_trait]
impl IngestStore for SqliteStore {
    async fn ingest(
        &self,
        device: DeviceContext,
        items: Vec<PreparedItem>,
        now_ms: i64,
        handoff: &Handoff,
    ) -> StoreResult<IngestResult> {
        let mut reserved = handoff.reserve();
        let lease_until = now_ms + handoff.lease.as_millis() as i64;
        let write = move |c: &rusqlite::Connection| {
            let mut handing = Handing {
                reserved: &mut reserved,
                lease_until,
            };
            let subs = subscriptions(c, &device.account_id)?;
            let mut accepted = Vec::with_capacity(items.len());
            let mut new_deliveries = 0;
            for (i, item) in items.into_iter().enumerate() {
                let seen: Option<(Vec<u8>, i64, String)> = c
                    .prepare_cached(
                        "SELECT i.content_hash, e.seq, e.id FROM inbound_items i
                         JOIN events e ON e.seq = i.event_seq
                         WHERE i.account_id = ?1 AND i.device_id = ?2 AND i.rid = ?3",
                    )?
                    .query_row(
                        params![device.account_id, device.device_id, item.rid_key],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )
                    .optional()?;
                if let Some((hash, seq, event_id)) = seen {
                    if hash != item.content_hash {
                        return Err(StoreError::Conflict(format!(
                            "items[{i}]: rid {} was already used for different content",
                            serde_json::to_string(&item.rid).unwrap_or_default()
                        )));
                    }
                    accepted.push(AcceptedItem {
                        rid: item.rid,
                        id: seq,
                        event_id,
                    });
                    continue;
                }
                let event_id = ids::new_id("evt");
                let mut event = item.event;
                let event_type = event.event_type();
                let new = NewEvent {
                    id: &event_id,
                    account_id: &device.account_id,
                    event_type,
                    scope: scope(&device),
                    created_at: now_ms,
                };
                let (seq, payload) = insert_event(c, &new, |seq| {
                    event.set_system_id(seq);
                    String::from_utf8(Event::Inbound(event).to_json()).expect("JSON is UTF-8")
                })?;
                c.prepare_cached(
                    "INSERT INTO inbound_items (account_id, device_id, rid, content_hash, event_seq)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![
                    device.account_id,
                    device.device_id,
                    item.rid_key,
                    item.content_hash,
                    seq
                ])?;
                let body = EventBody {
                    id: &event_id,
                    payload: payload.into(),
                };
                new_deliveries += fan_out(
                    c,
                    &subs,
                    seq,
                    event_type,
                    scope(&device),
                    now_ms,
                    Some((&mut handing, &body)),
                )?;
                accepted.push(AcceptedItem {
                    rid: item.rid,
                    id: seq,
                    event_id,
                });
            }
            let result = IngestResult {
                items: accepted,
                new_deliveries,
            };
            Ok((result, reserved))
        };
        // Once committed, the leased deliveries go to the worker, even if the caller has gone.
        self.write_then(write, |(result, reserved): (IngestResult, Reserved)| {
            reserved.send();
            result
        })
        .await
    }
}
