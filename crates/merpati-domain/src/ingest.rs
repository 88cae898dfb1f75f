//! What devices received, as stored: an item becomes one event, once. A re-sent item (same
//! device, same `rid`, same content) is answered as the first time and never becomes a
//! second event; a `rid` used again for different content is refused.

use std::collections::HashMap;
use std::sync::Arc;

use merpati_webhooks::{InboundEvent, Rid};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::delivery::Reservation;
use crate::device::DeviceContext;
use crate::ids::EventId;
use crate::storage::{StoreError, StoreResult};

pub const MAX_RID_BYTES: usize = 128;

/// An item checked and turned into its payload (with `data.id` still to be assigned).
#[derive(Debug, Clone)]
pub struct PreparedItem {
    /// The rid as a dedup key ([`rid_key`]).
    pub rid_key: String,
    pub rid: Rid,
    /// The item as sent ([`canonical_digest`]), to tell a re-send from a reused rid.
    pub content_hash: Vec<u8>,
    pub event: InboundEvent,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedItem {
    pub rid: Rid,
    /// The system id, `data.id` in the payload.
    pub id: i64,
    pub event_id: EventId,
    /// Whether this request stored it (rather than an earlier one, or an earlier item of
    /// the same request).
    pub new: bool,
}

#[derive(Debug, Clone)]
pub struct IngestResult {
    pub items: Vec<AcceptedItem>,
    /// Deliveries stored due and not handed over: the worker claims them.
    pub new_deliveries: usize,
}

#[async_trait::async_trait]
pub trait IngestStore: Send + Sync {
    /// Stores the items' events ([`dedup`] first) and their deliveries in one transaction,
    /// and hands the deliveries due now to the worker through `handoff`, as its room
    /// allows, once the commit is durable. Conflict when a rid was used before for
    /// different content; then nothing is written.
    async fn ingest(
        &self,
        device: Arc<DeviceContext>,
        items: Vec<PreparedItem>,
        now_ms: i64,
        handoff: Box<dyn Reservation>,
    ) -> StoreResult<IngestResult>;
}

/// The rid as a dedup key: integers and strings never collide. `None` for a string rid
/// that is empty or longer than [`MAX_RID_BYTES`].
pub fn rid_key(rid: &Rid) -> Option<String> {
    match rid {
        Rid::Int(n) => Some(format!("i:{n}")),
        Rid::Str(s) if s.is_empty() || s.len() > MAX_RID_BYTES => None,
        Rid::Str(s) => Some(format!("s:{s}")),
    }
}

/// SHA-256 of the value with object keys sorted, so key order does not count as content.
/// Stored with events: it must never change, or a device's re-sent item would conflict.
pub fn canonical_digest(value: &Value) -> Vec<u8> {
    // Keys and scalars are written as serde_json writes them, straight into the buffer.
    fn write(v: &Value, out: &mut Vec<u8>) {
        match v {
            Value::Object(map) => {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
                out.push(b'{');
                for (k, v) in entries {
                    serde_json::to_writer(&mut *out, k).expect("a string serializes");
                    out.push(b':');
                    write(v, out);
                    out.push(b',');
                }
                out.push(b'}');
            }
            Value::Array(items) => {
                out.push(b'[');
                for item in items {
                    write(item, out);
                    out.push(b',');
                }
                out.push(b']');
            }
            scalar => serde_json::to_writer(&mut *out, scalar).expect("a scalar serializes"),
        }
    }
    let mut buf = Vec::with_capacity(256);
    write(value, &mut buf);
    Sha256::digest(&buf).to_vec()
}

/// The event an earlier item with the same rid became.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentBefore {
    pub content_hash: Vec<u8>,
    pub seq: i64,
    pub event_id: EventId,
}

/// What the store already has of an item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    New,
    /// Stored by an earlier request: answered with that event.
    Stored {
        seq: i64,
        event_id: EventId,
    },
    /// The same rid and content earlier in this batch: answered as that item.
    EarlierInBatch(usize),
}

