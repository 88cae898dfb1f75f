//! The payloads merpati delivers, defined once for the server and for receivers.
//!
//! Field names, nesting, order and JSON types follow the public documents exactly
//! (`device.connected`, `device.disconnected`, and the gateway's `sms`, `whatsapp`, `ussd`,
//! `notification`). Struct field order is serialization order, so do not reorder fields.

use serde::{Deserialize, Serialize};

use crate::form;
use crate::incident::IncidentEvent;
pub use crate::refs::{ChannelRef, NamedRef};

/// Every event type merpati knows, in the spelling used by payloads and endpoint filters.
pub const EVENT_TYPES: &[&str] = &[
    "device.connected",
    "device.disconnected",
    "sms",
    "whatsapp",
    "ussd",
    "notification",
    "endpoint.disabled",
    "incident.opened",
    "incident.acknowledged",
    "incident.resolved",
];

/// An event as a receiver sees it: either a device lifecycle event (`{"event": …}`) or an
/// inbound message from a gateway (`{"type": …, "data": …}`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Event {
    Device(DeviceEvent),
    Inbound(InboundEvent),
    /// merpati's own operational events, in the device events' shape.
    Endpoint(EndpointEvent),
    Incident(IncidentEvent),
}

/// `endpoint.disabled`: an endpoint stopped receiving; told to the account's other endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointEvent {
    pub event: EndpointEventKind,
    pub timestamp: i64,
    pub endpoint: EndpointRef,
    /// `gone` (it answered 410) or `failing` (it failed without pause for too long).
    pub reason: String,
    /// Unix seconds since when it had been failing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing_since: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EndpointEventKind {
    #[serde(rename = "endpoint.disabled")]
    Disabled,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRef {
    pub id: String,
    pub url: String,
}

/// `device.connected` / `device.disconnected`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceEvent {
    pub event: DeviceEventKind,
    /// Unix seconds when it happened.
    pub timestamp: i64,
    pub device: DeviceRef,
    pub status: DeviceStatus,
    /// Added by merpati on a disconnect: why the device went down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Added by merpati on a connect after an outage: how long it was down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offline_seconds: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceEventKind {
    #[serde(rename = "device.connected")]
    Connected,
    #[serde(rename = "device.disconnected")]
    Disconnected,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceStatus {
    Connected,
    Disconnected,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRef {
    pub id: String,
    pub name: String,
    pub channel: ChannelRef,
    pub bisnis: NamedRef,
    pub user: NamedRef,
}

/// What a gateway device received, as `{"type": …, "data": {…}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "lowercase")]
pub enum InboundEvent {
    Sms(Sms),
    Whatsapp(Whatsapp),
    Ussd(Ussd),
    Notification(Notification),
}

/// The device's own id for an item: an integer as in the documents, or a string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Rid {
    Int(i64),
    Str(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sms {
    /// Unique id from the system (merpati's increasing integer).
    pub id: i64,
    /// Unique id from the device.
    pub rid: Rid,
    /// SIM card slot.
    pub sim: i64,
    /// Device unique id.
    pub device: String,
    /// Sender phone number.
    pub phone: String,
    pub message: String,
    /// Receive timestamp, Unix seconds.
    pub timestamp: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Whatsapp {
    pub id: i64,
    /// The WhatsApp account's own phone number.
    pub wid: String,
    /// Sender phone number.
    pub phone: String,
    pub message: String,
    pub timestamp: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ussd {
    pub id: i64,
    pub sim: i64,
    pub device: String,
    pub code: String,
    pub response: String,
    pub timestamp: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    pub id: i64,
    pub device: String,
    pub package: String,
    pub title: String,
    pub content: String,
    pub timestamp: i64,
}

/// Why a body could not be read as an [`Event`].
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("body is not valid JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("body is not a valid form: {0}")]
    Form(String),
    #[error("body has neither an \"event\" nor a \"type\" field")]
    UnknownShape,
    #[error("payload does not match its type: {0}")]
    Shape(#[source] serde_json::Error),
}

/// The integer-valued fields of every payload: a form body carries them as text, and they are
/// turned back into numbers so that a form body parses into the same typed event as JSON.
const INTEGER_FIELDS: &[&str] = &["id", "rid", "sim", "timestamp", "offline_seconds"];

impl Event {
    /// The event type: `device.connected`, `sms`, …
    pub fn event_type(&self) -> &'static str {
        match self {
            Event::Device(d) => d.event.as_str(),
            Event::Inbound(i) => i.event_type(),
            Event::Endpoint(_) => "endpoint.disabled",
            Event::Incident(i) => i.event.as_str(),
        }
    }

    /// Reads a JSON body.
    pub fn from_json(body: &[u8]) -> Result<Event, ParseError> {
        let value: serde_json::Value = serde_json::from_slice(body).map_err(ParseError::Json)?;
        Event::from_value(value)
    }

    /// Reads an `application/x-www-form-urlencoded` body with PHP-style nested keys.
    pub fn from_form(body: &[u8]) -> Result<Event, ParseError> {
        let mut value = form::decode(body).map_err(|e| ParseError::Form(e.to_string()))?;
        coerce_integers(&mut value);
        Event::from_value(value)
    }

    /// Reads a body of either format, chosen by its `Content-Type`.
    pub fn from_body(content_type: Option<&str>, body: &[u8]) -> Result<Event, ParseError> {
        let is_form = content_type
            .map(|ct| {
                ct.trim_start()
                    .starts_with("application/x-www-form-urlencoded")
            })
            .unwrap_or(false);
        if is_form {
            Event::from_form(body)
        } else {
            Event::from_json(body)
        }
    }

    /// Reads an already parsed body. A top-level `secret` (the legacy in-body check) is ignored.
    pub fn from_value(mut value: serde_json::Value) -> Result<Event, ParseError> {
        if let Some(map) = value.as_object_mut() {
            map.remove("secret");
            if let Some(kind) = map.get("event").and_then(|e| e.as_str()) {
                if kind.starts_with("incident.") {
                    return serde_json::from_value(value)
                        .map(Event::Incident)
                        .map_err(ParseError::Shape);
                }
                if kind.starts_with("endpoint.") {
                    return serde_json::from_value(value)
                        .map(Event::Endpoint)
                        .map_err(ParseError::Shape);
                }
                return serde_json::from_value(value)
                    .map(Event::Device)
                    .map_err(ParseError::Shape);
            }
            if map.contains_key("type") {
                return serde_json::from_value(value)
                    .map(Event::Inbound)
                    .map_err(ParseError::Shape);
            }
        }
        Err(ParseError::UnknownShape)
    }

    /// The JSON bytes merpati sends for this event.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("events always serialize")
    }
}

impl DeviceEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceEventKind::Connected => "device.connected",
            DeviceEventKind::Disconnected => "device.disconnected",
        }
    }
}

