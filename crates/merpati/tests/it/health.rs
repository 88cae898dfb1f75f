//! Endpoint health: disabled on 410 or after failing without pause, the account told with
//! `endpoint.disabled`, its events held meanwhile and delivered when re-enabled; resending
//! one delivery.

use std::time::Duration;

use merpati_webhooks::Event;
use serde_json::{json, Value};

use crate::helpers::*;

async fn endpoint(app: &TestApp, key: &str, id: &str) -> Value {
    let (status, v) = app.get(&format!("/v1/endpoints/{id}"), key).await;
    assert_eq!(status, 200, "{v}");
    v
}

async fn wait_disabled(app: &TestApp, key: &str, id: &str) -> Value {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let e = endpoint(app, key, id).await;
        if e["disabled"] == true {
            return e;
        }
        assert!(std::time::Instant::now() < deadline, "never disabled: {e}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_disables_the_endpoint_holds_its_events_and_re_enabling_delivers_them() {
    let app = TestApp::spawn().await;
    let (gone, watcher) = (Receiver::start().await, Receiver::start().await);
    gone.always(Answer::status(410));
    let m = app.merchant("m1").await;
    let ep = app
        .endpoint(&m.key, &gone, json!({"events": ["sms"]}))
        .await;
    app.endpoint(&m.key, &watcher, json!({"events": ["endpoint.*"]}))
        .await;

    app.sms(&m.device_token, 1).await;
    let e = wait_disabled(&app, &m.key, &ep).await;
    assert_eq!(e["disabled_reason"], "gone");
    assert!(e["disabled_at"].is_string());
    let told = watcher.wait_for(1).await;
    let Event::Endpoint(notice) = told[0].event() else {
        panic!("not an endpoint event: {}", told[0].body_str())
    };
    assert_eq!(
        (notice.endpoint.id.as_str(), notice.reason.as_str()),
        (ep.as_str(), "gone")
    );
    assert_eq!(notice.endpoint.url, gone.url);

    // While disabled, its events are kept, not sent.
    let mut held = Vec::new();
    for rid in 2..4 {
        let v = app.sms(&m.device_token, rid).await;
        held.push(v["items"][0]["event_id"].as_str().unwrap().to_string());
    }
    for id in &held {
        let (_, ev) = app.get(&format!("/v1/events/{id}"), &m.key).await;
        assert_eq!(ev["deliveries"][0]["status"], "held", "{ev}");
    }
    assert_eq!(gone.received().len(), 1);

    gone.always(Answer::status(200));
    let (status, e) = app
        .patch(
            &format!("/v1/endpoints/{ep}"),
            &m.key,
            json!({"disabled": false}),
        )
        .await;
    assert_eq!(status, 200, "{e}");
    assert_eq!(e["disabled"], false);
    assert!(e["disabled_reason"].is_null() && e["failing_since"].is_null());
    let got = gone.wait_for(3).await;
    let mut delivered: Vec<String> = got[1..]
        .iter()
        .map(|r| r.header("webhook-id").to_string())
        .collect();
    delivered.sort();
    held.sort();
    assert_eq!(delivered, held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_without_pause_disables_after_the_configured_time() {
    let app = TestApp::spawn_with(&[
        ("delivery.disable_after", "1s"),
        (
            "delivery.retry_schedule",
            "250ms,250ms,250ms,250ms,250ms,250ms,250ms,250ms",
        ),
    ])
    .await;
    let (broken, watcher, flaky) = (
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
    );
    broken.always(Answer::status(500));
    flaky.script([Answer::status(500)]);
    let m = app.merchant("m1").await;
    let ep = app
        .endpoint(&m.key, &broken, json!({"events": ["sms"]}))
        .await;
    let flaky_ep = app
        .endpoint(&m.key, &flaky, json!({"events": ["sms"]}))
        .await;
    app.endpoint(&m.key, &watcher, json!({"events": ["endpoint.disabled"]}))
        .await;
    let v = app.sms(&m.device_token, 1).await;

    let e = wait_disabled(&app, &m.key, &ep).await;
    assert_eq!(e["disabled_reason"], "failing");
    let attempts = broken.received().len();
    assert!(attempts >= 4, "disabled after {attempts} attempts");
    let notice = watcher.wait_for(1).await[0].json();
    assert_eq!(notice["event"], "endpoint.disabled");
    assert_eq!(notice["reason"], "failing");
    assert!(notice["failing_since"].is_i64());
    // Its retry is kept, not dropped.
    let (_, ev) = app
        .get(
            &format!("/v1/events/{}", v["items"][0]["event_id"].as_str().unwrap()),
            &m.key,
        )
        .await;
    let mine = ev["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["endpoint_id"] == ep.as_str())
        .unwrap();
    assert_eq!(mine["status"], "held", "{mine}");
    // An endpoint that failed once and then succeeded is healthy again.
    flaky.wait_for(2).await;
    let deadline = std::time::Instant::now() + PATIENCE;
    while !endpoint(&app, &m.key, &flaky_ep).await["failing_since"].is_null() {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(endpoint(&app, &m.key, &flaky_ep).await["disabled"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_delivery_can_be_resent() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start().await;
    receiver.script([Answer::status(400)]);
    let m = app.merchant("m1").await;
    let other = app.merchant("m2").await;
    let ep = app.endpoint(&m.key, &receiver, json!({})).await;
    let v = app.sms(&m.device_token, 1).await;
    let event_id = v["items"][0]["event_id"].as_str().unwrap().to_string();
    let event = app.settled_event(&m.key, &event_id).await;
    let failed = event["deliveries"][0]["id"].as_i64().unwrap();
    assert_eq!(event["deliveries"][0]["status"], "failed");

    let path = format!("/v1/deliveries/{failed}/resend");
    assert_eq!(app.post(&path, &other.key, json!({})).await.0, 404);
    assert_eq!(
        app.post("/v1/deliveries/999999/resend", &m.key, json!({}))
            .await
            .0,
        404
    );
    assert_eq!(
        app.post("/v1/deliveries/abc/resend", &m.key, json!({}))
            .await
            .0,
        404
    );
    let resent = app.ok_post(&path, &m.key, json!({}), 202).await;
    assert_eq!(resent["resent_from"], failed);
    let got = receiver.wait_for(2).await;
    assert_eq!(got[1].header("webhook-id"), event_id);
    let event = app.settled_event(&m.key, &event_id).await;
    let statuses: Vec<&str> = event["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["failed", "succeeded"]);

    app.patch(
        &format!("/v1/endpoints/{ep}"),
        &m.key,
        json!({"disabled": true}),
    )
    .await;
    let (status, err) = app.post(&path, &m.key, json!({})).await;
    assert_eq!(status, 409, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_deliveries_since_a_time_are_recovered_by_a_job() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start().await;
    receiver.always(Answer::status(500));
    let m = app.merchant("m1").await;
    let other = app.merchant("m2").await;
    let ep = app.endpoint(&m.key, &receiver, json!({})).await;
    let mut ids = Vec::new();
    let mut since = String::new();
    for rid in 0..5 {
        if rid == 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            since = merpati::api::time::rfc3339(app.now_ms());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let v = app.sms(&m.device_token, rid).await;
        let id = v["items"][0]["event_id"].as_str().unwrap().to_string();
        assert_eq!(
            app.settled_event(&m.key, &id).await["deliveries"][0]["status"],
            "failed"
        );
        ids.push(id);
    }
    receiver.always(Answer::status(200));
    let before = receiver.received().len();

    let path = format!("/v1/endpoints/{ep}/recover");
    for bad in [
        json!({}),
        json!({"since": "yesterday"}),
        json!({"since": true}),
        json!({"since": 9_999_999_999i64}),
    ] {
        let (status, err) = app.post(&path, &m.key, bad.clone()).await;
        assert_eq!(status, 422, "{bad}: {err}");
    }
    assert_eq!(
        app.post(&path, &other.key, json!({"since": since})).await.0,
        404
    );

    let job = app
        .ok_post(&path, &m.key, json!({"since": since}), 202)
        .await;
    assert_eq!(job["total"], 4, "{job}");
    let job_path = format!("/v1/jobs/{}", job["id"].as_str().unwrap());
    assert_eq!(app.get(&job_path, &other.key).await.0, 404);
    let deadline = std::time::Instant::now() + PATIENCE;
    let done = loop {
        let (_, j) = app.get(&job_path, &m.key).await;
        if j["status"] == "done" {
            break j;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "job never finished: {j}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(done["done"], 4);
    assert!(done["finished_at"].is_string());
    let got = receiver.wait_for(before + 4).await;
    let mut recovered: Vec<String> = got[before..]
        .iter()
        .map(|r| r.header("webhook-id").to_string())
        .collect();
    recovered.sort();
    let mut expected = ids[1..].to_vec();
    expected.sort();
    assert_eq!(recovered, expected, "only what failed since the time");

    // Nothing left to recover: each has a later delivery now.
    for id in &ids[1..] {
        app.settled_event(&m.key, id).await;
    }
    let again = app
        .ok_post(&path, &m.key, json!({"since": since}), 202)
        .await;
    assert_eq!(again["total"], 0);

    app.patch(
        &format!("/v1/endpoints/{ep}"),
        &m.key,
        json!({"disabled": true}),
    )
    .await;
    assert_eq!(
        app.post(&path, &m.key, json!({"since": since})).await.0,
        409
    );
}
