//! The device API's inbound side: what devices received (`POST /v1/device/messages`, and the
//! same items over the device link).
//!
//! An item is answered 202 only once its event and every delivery it fans out to are
//! committed together (a transactional outbox). A re-sent item (same device, same `rid`,
//! same content) is answered as the first time and never becomes a second event.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::Json;
use merpati_domain::device::DeviceContext;
use merpati_domain::ids::EventId;
use merpati_domain::ingest::{
    canonical_digest, rid_key, AcceptedItem, PreparedItem, MAX_RID_BYTES,
};
use merpati_runtime::bus::{Change, StoredEvent};
use merpati_runtime::limits::Refusal;
use merpati_webhooks::{InboundEvent, Notification, Rid, Sms, Ussd, Whatsapp};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::api::extract::{parse_json, read_body, Device};
use crate::api::openapi::ErrorBody;
use crate::api::validate::check_phone;
use crate::api::{ApiError, ApiResult, AppState};

pub const MAX_BATCH: usize = 1000;
const MAX_TEXT_BYTES: usize = 64 * 1024;
const MAX_SHORT_BYTES: usize = 4096;
/// Unix seconds beyond this are almost surely milliseconds sent by mistake (year 5138).
const MAX_TIMESTAMP: i64 = 99_999_999_999;

/// One item as a device posts it: the documented `data` fields it knows, plus `type` and
/// `rid`. `sim` defaults to 1 and `timestamp` to the time of receipt.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
enum Item {
    Sms {
        #[schema(schema_with = crate::api::openapi::rid_schema)]
        rid: Rid,
        sim: Option<i64>,
        device: Option<String>,
        phone: String,
        message: String,
        timestamp: Option<i64>,
    },
    Whatsapp {
        #[schema(schema_with = crate::api::openapi::rid_schema)]
        rid: Rid,
        /// The account's own number; the device's `phone` when absent.
        wid: Option<String>,
        phone: String,
        message: String,
        timestamp: Option<i64>,
    },
    Ussd {
        #[schema(schema_with = crate::api::openapi::rid_schema)]
        rid: Rid,
        sim: Option<i64>,
        device: Option<String>,
        code: String,
        response: String,
        timestamp: Option<i64>,
    },
    Notification {
        #[schema(schema_with = crate::api::openapi::rid_schema)]
        rid: Rid,
        device: Option<String>,
        package: String,
        title: String,
        content: String,
        timestamp: Option<i64>,
    },
}

/// An item as the answer shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AcceptedView {
    #[schema(schema_with = crate::api::openapi::rid_schema)]
    pub rid: Rid,
    /// The system id, `data.id` in the payload.
    pub id: i64,
    #[schema(value_type = String)]
    pub event_id: EventId,
}

/// What `POST /v1/device/messages` takes: one item, or a batch taken whole or not at all.
#[derive(Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
#[serde(untagged)]
enum MessagesBody {
    One(Item),
    Batch(Batch),
}

#[derive(Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
#[serde(deny_unknown_fields)]
struct Batch {
    #[schema(min_items = 1, max_items = 1000)]
    items: Vec<Item>,
}

/// The answer: each item with its system id and event, new or already stored.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Accepted {
    pub accepted: usize,
    pub items: Vec<AcceptedView>,
}

impl From<&AcceptedItem> for AcceptedView {
    fn from(a: &AcceptedItem) -> Self {
        AcceptedView {
            rid: a.rid.clone(),
            id: a.id,
            event_id: a.event_id.clone(),
        }
    }
}

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(post_messages))
}

/// What a device received: SMS, WhatsApp messages, USSD answers, notifications. Items
/// already stored (same `rid` from the same device) are answered again, not stored twice.
#[utoipa::path(post, path = "/v1/device/messages", tag = "device API",
    security(("device_token" = [])),
    request_body = MessagesBody,
    responses(
        (status = 202, description = "Stored, durably, and handed to delivery.", body = Accepted),
        (status = 403, description = "An item names another device (`forbidden`).", body = ErrorBody),
        (status = 409, description = "An item's `rid` was used before for different content; nothing of the batch is stored.", body = ErrorBody),
        (status = 413, description = "Larger than 1 MiB, more than 1,000 items, or more events than the device or its account may send in a second (`payload_too_large`).", body = ErrorBody),
        (status = 429, description = "Over the device's or its account's events a second (`rate_limited`); nothing is stored; `Retry-After` says when to send them again.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds."))),
    ))]