impl InboundEvent {
    pub fn event_type(&self) -> &'static str {
        match self {
            InboundEvent::Sms(_) => "sms",
            InboundEvent::Whatsapp(_) => "whatsapp",
            InboundEvent::Ussd(_) => "ussd",
            InboundEvent::Notification(_) => "notification",
        }
    }

    /// The system-wide integer id (`data.id`).
    pub fn system_id(&self) -> i64 {
        match self {
            InboundEvent::Sms(d) => d.id,
            InboundEvent::Whatsapp(d) => d.id,
            InboundEvent::Ussd(d) => d.id,
            InboundEvent::Notification(d) => d.id,
        }
    }

    pub fn set_system_id(&mut self, id: i64) {
        match self {
            InboundEvent::Sms(d) => d.id = id,
            InboundEvent::Whatsapp(d) => d.id = id,
            InboundEvent::Ussd(d) => d.id = id,
            InboundEvent::Notification(d) => d.id = id,
        }
    }

    pub fn timestamp(&self) -> i64 {
        match self {
            InboundEvent::Sms(d) => d.timestamp,
            InboundEvent::Whatsapp(d) => d.timestamp,
            InboundEvent::Ussd(d) => d.timestamp,
            InboundEvent::Notification(d) => d.timestamp,
        }
    }
}

fn coerce_integers(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if INTEGER_FIELDS.contains(&key.as_str()) {
                    if let Some(n) = v.as_str().and_then(|s| s.parse::<i64>().ok()) {
                        *v = serde_json::Value::from(n);
                        continue;
                    }
                }
                coerce_integers(v);
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(coerce_integers),
        _ => {}
    }
}

/// True when `pattern` (an exact type, `prefix.*` or `*`) names at least one known type.
pub fn is_known_type_pattern(pattern: &str) -> bool {
    EVENT_TYPES.iter().any(|t| type_matches(pattern, t))
}

/// Whether an endpoint filter entry matches an event type.
pub fn type_matches(pattern: &str, event_type: &str) -> bool {
    if pattern == "*" || pattern == event_type {
        return true;
    }
    match pattern.strip_suffix(".*") {
        Some(prefix) => event_type
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('.')),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_by_dotted_prefix() {
        assert!(type_matches("device.*", "device.connected"));
        assert!(type_matches("*", "sms"));
        assert!(type_matches("sms", "sms"));
        assert!(!type_matches("device.*", "devices.x"));
        assert!(!type_matches("sms", "ussd"));
        assert!(is_known_type_pattern("device.*"));
        assert!(!is_known_type_pattern("mms"));
        assert!(!is_known_type_pattern("sms.*"));
        assert!(is_known_type_pattern("endpoint.*"));
    }

    #[test]
    fn form_body_parses_to_the_same_event_as_json() {
        let json = br#"{"type":"sms","data":{"id":2,"rid":10593,"sim":1,"device":"d","phone":"+63","message":"Hi & bye","timestamp":1645684231}}"#;
        let from_json = Event::from_json(json).unwrap();
        let form = crate::form::encode(&serde_json::from_slice(json).unwrap());
        assert_eq!(Event::from_form(form.as_bytes()).unwrap(), from_json);
    }

    #[test]
    fn string_rid_survives_json_round_trip() {
        let json = br#"{"type":"sms","data":{"id":2,"rid":"abc-1","sim":1,"device":"d","phone":"+63","message":"m","timestamp":1}}"#;
        let Event::Inbound(InboundEvent::Sms(sms)) = Event::from_json(json).unwrap() else {
            panic!("not an sms")
        };
        assert_eq!(sms.rid, Rid::Str("abc-1".into()));
    }

    #[test]
    fn endpoint_events_round_trip() {
        let json = br#"{"event":"endpoint.disabled","timestamp":5,"endpoint":{"id":"ep_1","url":"https://x/"},"reason":"gone"}"#;
        let e = Event::from_json(json).unwrap();
        assert_eq!(e.event_type(), "endpoint.disabled");
        assert_eq!(e.to_json(), json.to_vec());
    }

    #[test]
    fn shape_errors_are_reported() {
        assert!(matches!(
            Event::from_json(br#"{"hello":1}"#),
            Err(ParseError::UnknownShape)
        ));
        assert!(matches!(
            Event::from_json(br#"{"type":"sms","data":{}}"#),
            Err(ParseError::Shape(_))
        ));
        assert!(matches!(Event::from_json(b"{"), Err(ParseError::Json(_))));
    }
}
