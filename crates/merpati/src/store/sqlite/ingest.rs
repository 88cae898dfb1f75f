use std::collections::HashMap;

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

/// What the store already has of an item.
enum Seen {
    New,
    /// Stored by an earlier request: answered with that event.
    Stored {
        seq: i64,
        event_id: String,
    },
    /// The same rid and content earlier in this batch: answered as that item.
    EarlierInBatch(usize),
}

/// The event a device's item with this rid became.
pub(super) const SENT_BEFORE: &str = "SELECT content_hash, seq, id FROM events
     WHERE account_id = ?1 AND device_id = ?2 AND rid = ?3";

/// Looks up every item's rid; a rid already used for different content, stored or earlier
/// in the batch, refuses the whole batch.
fn already_seen(
    c: &rusqlite::Connection,
    device: &DeviceContext,
    items: &[PreparedItem],
) -> StoreResult<Vec<Seen>> {
    let mut lookup = c.prepare_cached(SENT_BEFORE)?;
    let mut in_batch: HashMap<&str, usize> = HashMap::new();
    let mut seen = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let reused = || {
            StoreError::Conflict(format!(
                "items[{i}]: rid {} was already used for different content",
                serde_json::to_string(&item.rid).unwrap_or_default()
            ))
        };
        let stored: Option<(Vec<u8>, i64, String)> = lookup
            .query_row(
                params![device.account_id, device.device_id, item.rid_key],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        if let Some((hash, seq, event_id)) = stored {
            if hash != item.content_hash {
                return Err(reused());
            }
            seen.push(Seen::Stored { seq, event_id });
            continue;
        }
        match in_batch.get(item.rid_key.as_str()) {
            Some(&first) if items[first].content_hash != item.content_hash => return Err(reused()),
            Some(&first) => seen.push(Seen::EarlierInBatch(first)),
            None => {
                in_batch.insert(&item.rid_key, i);
                seen.push(Seen::New);
            }
        }
    }
    Ok(seen)
}

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
        device: std::sync::Arc<DeviceContext>,
        items: Vec<PreparedItem>,
        now_ms: i64,
        handoff: &Handoff,
    ) -> StoreResult<IngestResult> {
        let mut reserved = handoff.reserve();
        let lease_until = now_ms + handoff.lease.as_millis() as i64;
        let write = move |c: &rusqlite::Connection| {
            // Every check first, so that a refused batch has changed nothing.
            let seen = already_seen(c, &device, &items)?;
            let mut handing = Handing {
                reserved: &mut reserved,
                lease_until,
            };
            let subs = subscriptions(c, &device.account_id)?;
            let mut accepted: Vec<AcceptedItem> = Vec::with_capacity(items.len());
            let mut new_deliveries = 0;
            for (item, seen) in items.into_iter().zip(seen) {
                match seen {
                    Seen::Stored { seq, event_id } => {
                        accepted.push(AcceptedItem {
                            rid: item.rid,
                            id: seq,
                            event_id,
                        });
                        continue;
                    }
                    Seen::EarlierInBatch(i) => {
                        let first = &accepted[i];
                        let (id, event_id) = (first.id, first.event_id.clone());
                        accepted.push(AcceptedItem {
                            rid: item.rid,
                            id,
                            event_id,
                        });
                        continue;
                    }
                    Seen::New => {}
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
                    inbound: Some((&item.rid_key, &item.content_hash)),
                };
                let (seq, payload) = insert_event(c, &new, |seq| {
                    event.set_system_id(seq);
                    String::from_utf8(Event::Inbound(event).to_json()).expect("JSON is UTF-8")
                })?;
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
        self.write_checked_then(write, |(result, reserved): (IngestResult, Reserved)| {
            reserved.send();
            result
        })
        .await
    }
}
