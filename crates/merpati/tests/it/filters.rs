//! Which endpoints get which events: type filters and wildcards, business/channel/device
//! scopes, disabled and deleted endpoints.

use serde_json::json;

use crate::helpers::*;

fn webhook_ids(rs: &[Received]) -> Vec<String> {
    let mut ids: Vec<String> = rs
        .iter()
        .map(|r| r.header("webhook-id").to_string())
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn type_filters_and_wildcards() {
    let app = TestApp::spawn().await;
    let (only_sms, devices, all) = (
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
    );
    let m = app.merchant("m1").await;
    app.endpoint(&m.key, &only_sms, json!({"events": ["sms"]}))
        .await;
    app.endpoint(&m.key, &devices, json!({"events": ["device.*"]}))
        .await;
    app.endpoint(&m.key, &all, json!({})).await;

    let sms = app.sms(&m.device_token, 1).await;
    let status = app
        .ok_post(
            "/v1/device/status",
            &m.device_token,
            json!({"status": "connected"}),
            202,
        )
        .await;
    let sms_id = sms["items"][0]["event_id"].as_str().unwrap();
    let status_id = status["event_id"].as_str().unwrap();
    app.settled_event(&m.key, sms_id).await;
    app.settled_event(&m.key, status_id).await;

    assert_eq!(webhook_ids(&only_sms.received()), [sms_id]);
    assert_eq!(webhook_ids(&devices.received()), [status_id]);
    assert_eq!(all.received().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_filters_by_business_channel_and_device() {
    let app = TestApp::spawn().await;
    let m = app.merchant("m1").await;
    // A second business with its own channel and device.
    app.ok_post(
        "/v1/businesses",
        &m.key,
        json!({"id": "biz2", "name": "B2"}),
        201,
    )
    .await;
    app.ok_post(
        "/v1/channels",
        &m.key,
        json!({"id": "ch2", "name": "C2", "engine": "sms", "business_id": "biz2"}),
        201,
    )
    .await;
    let dev2 = app.device(&m.key, "dev2", "ch2").await;
    let dev3 = app.device(&m.key, "dev3", "ch").await;

    let (by_business, by_channel, by_device) = (
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
    );
    app.endpoint(&m.key, &by_business, json!({"business_ids": ["biz2"]}))
        .await;
    app.endpoint(&m.key, &by_channel, json!({"channel_ids": ["ch"]}))
        .await;
    app.endpoint(&m.key, &by_device, json!({"device_ids": ["dev3", "dev2"]}))
        .await;

    let mut ids = Vec::new();
    for token in [&m.device_token, &dev2, &dev3] {
        let v = app.sms(token, 7).await;
        ids.push(v["items"][0]["event_id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        app.settled_event(&m.key, id).await;
    }
    assert_eq!(webhook_ids(&by_business.received()), [ids[1].clone()]);
    let mut expected = vec![ids[0].clone(), ids[2].clone()];
    expected.sort();
    assert_eq!(webhook_ids(&by_channel.received()), expected);
    let mut expected = vec![ids[1].clone(), ids[2].clone()];
    expected.sort();
    assert_eq!(webhook_ids(&by_device.received()), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_endpoint_keeps_its_events_held() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start().await;
    let live = Receiver::start().await;
    let m = app.merchant("m1").await;
    let ep = app
        .endpoint(&m.key, &receiver, json!({"disabled": true}))
        .await;
    app.endpoint(&m.key, &live, json!({})).await;
    let v = app.sms(&m.device_token, 1).await;
    let event_id = v["items"][0]["event_id"].as_str().unwrap();
    live.wait_for(1).await;
    let (_, event) = app.get(&format!("/v1/events/{event_id}"), &m.key).await;
    let held = event["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["endpoint_id"] == ep.as_str())
        .unwrap();
    assert_eq!(held["status"], "held");
    assert_eq!(held["attempt_count"], 0);
    assert!(receiver.received().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_endpoint_gets_nothing_more() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start().await;
    let other = Receiver::start().await;
    let m = app.merchant("m1").await;
    let ep = app.endpoint(&m.key, &receiver, json!({})).await;
    app.endpoint(&m.key, &other, json!({})).await;
    app.sms(&m.device_token, 1).await;
    receiver.wait_for(1).await;
    let (status, _) = app.delete(&format!("/v1/endpoints/{ep}"), &m.key).await;
    assert_eq!(status, 204);
    app.sms(&m.device_token, 2).await;
    other.wait_for(2).await;
    assert_eq!(receiver.received().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_change_applies_to_the_very_next_event() {
    // Fan-out keeps what it reads about endpoints between events; every change must show.
    let app = TestApp::spawn().await;
    let (first, second) = (Receiver::start().await, Receiver::start().await);
    let m = app.merchant("m1").await;
    let ep = app.endpoint(&m.key, &first, json!({})).await;

    app.sms(&m.device_token, 1).await;
    first.wait_for(1).await;

    // A filter that no longer matches sms.
    let (status, _) = app
        .patch(
            &format!("/v1/endpoints/{ep}"),
            &m.key,
            json!({"events": ["ussd"]}),
        )
        .await;
    assert_eq!(status, 200);
    let skipped = app.sms(&m.device_token, 2).await;
    app.settled_event(&m.key, skipped["items"][0]["event_id"].as_str().unwrap())
        .await;

    // Pointed elsewhere, matching again.
    let (status, _) = app
        .patch(
            &format!("/v1/endpoints/{ep}"),
            &m.key,
            json!({"events": ["sms"], "url": second.url}),
        )
        .await;
    assert_eq!(status, 200);
    app.sms(&m.device_token, 3).await;
    let got = second.wait_for(1).await;
    assert_eq!(got[0].json()["data"]["rid"], 3);
    assert_eq!(
        first.received().len(),
        1,
        "nothing more went to the old URL"
    );

    // Deleted: no delivery at all.
    let (status, _) = app.delete(&format!("/v1/endpoints/{ep}"), &m.key).await;
    assert_eq!(status, 204);
    let orphan = app.sms(&m.device_token, 4).await;
    let event = app
        .settled_event(&m.key, orphan["items"][0]["event_id"].as_str().unwrap())
        .await;
    assert_eq!(event["deliveries"].as_array().map(Vec::len), Some(0));
    assert_eq!(second.received().len(), 1);
}