async fn post_messages(
    Device(device): Device,
    State(state): State<AppState>,
    request: Request,
) -> ApiResult<(StatusCode, Json<Accepted>)> {
    let body = read_body(request, &()).await?;
    let value: Value = parse_json(&body)?;
    let now_ms = state.clock.now_ms();
    let items = prepare_body(value, &device, now_ms.div_euclid(1000))?;
    let accepted = store(&state, device, items, now_ms).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            accepted: accepted.len(),
            items: accepted,
        }),
    ))
}

/// Stores a device's prepared items, answered as the device API shows them.
pub async fn store(
    state: &AppState,
    device: Arc<DeviceContext>,
    items: Vec<PreparedItem>,
    now_ms: i64,
) -> ApiResult<Vec<AcceptedView>> {
    let stored = store_items(state, device, items, now_ms).await?;
    Ok(stored.iter().map(AcceptedView::from).collect())
}

/// Stores a device's prepared items (their deliveries handed to the worker once durable),
/// wakes the worker for the rest, and tells the bus of the new events. The device link
/// takes the same path.
pub async fn store_items(
    state: &AppState,
    device: Arc<DeviceContext>,
    items: Vec<PreparedItem>,
    now_ms: i64,
) -> ApiResult<Vec<AcceptedItem>> {
    admit(state, &device, items.len(), now_ms)?;
    // The items' types, for the metrics and the bus, read before the items go to the
    // store.
    let types: Vec<&'static str> = items.iter().map(|i| i.event.event_type()).collect();
    let handoff = state.handoff.reserve(now_ms);
    let result = state
        .store
        .ingest(device.clone(), items, now_ms, handoff)
        .await?;
    if result.new_deliveries > 0 {
        state.delivery.wake();
    }
    // Counted a type at a time: a batch is mostly of one type.
    let mut counted: Vec<(&'static str, bool, u64)> = Vec::new();
    for (item, event_type) in result.items.iter().zip(&types) {
        match counted
            .iter_mut()
            .find(|(t, new, _)| t == event_type && *new == item.new)
        {
            Some((_, _, n)) => *n += 1,
            None => counted.push((event_type, item.new, 1)),
        }
    }
    for (event_type, stored, n) in counted {
        state.metrics.ingested_n(event_type, stored, n);
    }
    if state.bus.is_watched() {
        // One answer per item, in the items' order; only what this request stored.
        let events: Vec<StoredEvent> = result
            .items
            .iter()
            .zip(types)
            .filter(|(item, _)| item.new)
            .map(|(item, event_type)| StoredEvent {
                id: item.event_id.clone(),
                event_type,
                device: Some(device.device_id.clone()),
            })
            .collect();
        if !events.is_empty() {
            state.bus.publish(Change::EventsStored {
                account: device.account_id.clone(),
                events: events.into(),
            });
        }
    }
    Ok(result.items)
}

/// Takes `n` events from the device's and its account's rates, or says when to send them.
fn admit(state: &AppState, device: &DeviceContext, n: usize, now_ms: i64) -> ApiResult<()> {
    let limits = state.config.limits.for_account(&device.account_limits);
    let n = u32::try_from(n).unwrap_or(u32::MAX);
    let refused = state.rates.admit(
        device.account_id.as_str(),
        device.device_id.as_str(),
        n,
        limits.account_rate(),
        limits.device_rate(),
        now_ms,
    );
    let seconds = |ms: i64| u64::try_from((ms + 999) / 1000).unwrap_or(1).max(1);
    match refused {
        Ok(()) => Ok(()),
        Err(Refusal::Device(ms)) => Err(ApiError::rate_limited(
            format!(
                "this device may send {} events a second; send these again later",
                limits.device_events_per_second
            ),
            seconds(ms),
        )),
        Err(Refusal::Account(ms)) => Err(ApiError::rate_limited(
            format!(
                "this account may take {} events a second from all its devices; send these \
                 again later",
                limits.events_per_second
            ),
            seconds(ms),
        )),
        Err(Refusal::TooMany { burst }) => Err(ApiError::too_large(format!(
            "{n} events at once are more than this device or account may send in a second \
             ({burst}); send fewer a request"
        ))),
    }
}

/// A body is one item or `{"items": [...]}`; every item must pass, or none is taken.
pub fn prepare_body(
    body: Value,
    device: &DeviceContext,
    now_secs: i64,
) -> ApiResult<Vec<PreparedItem>> {
    let raw_items = match body {
        Value::Object(mut map) if map.contains_key("items") => {
            if map.len() > 1 {
                return Err(ApiError::invalid(
                    "a batch is {\"items\": [...]} with no other field",
                ));
            }
            match map.remove("items") {
                Some(Value::Array(items)) => items,
                _ => return Err(ApiError::invalid("items must be an array")),
            }
        }
        item @ Value::Object(_) => vec![item],
        _ => {
            return Err(ApiError::invalid(
                "body must be an item or {\"items\": [...]}",
            ))
        }
    };
    if raw_items.is_empty() {
        return Err(ApiError::invalid("items must not be empty"));
    }
    if raw_items.len() > MAX_BATCH {
        return Err(ApiError::too_large(format!(
            "a batch holds at most {MAX_BATCH} items, not {}",
            raw_items.len()
        )));
    }
    raw_items
        .into_iter()
        .enumerate()
        .map(|(i, raw)| {
            prepare_item(raw, device, now_secs).map_err(|mut e| {
                e.message = format!("items[{i}]: {}", e.message);
                e
            })
        })
        .collect()
}

pub(crate) fn prepare_item(
    raw: Value,
    device: &DeviceContext,
    now_secs: i64,
) -> ApiResult<PreparedItem> {
    let content_hash = canonical_digest(&raw);
    let item: Item = serde_json::from_value(raw).map_err(|e| ApiError::invalid(e.to_string()))?;
    let own_device = |given: Option<String>| -> ApiResult<String> {
        match given {
            Some(id) if device.device_id != *id => Err(ApiError::forbidden(format!(
                "this token belongs to device {:?}, not {id:?}",
                device.device_id.as_str()
            ))),
            _ => Ok(device.device_id.to_string()),
        }
    };
    let when = |ts: Option<i64>| -> ApiResult<i64> {
        match ts {
            None => Ok(now_secs),
            Some(t) if (1..=MAX_TIMESTAMP).contains(&t) => Ok(t),
            Some(_) => Err(ApiError::invalid("timestamp must be Unix seconds")),
        }
    };
    let sim_slot = |sim: Option<i64>| -> ApiResult<i64> {
        match sim.unwrap_or(1) {
            s @ 0..=255 => Ok(s),
            _ => Err(ApiError::invalid("sim must be a slot number from 0 to 255")),
        }
    };
    let (rid, event) = match item {
        Item::Sms {
            rid,
            sim,
            device: d,
            phone,
            message,
            timestamp,
        } => {
            check_phone("phone", &phone)?;
            check_text("message", &message, MAX_TEXT_BYTES)?;
            let event = InboundEvent::Sms(Sms {
                id: 0,
                rid: rid.clone(),
                sim: sim_slot(sim)?,
                device: own_device(d)?,
                phone,
                message,
                timestamp: when(timestamp)?,
            });
            (rid, event)
        }
        Item::Whatsapp {
            rid,
            wid,
            phone,
            message,
            timestamp,
        } => {
            let wid = wid.or_else(|| device.phone.clone()).ok_or_else(|| {
                ApiError::invalid("wid is missing and the device has no phone number set")
            })?;
            check_phone("wid", &wid)?;
            check_phone("phone", &phone)?;
            check_text("message", &message, MAX_TEXT_BYTES)?;
            let event = InboundEvent::Whatsapp(Whatsapp {
                id: 0,
                wid,
                phone,
                message,
                timestamp: when(timestamp)?,
            });
            (rid, event)
        }
        Item::Ussd {
            rid,
            sim,
            device: d,
            code,
            response,
            timestamp,
        } => {
            check_text("code", &code, 256)?;
            check_text("response", &response, MAX_TEXT_BYTES)?;
            let event = InboundEvent::Ussd(Ussd {
                id: 0,
                sim: sim_slot(sim)?,
                device: own_device(d)?,
                code,
                response,
                timestamp: when(timestamp)?,
            });
            (rid, event)
        }
        Item::Notification {
            rid,
            device: d,
            package,
            title,
            content,
            timestamp,
        } => {
            check_text("package", &package, 256)?;
            check_text("title", &title, MAX_SHORT_BYTES)?;
            check_text("content", &content, MAX_TEXT_BYTES)?;
            let event = InboundEvent::Notification(Notification {
                id: 0,
                device: own_device(d)?,
                package,
                title,
                content,
                timestamp: when(timestamp)?,
            });
            (rid, event)
        }
    };
    let rid_key = rid_key(&rid).ok_or_else(|| {
        ApiError::invalid(format!(
            "rid must be an integer or a string of 1 to {MAX_RID_BYTES} bytes"
        ))
    })?;
    Ok(PreparedItem {
        rid_key,
        rid,
        content_hash,
        event,
    })
}

fn check_text(field: &str, value: &str, max_bytes: usize) -> ApiResult<()> {
    if value.len() > max_bytes {
        return Err(ApiError::invalid(format!(
            "{field} must be at most {max_bytes} bytes"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx() -> DeviceContext {
        DeviceContext {
            account_id: "acct".into(),
            account_name: "Merchant".into(),
            business_id: "biz".into(),
            business_name: "Biz".into(),
            channel_id: "ch".into(),
            channel_name: "Ch".into(),
            engine: "sms".into(),
            device_id: "dev_1".into(),
            device_name: "Phone".into(),
            phone: Some("+62811".into()),
            presence: merpati_domain::device::Presence::Unknown,
            presence_since: None,
            engine_state: None,
            channel_heartbeat_ms: None,
            channel_grace_ms: None,
            account_limits: Default::default(),
        }
    }

    #[test]
    fn sms_defaults_and_device_id() {
        let p = prepare_item(
            json!({"type":"sms","rid":10593,"phone":"+639760713666","message":"Hello World!"}),
            &ctx(),
            1645684231,
        )
        .unwrap();
        assert_eq!(p.rid_key, "i:10593");
        let InboundEvent::Sms(sms) = p.event else {
            panic!()
        };
        assert_eq!(
            (sms.sim, sms.timestamp, sms.device.as_str()),
            (1, 1645684231, "dev_1")
        );
    }

    #[test]
    fn whatsapp_takes_wid_from_the_device() {
        let p = prepare_item(
            json!({"type":"whatsapp","rid":"w1","phone":"+63","message":"hi","timestamp":5}),
            &ctx(),
            9,
        )
        .unwrap();
        assert_eq!(p.rid_key, "s:w1");
        let InboundEvent::Whatsapp(w) = p.event else {
            panic!()
        };
        assert_eq!(w.wid, "+62811");
    }

    #[test]
    fn bad_items_are_refused() {
        let cases = [
            json!({"type":"mms","rid":1}),
            json!({"type":"sms","rid":1,"phone":"+1"}),
            json!({"type":"sms","rid":1,"phone":"+1","message":"m","extra":1}),
            json!({"type":"sms","rid":"","phone":"+1","message":"m"}),
            json!({"type":"sms","rid":"x".repeat(129),"phone":"+1","message":"m"}),
            json!({"type":"sms","rid":1.5,"phone":"+1","message":"m"}),
            json!({"type":"sms","rid":1,"phone":5,"message":"m"}),
            json!({"type":"sms","rid":1,"phone":"+1","message":"m","timestamp":1645684231000i64}),
            json!({"type":"ussd","rid":1,"code":"*1#"}),
        ];
        for case in cases {
            let err = prepare_item(case.clone(), &ctx(), 1).unwrap_err();
            assert_eq!(
                err.status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{case}: {err:?}"
            );
        }
    }

    #[test]
    fn another_devices_id_is_forbidden() {
        let err = prepare_item(
            json!({"type":"sms","rid":1,"phone":"+1","message":"m","device":"dev_2"}),
            &ctx(),
            1,
        )
        .unwrap_err();
        assert_eq!(err.status, StatusCode::FORBIDDEN);
    }

    #[test]
    fn batches_are_bounded_and_all_or_nothing() {
        let item = json!({"type":"sms","rid":1,"phone":"+1","message":"m"});
        let too_many = json!({"items": vec![item.clone(); MAX_BATCH + 1]});
        assert_eq!(
            prepare_body(too_many, &ctx(), 1).unwrap_err().status,
            StatusCode::PAYLOAD_TOO_LARGE
        );
        let one_bad = json!({"items": [item.clone(), {"type":"sms"}]});
        let err = prepare_body(one_bad, &ctx(), 1).unwrap_err();
        assert!(err.message.starts_with("items[1]:"), "{}", err.message);
        assert!(prepare_body(json!({"items": []}), &ctx(), 1).is_err());
        assert!(prepare_body(json!([item]), &ctx(), 1).is_err());
    }
}
