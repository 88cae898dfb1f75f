//! The delivery contract against receivers that fail: retries with the same webhook-id,
//! Retry-After, final client errors, exhaustion, timeouts, redirects, bounded answers.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

async fn one_sms(app: &TestApp, m: &Merchant) -> String {
    let v = app.sms(&m.device_token, 1).await;
    v["items"][0]["event_id"].as_str().unwrap().to_string()
}

fn only_delivery(event: &Value) -> &Value {
    let deliveries = event["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 1, "{event}");
    &deliveries[0]
}

fn attempt_statuses(delivery: &Value) -> Vec<Value> {
    delivery["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status_code"].clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_until_success_with_the_same_id() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start().await;
    receiver.script([
        Answer::status(500).body("down for a moment"),
        Answer::status(502),
    ]);
    let m = app.merchant("m1").await;
    app.endpoint(&m.key, &receiver, json!({})).await;
    let event_id = one_sms(&app, &m).await;

    let got = receiver.wait_for(3).await;
    assert!(got.iter().all(|r| r.header("webhook-id") == event_id));
    for r in &got {
        r.event();
    }
    let event = app.settled_event(&m.key, &event_id).await;
    let d = only_delivery(&event);
    assert_eq!(d["status"], "succeeded");
    assert_eq!(d["attempt_count"], 3);
    assert_eq!(attempt_statuses(d), [json!(500), json!(502), json!(200)]);
    let first = &d["attempts"][0];
    assert_eq!(first["error_kind"], "http_status");
    assert_eq!(first["response_body"], "down for a moment");
    assert!(first["duration_ms"].as_i64().unwrap() >= 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_on_429_and_503() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start().await;
    // The schedule retries after ~100 ms; the receiver asks for a second.
    receiver.script([
        Answer::status(429).header("retry-after", "1"),
        Answer::status(503).header("retry-after", "1"),
    ]);
    let m = app.merchant("m1").await;
    app.endpoint(&m.key, &receiver, json!({})).await;
    let event_id = one_sms(&app, &m).await;
    let got = receiver.wait_for(3).await;
    for pair in got.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(gap >= Duration::from_millis(950), "retried after {gap:?}");
    }
    let event = app.settled_event(&m.key, &event_id).await;
    assert_eq!(only_delivery(&event)["status"], "succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_are_final_except_the_transient_ones() {
    let app = TestApp::spawn().await;
    let m = app.merchant("m1").await;
    for (status, attempts, outcome) in [
        (400, 1, "failed"),
        (401, 1, "failed"),
        (404, 1, "failed"),
        (410, 1, "failed"),
        (408, 2, "succeeded"),
        (409, 2, "succeeded"),
        (425, 2, "succeeded"),
        (429, 2, "succeeded"),
    ] {
        let receiver = Receiver::start().await;
        receiver.script([Answer::status(status)]);
        let ep = app
            .endpoint(&m.key, &receiver, json!({"events": ["ussd"]}))
            .await;
        let v = app
            .ok_post(
                "/v1/device/messages",
                &m.device_token,
                json!({"type": "ussd", "rid": status, "code": "*1#", "response": "ok"}),
                202,
            )
            .await;
        let event = app
            .settled_event(&m.key, v["items"][0]["event_id"].as_str().unwrap())
            .await;
        let d = only_delivery(&event);
        assert_eq!(d["status"], outcome, "{status}: {d}");
        assert_eq!(d["attempt_count"], attempts, "{status}: {d}");
        assert_eq!(receiver.received().len(), attempts as usize, "{status}");
        app.delete(&format!("/v1/endpoints/{ep}"), &m.key).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stop_when_the_schedule_is_exhausted() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start().await;
    receiver.always(Answer::status(500));
    let m = app.merchant("m1").await;
    app.endpoint(&m.key, &receiver, json!({})).await;
    let event_id = one_sms(&app, &m).await;
    let event = app.settled_event(&m.key, &event_id).await;
    let d = only_delivery(&event);
    // One attempt plus one per entry of the three-entry test schedule.
    assert_eq!(d["status"], "failed");
    assert_eq!(d["attempt_count"], 4);
    assert_eq!(receiver.received().len(), 4);
    assert!(d["completed_at"].is_string());
    assert!(d["next_attempt_at"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_does_not_answer_in_time_is_a_timeout() {
    let app = TestApp::spawn_with(&[("delivery.timeout", "300ms")]).await;
    let receiver = Receiver::start().await;
    receiver.script([Answer::status(200).delay(Duration::from_secs(5))]);
    let m = app.merchant("m1").await;
    app.endpoint(&m.key, &receiver, json!({})).await;
    let event_id = one_sms(&app, &m).await;
    let event = app.settled_event(&m.key, &event_id).await;
    let d = only_delivery(&event);
    assert_eq!(d["status"], "succeeded");
    let first = &d["attempts"][0];
    assert_eq!(first["error_kind"], "timeout");
    assert!(first["status_code"].is_null());
    let took = first["duration_ms"].as_i64().unwrap();
    assert!(
        (250..3000).contains(&took),
        "the timed-out attempt took {took} ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_not_followed() {
    let app = TestApp::spawn().await;
    let elsewhere = Receiver::start().await;
    let receiver = Receiver::start().await;
    receiver.always(Answer::status(307).header("location", &elsewhere.url));
    let m = app.merchant("m1").await;
    app.endpoint(&m.key, &receiver, json!({})).await;
    let event_id = one_sms(&app, &m).await;
    let event = app.settled_event(&m.key, &event_id).await;
    let d = only_delivery(&event);
    assert_eq!(d["status"], "failed");
    assert_eq!(d["attempts"][0]["status_code"], 307);
    assert_eq!(d["attempts"][0]["error_kind"], "redirect");
    assert!(elsewhere.received().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_first_4_kib_of_an_answer_is_kept() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start().await;
    receiver.script([Answer::status(500).body(&"x".repeat(100_000))]);
    let m = app.merchant("m1").await;
    app.endpoint(&m.key, &receiver, json!({})).await;
    let event_id = one_sms(&app, &m).await;
    let event = app.settled_event(&m.key, &event_id).await;
    let kept = only_delivery(&event)["attempts"][0]["response_body"]
        .as_str()
        .unwrap()
        .len();
    assert_eq!(kept, 4096);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_receiver_is_a_connect_error() {
    let app = TestApp::spawn().await;
    let m = app.merchant("m1").await;
    // A port that was just free: nothing listens there.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    app.ok_post(
        "/v1/endpoints",
        &m.key,
        json!({"url": format!("http://{closed}/hook")}),
        201,
    )
    .await;
    let event_id = one_sms(&app, &m).await;
    let event = app.settled_event(&m.key, &event_id).await;
    let d = only_delivery(&event);
    assert_eq!(d["status"], "failed");
    assert_eq!(d["attempt_count"], 4);
    assert_eq!(d["attempts"][0]["error_kind"], "connect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_event_to_several_endpoints_each_with_its_own_fate() {
    let app = TestApp::spawn().await;
    let ok = Receiver::start().await;
    let broken = Receiver::start().await;
    broken.always(Answer::status(500));
    let m = app.merchant("m1").await;
    app.endpoint(&m.key, &ok, json!({})).await;
    app.endpoint(&m.key, &broken, json!({})).await;
    let event_id = one_sms(&app, &m).await;
    let event = app.settled_event(&m.key, &event_id).await;
    let mut outcomes: Vec<&str> = event["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["status"].as_str().unwrap())
        .collect();
    outcomes.sort();
    assert_eq!(outcomes, ["failed", "succeeded"]);
    assert_eq!(ok.received().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_delivers_again_with_the_same_id() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start().await;
    let m = app.merchant("m1").await;
    let ep = app.endpoint(&m.key, &receiver, json!({})).await;
    let event_id = one_sms(&app, &m).await;
    receiver.wait_for(1).await;
    let v = app
        .ok_post(
            &format!("/v1/events/{event_id}/replay"),
            &m.key,
            json!({}),
            202,
        )
        .await;
    assert_eq!(v["deliveries"], 1);
    let v = app
        .ok_post(
            &format!("/v1/events/{event_id}/replay"),
            &m.key,
            json!({"endpoint_id": ep}),
            202,
        )
        .await;
    assert_eq!(v["deliveries"], 1);
    let got = receiver.wait_for(3).await;
    assert!(got.iter().all(|r| r.header("webhook-id") == event_id));
    assert_eq!(got[0].body, got[2].body);
    let event = app.settled_event(&m.key, &event_id).await;
    assert_eq!(event["deliveries"].as_array().unwrap().len(), 3);
}
