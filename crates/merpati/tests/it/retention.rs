//! Retention prunes old events with everything hanging off them, except those still owed to
//! an endpoint.

use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_events_are_pruned_unless_still_owed() {
    let app =
        TestApp::spawn_manual(&[("retention.max_age", "1h"), ("retention.interval", "50ms")]).await;
    let (live, off) = (Receiver::start().await, Receiver::start().await);
    let m = app.merchant("m1").await;
    app.endpoint(&m.key, &live, json!({"events": ["sms"]}))
        .await;
    app.endpoint(&m.key, &off, json!({"events": ["ussd"], "disabled": true}))
        .await;
    let delivered = app.sms(&m.device_token, 1).await["items"][0]["event_id"]
        .as_str()
        .unwrap()
        .to_string();
    let owed = app
        .ok_post(
            "/v1/device/messages",
            &m.device_token,
            json!({"type": "ussd", "rid": 2, "code": "*1#", "response": "r"}),
            202,
        )
        .await["items"][0]["event_id"]
        .as_str()
        .unwrap()
        .to_string();
    app.settled_event(&m.key, &delivered).await;

    // Young: kept.
    app.advance(30 * 60_000).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        app.get(&format!("/v1/events/{delivered}"), &m.key).await.0,
        200
    );

    // Old: the delivered one goes, the one held for a disabled endpoint stays.
    app.advance(31 * 60_000).await;
    let deadline = std::time::Instant::now() + PATIENCE;
    while app.get(&format!("/v1/events/{delivered}"), &m.key).await.0 != 404 {
        assert!(std::time::Instant::now() < deadline, "never pruned");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, kept) = app.get(&format!("/v1/events/{owed}"), &m.key).await;
    assert_eq!(status, 200);
    assert_eq!(kept["deliveries"][0]["status"], "held");
    // The dedup record went with it: the same rid is a new item now.
    let again = app.sms(&m.device_token, 1).await;
    assert_ne!(again["items"][0]["event_id"], delivered.as_str());
}
