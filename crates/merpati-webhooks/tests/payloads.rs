//! The typed events against the documents' own examples, byte for byte, and the signatures
//! against the official Standard Webhooks crate.

use merpati_webhooks::*;

const CONNECTED_DOC: &str = include_str!("fixtures/device-connected.json");
const DISCONNECTED_DOC: &str = include_str!("fixtures/device-disconnected.json");
const GATEWAY_DOC: &str = include_str!("fixtures/gateway-examples.json");
const DOC_DEVICE_UUID: &str = "00000000-0000-0000-d57d-f30cb6a89289";

fn doc_device(kind: DeviceEventKind, status: DeviceStatus) -> Event {
    Event::Device(DeviceEvent {
        event: kind,
        timestamp: 1738056000,
        device: DeviceRef {
            id: "device_abc123".into(),
            name: "WhatsApp Business Device".into(),
            channel: ChannelRef {
                id: "channel_merchant_id".into(),
                name: "WhatsApp Business".into(),
                engine: "wa".into(),
            },
            bisnis: NamedRef {
                id: "biz_123".into(),
                name: "My Business".into(),
            },
            user: NamedRef {
                id: "merchant_456".into(),
                name: "Merchant Name".into(),
            },
        },
        status,
        reason: None,
        offline_seconds: None,
    })
}

/// The document's JSON, re-serialized compactly in its own key order.
fn compact(doc: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(doc).unwrap();
    serde_json::to_string(&v).unwrap()
}

#[test]
fn device_connected_is_the_documents_example_to_the_byte() {
    let event = doc_device(DeviceEventKind::Connected, DeviceStatus::Connected);
    // The document is pretty-printed with two spaces: so is serde_json's pretty printer.
    assert_eq!(
        serde_json::to_string_pretty(&event).unwrap() + "\n",
        CONNECTED_DOC
    );
    assert_eq!(
        String::from_utf8(event.to_json()).unwrap(),
        compact(CONNECTED_DOC)
    );
    assert_eq!(Event::from_json(CONNECTED_DOC.as_bytes()).unwrap(), event);
}

#[test]
fn device_disconnected_is_the_documents_example_to_the_byte() {
    let event = doc_device(DeviceEventKind::Disconnected, DeviceStatus::Disconnected);
    assert_eq!(
        String::from_utf8(event.to_json()).unwrap(),
        compact(DISCONNECTED_DOC)
    );
    assert_eq!(
        Event::from_json(DISCONNECTED_DOC.as_bytes()).unwrap(),
        event
    );
}

#[test]
fn added_fields_come_after_the_documented_ones() {
    let Event::Device(mut d) =
        doc_device(DeviceEventKind::Disconnected, DeviceStatus::Disconnected)
    else {
        unreachable!()
    };
    d.reason = Some("heartbeat_timeout".into());
    let json = String::from_utf8(Event::Device(d).to_json()).unwrap();
    assert!(json.ends_with(r#""status":"disconnected","reason":"heartbeat_timeout"}"#));
}

#[test]
fn gateway_examples_are_reproduced_to_the_byte() {
    let built = [
        InboundEvent::Sms(Sms {
            id: 2,
            rid: Rid::Int(10593),
            sim: 1,
            device: DOC_DEVICE_UUID.into(),
            phone: "+639760713666".into(),
            message: "Hello World!".into(),
            timestamp: 1645684231,
        }),
        InboundEvent::Whatsapp(Whatsapp {
            id: 2,
            wid: "+639760713666".into(),
            phone: "+639760666713".into(),
            message: "Hello World!".into(),
            timestamp: 1645684231,
        }),
        InboundEvent::Ussd(Ussd {
            id: 98,
            sim: 1,
            device: DOC_DEVICE_UUID.into(),
            code: "*143#".into(),
            response: "Sorry! You are not allowed to use this service.".into(),
            timestamp: 1645684231,
        }),
        InboundEvent::Notification(Notification {
            id: 77,
            device: DOC_DEVICE_UUID.into(),
            package: "com.facebook.katana".into(),
            title: "Someone commented on your post!".into(),
            content: "Someone commented on your post!".into(),
            timestamp: 1645684231,
        }),
    ];
    let docs: Vec<&str> = GATEWAY_DOC.lines().collect();
    assert_eq!(docs.len(), built.len());
    for (event, doc) in built.into_iter().zip(docs) {
        let event = Event::Inbound(event);
        assert_eq!(String::from_utf8(event.to_json()).unwrap(), doc);
        assert_eq!(Event::from_json(doc.as_bytes()).unwrap(), event);
        // The form body PHP's $_POST reads parses back to the same event.
        let form = form::encode(&serde_json::from_str(doc).unwrap());
        assert_eq!(Event::from_form(form.as_bytes()).unwrap(), event);
    }
}

#[test]
fn the_official_standard_webhooks_crate_accepts_our_signatures() {
    let secret = signing::encode_secret(b"0123456789abcdef01234567");
    let body = GATEWAY_DOC.lines().next().unwrap().as_bytes();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let ours = Webhook::new(&secret).unwrap();
    let signature = ours.sign("evt_01TEST", now, body);

    let mut headers = http::HeaderMap::new();
    headers.insert("webhook-id", "evt_01TEST".parse().unwrap());
    headers.insert("webhook-timestamp", now.to_string().parse().unwrap());
    headers.insert("webhook-signature", signature.parse().unwrap());

    let official = standardwebhooks::Webhook::new(&secret).unwrap();
    official.verify(body, &headers).unwrap();
    // And the other way round: what the official crate signs, we verify.
    let theirs = official.sign("evt_01TEST", now, body).unwrap();
    headers.insert("webhook-signature", theirs.parse().unwrap());
    ours.verify(&headers, body).unwrap();
    assert!(official.verify(b"{}", &headers).is_err());
}
