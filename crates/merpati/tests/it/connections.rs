//! Connections to receivers: kept alive from one delivery to the next, and let go once the
//! worker has had nothing to deliver for `delivery.idle_release_after` (with the memory the
//! burst took).

use serde_json::json;

use crate::helpers::*;

/// Returns the event's id.
async fn send_sms(app: &TestApp, device_token: &str, rid: i64) -> String {
    let v = app.sms(device_token, rid).await;
    v["items"][0]["event_id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_one_after_another_share_one_connection() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start().await;
    let m = app.merchant("m1").await;
    app.endpoint(&m.key, &receiver, json!({})).await;

    for rid in 1..=3 {
        let id = send_sms(&app, &m.device_token, rid).await;
        // Answered and recorded before the next is sent: the connection is free again.
        app.settled_event(&m.key, &id).await;
    }
    assert_eq!(receiver.received().len(), 3);
    assert_eq!(receiver.connections_opened(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_lets_its_connections_go_and_the_next_delivery_opens_one() {
    let app = TestApp::spawn_with(&[("delivery.idle_release_after", "0s")]).await;
    let receiver = Receiver::start().await;
    let m = app.merchant("m1").await;
    app.endpoint(&m.key, &receiver, json!({})).await;

    let first = send_sms(&app, &m.device_token, 1).await;
    receiver.wait_for(1).await;
    // Nothing else to deliver: the worker closes the connection it kept alive.
    receiver.wait_closed(1).await;

    let second = send_sms(&app, &m.device_token, 2).await;
    let got = receiver.wait_for(2).await;
    assert_eq!(receiver.connections_opened(), 2);
    let rids: Vec<_> = got
        .iter()
        .map(|r| r.json()["data"]["rid"].clone())
        .collect();
    assert_eq!(rids, [json!(1), json!(2)]);
    // The store works on after shrinking its caches: both attempts are on record.
    for id in [first, second] {
        let event = app.settled_event(&m.key, &id).await;
        assert_eq!(event["deliveries"][0]["status"], "succeeded", "{event}");
    }
}
