//! What receivers get: the documents' payloads byte for byte, both body formats, the legacy
//! in-body secret, custom headers, signatures through a secret rotation.

use merpati_webhooks::{verify_legacy_secret, Event, InboundEvent, Webhook};
use serde_json::json;

use crate::helpers::*;

const DOC_UUID: &str = "00000000-0000-0000-d57d-f30cb6a89289";

/// The documents' own examples, compact, in their key order.
const DOC_SMS: &str = r#"{"type":"sms","data":{"id":2,"rid":10593,"sim":1,"device":"00000000-0000-0000-d57d-f30cb6a89289","phone":"+639760713666","message":"Hello World!","timestamp":1645684231}}"#;
const DOC_CONNECTED: &str = r#"{"event":"device.connected","timestamp":1738056000,"device":{"id":"device_abc123","name":"WhatsApp Business Device","channel":{"id":"channel_merchant_id","name":"WhatsApp Business","engine":"wa"},"bisnis":{"id":"biz_123","name":"My Business"},"user":{"id":"merchant_456","name":"Merchant Name"}},"status":"connected"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sms_arrives_exactly_as_the_gateway_document_shows() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start().await;
    let m = app.merchant("m1").await;
    let token = app.device(&m.key, DOC_UUID, "ch").await;
    app.endpoint(&m.key, &receiver, json!({"events": ["sms"]}))
        .await;
    // The document's sms has system id 2: let one event take id 1 first.
    app.ok_post(
        "/v1/device/status",
        &token,
        json!({"status": "connected"}),
        202,
    )
    .await;
    let accepted = app
        .ok_post(
            "/v1/device/messages",
            &token,
            json!({"type": "sms", "rid": 10593, "sim": 1, "phone": "+639760713666",
                   "message": "Hello World!", "timestamp": 1645684231}),
            202,
        )
        .await;
    assert_eq!(accepted["items"][0]["id"], 2);
    let got = receiver.wait_for(1).await;
    assert_eq!(got[0].body_str(), DOC_SMS);
    assert_eq!(got[0].header("content-type"), "application/json");
    assert_eq!(
        got[0].header("webhook-id"),
        accepted["items"][0]["event_id"]
    );
    got[0].event();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_events_arrive_exactly_as_the_device_documents_show() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start().await;
    app.ok_post(
        "/v1/accounts",
        ADMIN,
        json!({"id": "merchant_456", "name": "Merchant Name"}),
        201,
    )
    .await;
    let key = app
        .ok_post("/v1/accounts/merchant_456/api-keys", ADMIN, json!({}), 201)
        .await["key"]
        .as_str()
        .unwrap()
        .to_string();
    app.ok_post(
        "/v1/businesses",
        &key,
        json!({"id": "biz_123", "name": "My Business"}),
        201,
    )
    .await;
    app.ok_post(
        "/v1/channels",
        &key,
        json!({"id": "channel_merchant_id", "name": "WhatsApp Business", "engine": "wa",
               "business_id": "biz_123"}),
        201,
    )
    .await;
    let token = app
        .ok_post(
            "/v1/devices",
            &key,
            json!({"id": "device_abc123", "name": "WhatsApp Business Device",
                   "channel_id": "channel_merchant_id"}),
            201,
        )
        .await["token"]
        .as_str()
        .unwrap()
        .to_string();
    app.endpoint(&key, &receiver, json!({"events": ["device.*"]}))
        .await;

    app.ok_post(
        "/v1/device/status",
        &token,
        json!({"status": "connected"}),
        202,
    )
    .await;
    receiver.wait_for(1).await;
    app.ok_post(
        "/v1/device/status",
        &token,
        json!({"status": "disconnected"}),
        202,
    )
    .await;
    let got = receiver.wait_for(2).await;

    // Only the timestamp is of the moment; every other byte is the document's.
    let with_doc_time = |body: &str| {
        let ts = serde_json::from_str::<serde_json::Value>(body).unwrap()["timestamp"]
            .as_i64()
            .unwrap();
        body.replacen(
            &format!("\"timestamp\":{ts}"),
            "\"timestamp\":1738056000",
            1,
        )
    };
    assert_eq!(with_doc_time(got[0].body_str()), DOC_CONNECTED);
    let doc_disconnected = DOC_CONNECTED
        .replace("device.connected", "device.disconnected")
        .replace(
            r#""status":"connected"}"#,
            r#""status":"disconnected","reason":"reported"}"#,
        );
    assert_eq!(with_doc_time(got[1].body_str()), doc_disconnected);
    for r in &got {
        r.event();
    }
}

