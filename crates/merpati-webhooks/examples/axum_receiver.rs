//! A webhook receiver in axum: verifies the signature, then handles each event type.
//! Run: `cargo run -p merpati-webhooks --example axum_receiver` and point an endpoint at
//! http://127.0.0.1:9000/webhook with the secret below.

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use merpati_webhooks::{DeviceEventKind, Event, InboundEvent, Webhook};

async fn webhook(headers: HeaderMap, body: Bytes) -> StatusCode {
    // In a real receiver the secret comes from configuration.
    let wh = Webhook::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("valid secret");
    let event = match merpati_webhooks::receive(&wh, &headers, &body) {
        Ok(event) => event,
        Err(e) => {
            eprintln!("refused: {e}");
            return StatusCode::UNAUTHORIZED;
        }
    };
    match event {
        Event::Device(d) if d.event == DeviceEventKind::Disconnected => {
            println!("{} is offline ({:?})", d.device.name, d.reason);
        }
        Event::Device(d) => println!("{} is online", d.device.name),
        Event::Inbound(InboundEvent::Sms(sms)) => {
            println!("SMS #{} from {}: {}", sms.id, sms.phone, sms.message);
        }
        Event::Inbound(other) => println!("{} #{}", other.event_type(), other.system_id()),
        Event::Endpoint(e) => println!("endpoint {} disabled: {}", e.endpoint.url, e.reason),
        Event::Incident(i) => println!(
            "incident {} of {}: {}",
            i.incident.id, i.incident.bisnis.name, i.incident.state
        ),
    }
    // Answer fast with a 2xx; anything else is retried.
    StatusCode::NO_CONTENT
}

#[tokio::main]
async fn main() {
    let app = Router::new().route("/webhook", post(webhook));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:9000")
        .await
        .unwrap();
    axum::serve(listener, app).await.unwrap();
}
