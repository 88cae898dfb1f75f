//! Receive merpati webhooks in Rust.
//!
//! - [`Event`]: the six documented payloads, typed, serializing to exactly the documents' bytes.
//! - [`Webhook`]: Standard Webhooks signing and verification, several secrets during rotation.
//! - [`verify_legacy_secret`]: the gateway document's in-body `"secret"` check.
//! - [`Event::from_body`]: JSON or PHP-style form bodies.
//!
//! merpati itself builds every payload with these types, so the formats are defined once.

pub mod events;
pub mod form;
pub mod incident;
pub mod refs;
pub mod signing;

pub use events::{
    ChannelRef, DeviceEvent, DeviceEventKind, DeviceRef, DeviceStatus, EndpointEvent,
    EndpointEventKind, EndpointRef, Event, InboundEvent, NamedRef, Notification, ParseError, Rid,
    Sms, Ussd, Whatsapp, EVENT_TYPES,
};
pub use incident::{IncidentDevice, IncidentEvent, IncidentEventKind, IncidentRef};
pub use signing::{verify_legacy_secret, VerifyError, Webhook};

/// Why a webhook request was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error(transparent)]
    Parse(#[from] ParseError),
}

/// Verifies a request's signature, then parses its body (JSON or form, by `Content-Type`).
pub fn receive(
    webhook: &Webhook,
    headers: &http::HeaderMap,
    body: &[u8],
) -> Result<Event, ReceiveError> {
    webhook.verify(headers, body)?;
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    Ok(Event::from_body(content_type, body)?)
}
