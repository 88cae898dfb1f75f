//! A re-sent item is acknowledged again but never becomes a second event.

use serde_json::json;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_item_answers_like_the_first_time_and_is_delivered_once() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start().await;
    let m = app.merchant("m1").await;
    app.endpoint(&m.key, &receiver, json!({})).await;
    let item = json!({"type": "sms", "rid": 10593, "phone": "+63", "message": "Hello", "timestamp": 1645684231});
    let first = app
        .ok_post("/v1/device/messages", &m.device_token, item.clone(), 202)
        .await;
    // The same content with its keys in another order is the same item.
    let reordered =
        r#"{"timestamp":1645684231,"message":"Hello","phone":"+63","rid":10593,"type":"sms"}"#;
    let (status, again) = app
        .post_raw("/v1/device/messages", &m.device_token, reordered.as_bytes())
        .await;
    assert_eq!(status, 202);
    assert_eq!(again, first);
    let event_id = first["items"][0]["event_id"].as_str().unwrap();
    let event = app.settled_event(&m.key, event_id).await;
    assert_eq!(event["deliveries"].as_array().unwrap().len(), 1);
    assert_eq!(app.event_count(&m.key).await, 1);
    assert_eq!(receiver.received().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_rid_with_other_content_is_a_conflict_and_writes_nothing() {
    let app = TestApp::spawn().await;
    let m = app.merchant("m1").await;
    app.sms(&m.device_token, 1).await;
    let (status, err) = app
        .post(
            "/v1/device/messages",
            &m.device_token,
            json!({"type": "sms", "rid": 1, "phone": "+63", "message": "something else"}),
        )
        .await;
    assert_eq!(status, 409, "{err}");
    assert_eq!(err["error"]["code"], "conflict");
    // In a batch, the conflict of one item keeps every other item out as well.
    let (status, _) = app
        .post(
            "/v1/device/messages",
            &m.device_token,
            json!({"items": [
                {"type": "sms", "rid": 2, "phone": "+63", "message": "new"},
                {"type": "sms", "rid": 1, "phone": "+63", "message": "different"},
            ]}),
        )
        .await;
    assert_eq!(status, 409);
    // And so does one rid twice in the same batch with different content.
    let (status, err) = app
        .post(
            "/v1/device/messages",
            &m.device_token,
            json!({"items": [
                {"type": "sms", "rid": 3, "phone": "+63", "message": "one"},
                {"type": "sms", "rid": 4, "phone": "+63", "message": "new"},
                {"type": "sms", "rid": 3, "phone": "+63", "message": "two"},
            ]}),
        )
        .await;
    assert_eq!(status, 409, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("items[2]"),
        "{err}"
    );
    assert_eq!(app.event_count(&m.key).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rids_are_per_device_and_integers_differ_from_strings() {
    let app = TestApp::spawn().await;
    let m = app.merchant("m1").await;
    let other = app.device(&m.key, "dev2", "ch").await;
    let item =
        |rid: serde_json::Value| json!({"type": "sms", "rid": rid, "phone": "+63", "message": "m"});
    app.ok_post("/v1/device/messages", &m.device_token, item(json!(5)), 202)
        .await;
    app.ok_post(
        "/v1/device/messages",
        &m.device_token,
        item(json!("5")),
        202,
    )
    .await;
    app.ok_post("/v1/device/messages", &other, item(json!(5)), 202)
        .await;
    assert_eq!(app.event_count(&m.key).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_inside_one_batch_become_one_event() {
    let app = TestApp::spawn().await;
    let m = app.merchant("m1").await;
    let item =
        json!({"type": "notification", "rid": "n-1", "package": "p", "title": "t", "content": "c"});
    let v = app
        .ok_post(
            "/v1/device/messages",
            &m.device_token,
            json!({"items": [item.clone(), item]}),
            202,
        )
        .await;
    assert_eq!(v["items"][0], v["items"][1]);
    assert_eq!(app.event_count(&m.key).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_ids_increase_across_devices_and_accounts() {
    let app = TestApp::spawn().await;
    let a = app.merchant("a").await;
    let b = app.merchant("b").await;
    let mut ids = Vec::new();
    for (i, token) in [&a.device_token, &b.device_token, &a.device_token]
        .iter()
        .enumerate()
    {
        let v = app.sms(token, i as i64).await;
        ids.push(v["items"][0]["id"].as_i64().unwrap());
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
}
