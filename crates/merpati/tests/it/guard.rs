//! The private-address guard: refused at endpoint creation where the URL is an address, at
//! delivery where a name resolves to one, and the address connected to is the one vetted.

use serde_json::{json, Value};

use crate::helpers::*;

fn port_of(r: &Receiver) -> u16 {
    url::Url::parse(&r.url).unwrap().port().unwrap()
}

fn only_delivery(event: &Value) -> &Value {
    &event["deliveries"][0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_in_urls_are_refused_at_creation() {
    // Nothing exempt: loopback is refused like every private range.
    let app = TestApp::spawn_with(&[("delivery.allowed_networks", "")]).await;
    let m = app.merchant("m1").await;
    for url in [
        "http://127.0.0.1:9000/hook",
        "http://localhost:9000/hook",
        "http://10.0.0.1/hook",
        "http://192.168.1.10/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.64.0.1/",
        "http://[::1]/hook",
        "http://[fd00:ec2::254]/",
        "http://[::ffff:127.0.0.1]/",
        "http://0.0.0.0/",
    ] {
        let (status, err) = app.post("/v1/endpoints", &m.key, json!({"url": url})).await;
        assert_eq!(status, 422, "{url}: {err}");
        assert_eq!(err["error"]["code"], "forbidden_address", "{url}");
    }
    let ep = app
        .ok_post(
            "/v1/endpoints",
            &m.key,
            json!({"url": "https://hooks.example.com/x"}),
            201,
        )
        .await;
    let (status, _) = app
        .patch(
            &format!("/v1/endpoints/{}", ep["id"].as_str().unwrap()),
            &m.key,
            json!({"url": "http://10.1.2.3/"}),
        )
        .await;
    assert_eq!(status, 422);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_resolves_to_a_private_address_is_refused_at_delivery() {
    let receiver = Receiver::start().await;
    // The name is fine when the endpoint is made; it resolves to loopback when delivering.
    let app = TestApp::spawn_with(&[
        ("delivery.allowed_networks", ""),
        ("delivery.resolve", "rebind.test=127.0.0.1"),
    ])
    .await;
    let m = app.merchant("m1").await;
    app.ok_post(
        "/v1/endpoints",
        &m.key,
        json!({"url": format!("http://rebind.test:{}/hook", port_of(&receiver))}),
        201,
    )
    .await;
    let v = app.sms(&m.device_token, 1).await;
    let event = app
        .settled_event(&m.key, v["items"][0]["event_id"].as_str().unwrap())
        .await;
    let d = only_delivery(&event);
    assert_eq!(d["status"], "failed", "{d}");
    assert_eq!(d["attempt_count"], 1, "not retried: {d}");
    assert_eq!(d["attempts"][0]["error_kind"], "forbidden_address");
    assert!(d["attempts"][0]["error"]
        .as_str()
        .unwrap()
        .contains("127.0.0.1"));
    assert!(
        receiver.received().is_empty(),
        "nothing reached the private address"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_vetted_addresses_are_connected_to() {
    let receiver = Receiver::start().await;
    // One name, two addresses: a private one (refused) and loopback (allowed here). Only the
    // allowed one is ever connected to, so the delivery lands.
    let app = TestApp::spawn_with(&[(
        "delivery.resolve",
        "mixed.test=10.255.0.7,mixed.test=127.0.0.1,private.test=10.255.0.8",
    )])
    .await;
    let m = app.merchant("m1").await;
    app.ok_post(
        "/v1/endpoints",
        &m.key,
        json!({"url": format!("http://mixed.test:{}/hook", port_of(&receiver)), "secret": SECRET}),
        201,
    )
    .await;
    app.ok_post(
        "/v1/endpoints",
        &m.key,
        json!({"url": "http://private.test/hook"}),
        201,
    )
    .await;
    let v = app.sms(&m.device_token, 1).await;
    let event = app
        .settled_event(&m.key, v["items"][0]["event_id"].as_str().unwrap())
        .await;
    let mut kinds: Vec<String> = event["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| format!("{}:{}", d["status"], d["attempts"][0]["error_kind"]))
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        ["\"failed\":\"forbidden_address\"", "\"succeeded\":null"]
    );
    let got = receiver.wait_for(1).await;
    got[0].event();
}