/// The dedup verdict of every item of a batch, from what `sent_before` finds of each rid.
/// A rid already used for different content, stored or earlier in the batch, refuses the
/// whole batch.
pub fn dedup(
    items: &[PreparedItem],
    mut sent_before: impl FnMut(&PreparedItem) -> StoreResult<Option<SentBefore>>,
) -> StoreResult<Vec<Seen>> {
    let mut in_batch: HashMap<&str, usize> = HashMap::new();
    let mut seen = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let reused = || {
            StoreError::Conflict(format!(
                "items[{i}]: rid {} was already used for different content",
                serde_json::to_string(&item.rid).unwrap_or_default()
            ))
        };
        if let Some(stored) = sent_before(item)? {
            if stored.content_hash != item.content_hash {
                return Err(reused());
            }
            seen.push(Seen::Stored {
                seq: stored.seq,
                event_id: stored.event_id,
            });
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

#[cfg(test)]
mod tests {
    use super::*;
    use merpati_webhooks::Sms;
    use serde_json::json;

    fn item(rid: i64, hash: u8) -> PreparedItem {
        PreparedItem {
            rid_key: rid_key(&Rid::Int(rid)).unwrap(),
            rid: Rid::Int(rid),
            content_hash: vec![hash],
            event: InboundEvent::Sms(Sms {
                id: 0,
                rid: Rid::Int(rid),
                sim: 1,
                device: "d".into(),
                phone: "+1".into(),
                message: "m".into(),
                timestamp: 1,
            }),
        }
    }

    #[test]
    fn resent_items_are_answered_as_before_and_reused_rids_refused() {
        let stored = |i: &PreparedItem| {
            Ok((i.rid_key == "i:1").then(|| SentBefore {
                content_hash: vec![1],
                seq: 41,
                event_id: "evt_41".into(),
            }))
        };
        let items = [item(1, 1), item(2, 2), item(2, 2), item(3, 3)];
        assert_eq!(
            dedup(&items, stored).unwrap(),
            [
                Seen::Stored {
                    seq: 41,
                    event_id: "evt_41".into()
                },
                Seen::New,
                Seen::EarlierInBatch(1),
                Seen::New
            ]
        );
        let err = dedup(&[item(2, 2), item(1, 9)], stored).unwrap_err();
        assert_eq!(
            err,
            StoreError::Conflict("items[1]: rid 1 was already used for different content".into())
        );
        let err = dedup(&[item(2, 2), item(2, 3)], stored).unwrap_err();
        assert!(matches!(err, StoreError::Conflict(m) if m.starts_with("items[1]")));
    }

    #[test]
    fn integer_and_string_rids_never_collide() {
        assert_eq!(rid_key(&Rid::Int(7)).unwrap(), "i:7");
        assert_eq!(rid_key(&Rid::Str("7".into())).unwrap(), "s:7");
        assert_eq!(rid_key(&Rid::Str(String::new())), None);
        assert_eq!(rid_key(&Rid::Str("x".repeat(MAX_RID_BYTES + 1))), None);
    }

    #[test]
    fn key_order_is_not_content() {
        let a = json!({"type":"sms","rid":1,"phone":"+1","message":"m"});
        let b: Value =
            serde_json::from_str(r#"{"message":"m","phone":"+1","rid":1,"type":"sms"}"#).unwrap();
        assert_eq!(canonical_digest(&a), canonical_digest(&b));
        let c = json!({"type":"sms","rid":1,"phone":"+1","message":"n"});
        assert_ne!(canonical_digest(&a), canonical_digest(&c));
    }

    /// Digests are stored with events: one computed differently after an upgrade would make
    /// a device's re-sent item a conflict.
    #[test]
    fn the_digest_of_an_item_never_changes() {
        let item = json!({"type": "sms", "rid": "r-\u{e9}\"1", "sim": 2, "timestamp": 1.5e3,
                          "nested": {"z": [1, null, true, {"b": "x", "a": -0.25}], "a": ""}});
        let hex: String = canonical_digest(&item)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "3c4834d4d907aee878e299632884c5597236ad5c082b99ebaa7c333458d14b3b"
        );
    }
}
