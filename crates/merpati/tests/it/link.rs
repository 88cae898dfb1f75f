//! The device link's protocol and every bad input on it.

use serde_json::json;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_over_the_link_are_acknowledged_once_durable_and_delivered() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start().await;
    let m = app.merchant("m1").await;
    app.endpoint(&m.key, &receiver, json!({"events": ["sms"]}))
        .await;
    let mut link = Link::open(&app, &m.device_token).await;
    link.send_json(json!({"type": "messages", "ref": "r1", "items": [
        {"type": "sms", "rid": 1, "phone": "+639760713666", "message": "over the link"},
    ]}))
    .await;
    let ack = link.next_json().await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["ref"], "r1");
    assert_eq!(ack["accepted"], 1);
    let event_id = ack["items"][0]["event_id"].as_str().unwrap().to_string();
    let got = receiver.wait_for(1).await;
    assert_eq!(got[0].header("webhook-id"), event_id);
    assert_eq!(got[0].json()["data"]["message"], "over the link");

    // Sent again (the phone did not see the ack): the same answer, no second event.
    link.send_json(json!({"type": "messages", "ref": 2, "items": [
        {"type": "sms", "rid": 1, "phone": "+639760713666", "message": "over the link"},
    ]}))
    .await;
    let again = link.next_json().await;
    assert_eq!(again["ref"], 2);
    assert_eq!(again["items"], ack["items"]);
    assert_eq!(app.count_of(&m.key, "sms").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_an_error_frame_and_the_link_stays_up() {
    let app = TestApp::spawn().await;
    let m = app.merchant("m1").await;
    let mut link = Link::open(&app, &m.device_token).await;
    let cases = [
        (Frame::Text("not json".into()), 400, "invalid_json"),
        (Frame::Text("[1,2]".into()), 422, "invalid_request"),
        (Frame::Text(r#"{"type":"selfie"}"#.into()), 422, "invalid_request"),
        (Frame::Text(r#"{"no":"type"}"#.into()), 422, "invalid_request"),
        (Frame::Text(r#"{"type":"messages"}"#.into()), 422, "invalid_request"),
        (
            Frame::Text(r#"{"type":"messages","ref":"x","items":[{"type":"sms","rid":1}]}"#.into()),
            422,
            "invalid_request",
        ),
        (
            Frame::Text(
                r#"{"type":"messages","items":[{"type":"sms","rid":1,"device":"other","phone":"+1","message":"m"}]}"#
                    .into(),
            ),
            403,
            "forbidden",
        ),
        (Frame::Text(r#"{"type":"heartbeat","battery":"full"}"#.into()), 422, "invalid_request"),
        (Frame::Binary(vec![1, 2, 3].into()), 400, "invalid_json"),
    ];
    for (frame, status, code) in cases {
        let what = format!("{frame:?}");
        link.send(frame).await;
        let err = link.next_json().await;
        assert_eq!(err["type"], "error", "{what}: {err}");
        assert_eq!(err["status"], status, "{what}: {err}");
        assert_eq!(err["code"], code, "{what}: {err}");
    }
    // The ref of a refused frame comes back with its error.
    link.send_json(
        json!({"type": "messages", "ref": "bad-1", "items": [{"type": "mms", "rid": 1}]}),
    )
    .await;
    assert_eq!(link.next_json().await["ref"], "bad-1");
    // Still up: a good frame is taken.
    link.send_json(json!({"type": "messages", "items": [
        {"type": "ussd", "rid": 9, "code": "*123#", "response": "Balance: 5"},
    ]}))
    .await;
    assert_eq!(link.next_json().await["type"], "ack");
    assert_eq!(app.count_of(&m.key, "sms").await, 0);
    assert_eq!(app.count_of(&m.key, "ussd").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_1_mib_closes_the_link_with_1009() {
    let app = TestApp::spawn().await;
    let m = app.merchant("m1").await;
    // Just over, and far over: the server refuses a frame by its header, so the sender of
    // a large one meets a reset while it is still writing.
    for size in [1024 * 1024 + 10, 8 * 1024 * 1024] {
        let mut link = Link::open(&app, &m.device_token).await;
        let huge = json!({"type": "messages", "items": [
            {"type": "sms", "rid": 1, "phone": "+1", "message": "x".repeat(size)},
        ]});
        link.send_json_refused(huge).await;
        let (code, reason) = link.closed().await;
        assert_eq!(code, 1009, "{size}: {reason}");
    }
    assert_eq!(app.count_of(&m.key, "sms").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_link_replaces_the_older_without_a_disconnect() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start().await;
    let m = app.merchant("m1").await;
    app.endpoint(&m.key, &receiver, json!({"events": ["device.*"]}))
        .await;
    let mut older = Link::open(&app, &m.device_token).await;
    receiver.wait_for(1).await;
    let mut newer = Link::open(&app, &m.device_token).await;
    let (code, reason) = older.closed().await;
    assert_eq!(code, 4002, "{reason}");
    // Past the (test) grace the device is still up, with nothing announced.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let p = app.wait_status(&m.key, "dev", "connected").await;
    assert_eq!(p["link_open"], true);
    assert_eq!(receiver.received().len(), 1);
    newer
        .send_json(json!({"type": "heartbeat", "battery": 50}))
        .await;
    newer
        .send_json(json!({"type": "messages", "ref": 1, "items": [
            {"type": "sms", "rid": 1, "phone": "+1", "message": "m"},
        ]}))
        .await;
    assert_eq!(newer.next_json().await["type"], "ack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_and_revoked_tokens() {
    let app = TestApp::spawn().await;
    let m = app.merchant("m1").await;
    assert_eq!(Link::try_open(&app, "mdt_wrong").await.err(), Some(401));
    assert_eq!(Link::try_open(&app, "").await.err(), Some(401));
    assert_eq!(
        Link::try_open(&app, &m.key).await.err(),
        Some(401),
        "an API key is no device token"
    );

    let mut link = Link::open(&app, &m.device_token).await;
    let rotated = app
        .ok_post("/v1/devices/dev/token", &m.key, json!({}), 200)
        .await;
    let (code, reason) = link.closed().await;
    assert_eq!(code, 4001, "{reason}");
    assert_eq!(Link::try_open(&app, &m.device_token).await.err(), Some(401));
    let mut link = Link::open(&app, rotated["token"].as_str().unwrap()).await;
    assert_eq!(app.delete("/v1/devices/dev", &m.key).await.0, 204);
    assert_eq!(link.closed().await.0, 4001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_flood_is_refused_then_closed() {
    let app = TestApp::spawn().await;
    let m = app.merchant("m1").await;
    let mut link = Link::open(&app, &m.device_token).await;
    for _ in 0..40 {
        link.send_json(json!({"type": "heartbeat"})).await;
    }
    let mut refused = 0;
    let (code, _) = loop {
        match link.next().await {
            Some(Frame::Text(t)) => {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                assert_eq!(v["code"], "rate_limited", "{v}");
                refused += 1;
            }
            Some(Frame::Close(Some(f))) => break (u16::from(f.code), f.reason.to_string()),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(code, 1008);
    assert!(refused >= 19, "{refused} refusals before the close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_link_is_closed_at_the_heartbeat_timeout() {
    // Pings go out, but a client that never reads cannot answer them.
    let app = TestApp::spawn_with(&[("presence.heartbeat_timeout", "1s")]).await;
    let m = app.merchant("m1").await;
    let mut link = Link::open(&app, &m.device_token).await;
    let started = std::time::Instant::now();
    // Reading answers pings (tungstenite pongs for us), so stay silent by reading nothing
    // until the server must have given up, then read its close.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let (code, reason) = link.closed().await;
    assert_eq!(code, 4000, "{reason}");
    assert!(started.elapsed() >= std::time::Duration::from_secs(1));
    app.wait_status(&m.key, "dev", "pending").await;
}