async fn post_one_of_each(app: &TestApp, token: &str) {
    let items = json!({"items": [
        {"type": "sms", "rid": 1, "sim": 2, "phone": "+639760713666", "message": "Hello & bye"},
        {"type": "whatsapp", "rid": 2, "phone": "+639760666713", "message": "Halo [1]"},
        {"type": "ussd", "rid": 3, "code": "*143#", "response": "Sorry! You are not allowed to use this service."},
        {"type": "notification", "rid": 4, "package": "com.facebook.katana",
         "title": "Someone commented on your post!", "content": "Someone commented = nice"},
    ]});
    let accepted = app.ok_post("/v1/device/messages", token, items, 202).await;
    assert_eq!(accepted["accepted"], 4);
    app.ok_post(
        "/v1/device/status",
        token,
        json!({"status": "connected"}),
        202,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_arrives_signed_in_json_and_in_form() {
    let app = TestApp::spawn().await;
    let json_receiver = Receiver::start().await;
    let form_receiver = Receiver::start().await;
    let m = app.merchant("m1").await;
    app.endpoint(&m.key, &json_receiver, json!({})).await;
    app.endpoint(&m.key, &form_receiver, json!({"format": "form"}))
        .await;
    post_one_of_each(&app, &m.device_token).await;

    let as_json = json_receiver.wait_for(5).await;
    let as_form = form_receiver.wait_for(5).await;
    let mut types: Vec<&str> = Vec::new();
    for r in &as_json {
        assert_eq!(r.header("content-type"), "application/json");
        let event = r.event();
        types.push(event.event_type());
        let twin = as_form
            .iter()
            .find(|f| f.header("webhook-id") == r.header("webhook-id"))
            .expect("the form endpoint got the same event");
        assert_eq!(
            twin.header("content-type"),
            "application/x-www-form-urlencoded"
        );
        // The form body reads back into exactly the same typed event.
        assert_eq!(twin.event(), event);
    }
    types.sort();
    assert_eq!(
        types,
        [
            "device.connected",
            "notification",
            "sms",
            "ussd",
            "whatsapp"
        ]
    );
    let sms = as_json.iter().map(|r| r.event()).find_map(|e| match e {
        Event::Inbound(InboundEvent::Sms(s)) => Some(s),
        _ => None,
    });
    let sms = sms.unwrap();
    assert_eq!(
        (sms.sim, sms.device.as_str(), sms.message.as_str()),
        (2, "dev", "Hello & bye")
    );
    let form_sms = as_form
        .iter()
        .find(|f| f.body_str().starts_with("type=sms"))
        .unwrap();
    assert!(form_sms
        .body_str()
        .contains("data%5Bphone%5D=%2B639760713666"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatsapp_carries_the_devices_number_as_wid() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start().await;
    let m = app.merchant_on("m1", "wa").await;
    app.endpoint(&m.key, &receiver, json!({})).await;
    app.ok_post(
        "/v1/device/messages",
        &m.device_token,
        json!({"type": "whatsapp", "rid": "wamid.1", "phone": "+639760666713", "message": "hi", "timestamp": 1645684231}),
        202,
    )
    .await;
    let got = receiver.wait_for(1).await;
    assert_eq!(
        got[0].body_str(),
        r#"{"type":"whatsapp","data":{"id":1,"wid":"+6281100","phone":"+639760666713","message":"hi","timestamp":1645684231}}"#
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_legacy_secret_check_works_in_both_formats() {
    let app = TestApp::spawn().await;
    let json_receiver = Receiver::start().await;
    let form_receiver = Receiver::start().await;
    let m = app.merchant("m1").await;
    app.endpoint(&m.key, &json_receiver, json!({"secret_in_body": true}))
        .await;
    app.endpoint(
        &m.key,
        &form_receiver,
        json!({"secret_in_body": true, "format": "form"}),
    )
    .await;
    app.sms(&m.device_token, 1).await;

    let j = &json_receiver.wait_for(1).await[0];
    let body = j.json();
    assert_eq!(body["secret"], SECRET);
    assert!(j
        .body_str()
        .ends_with(&format!(",\"secret\":\"{SECRET}\"}}")));
    verify_legacy_secret(&body, SECRET).unwrap();
    assert!(verify_legacy_secret(&body, "whsec_other").is_err());
    j.event();

    // What PHP's $_POST holds for the form body: $request["secret"] == $secret.
    let f = &form_receiver.wait_for(1).await[0];
    let post = merpati_webhooks::form::decode(&f.body).unwrap();
    verify_legacy_secret(&post, SECRET).unwrap();
    assert_eq!(post["type"], "sms");
    assert_eq!(post["data"]["phone"], "+639760713666");
    f.event();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_headers_are_sent() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start().await;
    let m = app.merchant("m1").await;
    app.endpoint(
        &m.key,
        &receiver,
        json!({"headers": {"X-Api-Key": "abc123", "x-tenant": "t1"}}),
    )
    .await;
    app.sms(&m.device_token, 1).await;
    let got = receiver.wait_for(1).await;
    assert_eq!(got[0].header("x-api-key"), "abc123");
    assert_eq!(got[0].header("x-tenant"), "t1");
    assert!(got[0].header("user-agent").starts_with("merpati/"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_signs_beside_the_new_one_until_its_grace_ends() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start().await;
    let m = app.merchant("m1").await;
    let ep = app.endpoint(&m.key, &receiver, json!({})).await;

    let rotated = app
        .ok_post(
            &format!("/v1/endpoints/{ep}/secret/rotate"),
            &m.key,
            json!({}),
            200,
        )
        .await;
    let new_secret = rotated["secret"].as_str().unwrap().to_string();
    assert_ne!(new_secret, SECRET);
    app.sms(&m.device_token, 1).await;
    let r = receiver.wait_for(1).await[0].clone();
    assert_eq!(r.header("webhook-signature").split(' ').count(), 2);
    for secret in [SECRET, new_secret.as_str()] {
        Webhook::new(secret)
            .unwrap()
            .verify(&r.headers, &r.body)
            .unwrap();
    }

    // A rotation with no grace drops every older secret at once.
    let again = app
        .ok_post(
            &format!("/v1/endpoints/{ep}/secret/rotate"),
            &m.key,
            json!({"grace": "0s"}),
            200,
        )
        .await;
    let newest = again["secret"].as_str().unwrap();
    app.sms(&m.device_token, 2).await;
    let r = receiver.wait_for(2).await[1].clone();
    assert_eq!(r.header("webhook-signature").split(' ').count(), 1);
    Webhook::new(newest)
        .unwrap()
        .verify(&r.headers, &r.body)
        .unwrap();
    assert!(Webhook::new(SECRET)
        .unwrap()
        .verify(&r.headers, &r.body)
        .is_err());
    assert!(Webhook::new(&new_secret)
        .unwrap()
        .verify(&r.headers, &r.body)
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_stops_signing_once_its_grace_has_passed() {
    let app = TestApp::spawn_manual(&[]).await;
    let receiver = Receiver::start().await;
    let m = app.merchant("m1").await;
    let ep = app.endpoint(&m.key, &receiver, json!({})).await;
    app.ok_post(
        &format!("/v1/endpoints/{ep}/secret/rotate"),
        &m.key,
        json!({"grace": "1m"}),
        200,
    )
    .await;
    app.sms(&m.device_token, 1).await;
    let r = receiver.wait_for(1).await[0].clone();
    assert_eq!(r.header("webhook-signature").split(' ').count(), 2);
    // Recorded before the clock jumps past its lease, so that it is not attempted again.
    app.settled_event(&m.key, r.header("webhook-id")).await;

    // Nothing was written when the grace ended; time alone retires the old secret.
    app.advance(61_000).await;
    app.sms(&m.device_token, 2).await;
    let r = receiver.wait_for(2).await[1].clone();
    assert_eq!(r.header("webhook-signature").split(' ').count(), 1);
    assert!(Webhook::new(SECRET)
        .unwrap()
        .verify(&r.headers, &r.body)
        .is_err());
}
