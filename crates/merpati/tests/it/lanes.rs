//! Per-endpoint lanes against real receivers: a slow endpoint never holds up another,
//! concurrency and rate limits are enforced, the circuit breaker pauses an endpoint that
//! keeps failing without burning the retries queued behind it, and `ordering: "device"`
//! delivers each device's events in order, blocking only that device.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

/// Sends `rids` from the device in one request; returns the event ids.
async fn send_batch(app: &TestApp, device_token: &str, rids: impl Iterator<Item = i64>) {
    let items: Vec<Value> = rids
        .map(|rid| json!({"type": "sms", "rid": rid, "phone": "+639760713666", "message": "hi"}))
        .collect();
    app.ok_post(
        "/v1/device/messages",
        device_token,
        json!({ "items": items }),
        202,
    )
    .await;
}

fn rid(r: &Received) -> i64 {
    r.json()["data"]["rid"].as_i64().expect("an sms")
}

fn rids(got: &[Received]) -> Vec<i64> {
    got.iter().map(rid).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_endpoint_takes_only_its_own_concurrency_and_never_holds_up_another() {
    let app = TestApp::spawn_with(&[("delivery.timeout", "60s")]).await;
    let stalled = Receiver::start().await;
    let healthy = Receiver::start().await;
    stalled.pause();
    let m = app.merchant("m1").await;
    app.endpoint(&m.key, &stalled, json!({"max_concurrency": 3}))
        .await;
    app.endpoint(&m.key, &healthy, json!({})).await;

    send_batch(&app, &m.device_token, 1..=200).await;
    // Everything reaches the healthy endpoint while the stalled one holds its first three.
    let got = healthy.wait_for(200).await;
    assert_eq!(got.len(), 200);
    stalled.wait_for(3).await;
    assert_eq!(stalled.received().len(), 3, "only its own concurrency");
    assert_eq!(stalled.most_at_once(), 3);

    // Once it answers, it gets the rest, never more than three at a time.
    stalled.resume();
    let got = stalled.wait_for(200).await;
    let mut seen = rids(&got);
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), 200);
    assert_eq!(stalled.most_at_once(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_spaces_requests_to_an_endpoint() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start().await;
    let m = app.merchant("m1").await;
    app.endpoint(&m.key, &receiver, json!({"rate_limit": 10}))
        .await;
    send_batch(&app, &m.device_token, 1..=16).await;
    let got = receiver.wait_for(16).await;
    // 10 a second with a burst of one: 16 requests take at least 1.5 s. Load can only
    // make them slower.
    let span = got[15].at - got[0].at;
    assert!(
        span >= Duration::from_millis(1450),
        "16 requests in {span:?}"
    );
    for (i, r) in got.iter().enumerate() {
        let within_a_second = got[i..]
            .iter()
            .take_while(|later| later.at - r.at < Duration::from_secs(1))
            .count();
        assert!(within_a_second <= 11, "{within_a_second} in one second");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_pauses_a_failing_endpoint_without_burning_queued_retries() {
    let app = TestApp::spawn_with(&[
        ("delivery.breaker_failures", "3"),
        ("delivery.breaker_cooldown", "300ms"),
    ])
    .await;
    let (receiver, m, ep) = failing_one_at_a_time(&app).await;
    let (_, shown) = app.get(&format!("/v1/endpoints/{ep}"), &m.key).await;
    assert_eq!(shown["paused_until"], Value::Null);
    send_batch(&app, &m.device_token, 1..=20).await;

    // Down for a second and a half. Without the breaker, one request at a time with
    // retries 100 ms apart would spend every attempt of every delivery in that time.
    receiver.wait_for(3).await;
    // The pause shows on the endpoint while it lasts (the first is 300 ms, then 600 ms…).
    let deadline = std::time::Instant::now() + Duration::from_millis(1400);
    let mut seen_paused = false;
    while std::time::Instant::now() < deadline {
        let (_, shown) = app.get(&format!("/v1/endpoints/{ep}"), &m.key).await;
        if shown["paused_until"].is_string() {
            seen_paused = true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(seen_paused, "the endpoint never showed its pause");
    tokio::time::sleep(Duration::from_millis(100)).await;
    receiver.always(Answer::status(200));

    let settled = settle(&app, &m.key, 20).await;
    // Three failures opened it, then one probe per pause (300 ms, 600 ms, 1.2 s, …).
    let failed = receiver.received().len() - 20;
    assert!((3..=7).contains(&failed), "{failed} failed requests");
    let attempts: i64 = settled.iter().map(|(_, n)| n).sum();
    assert_eq!(attempts, 20 + failed as i64);
    let (_, shown) = app.get(&format!("/v1/endpoints/{ep}"), &m.key).await;
    assert_eq!(shown["paused_until"], Value::Null, "closed again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_whose_probe_failed_for_good_still_probes_and_then_delivers_what_waits() {
    // One attempt a delivery: each failed probe fails its delivery for good, so no retry
    // comes back to probe the next pause; what waits behind the breaker is parked until
    // it closes (minutes), and the lane must ask for one back to probe with.
    let app = TestApp::spawn_with(&[
        ("delivery.retry_schedule", ","),
        ("delivery.breaker_failures", "3"),
        ("delivery.breaker_cooldown", "1s"),
        ("delivery.breaker_max_cooldown", "2s"),
    ])
    .await;
    let (receiver, m, ep) = failing_one_at_a_time(&app).await;
    // Three failures open the breaker; what comes while it is open is all parked behind
    // it: one delivery to be the probe when the pause ends, the rest until it closes.
    send_batch(&app, &m.device_token, 1..=3).await;
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let (_, shown) = app.get(&format!("/v1/endpoints/{ep}"), &m.key).await;
        if shown["paused_until"].is_string() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never paused");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    send_batch(&app, &m.device_token, 4..=20).await;
    // The probe parked for the first pause fails for good; the fifth request is the probe
    // of the second pause, taken back by the lane (and it may get the 200).
    receiver.wait_for(5).await;
    receiver.always(Answer::status(200));

    let found = deliveries_once(&app, &m.key, "all final", |found| {
        found.iter().all(|(s, _)| s == "succeeded" || s == "failed")
    })
    .await;
    let failed = found.iter().filter(|(s, _)| s == "failed").count();
    assert!((4..=5).contains(&failed), "{failed} failed: {found:?}");
    assert!(
        found.iter().all(|(_, attempts)| *attempts == 1),
        "{found:?}"
    );
    // Every request the receiver got was an attempt; none was sent twice.
    assert_eq!(receiver.received().len(), 20);
}

/// Each event's first delivery: its status and attempt count.
async fn first_deliveries(app: &TestApp, key: &str) -> Vec<(String, i64)> {
    let (_, page) = app.get("/v1/events?limit=100", key).await;
    let mut found = Vec::new();
    for e in page["data"].as_array().unwrap() {
        let (_, e) = app
            .get(&format!("/v1/events/{}", e["id"].as_str().unwrap()), key)
            .await;
        let d = &e["deliveries"][0];
        found.push((
            d["status"].as_str().unwrap().to_string(),
            d["attempt_count"].as_i64().unwrap(),
        ));
    }
    found
}

/// Waits until `succeeded` of the events' first deliveries succeeded; returns them all.
async fn settle(app: &TestApp, key: &str, succeeded: usize) -> Vec<(String, i64)> {
    deliveries_once(app, key, &format!("{succeeded} delivered"), |found| {
        found.iter().filter(|(s, _)| s == "succeeded").count() == succeeded
    })
    .await
}

/// Waits until the events' first deliveries are `what` (`done` says); returns them.
async fn deliveries_once(
    app: &TestApp,
    key: &str,
    what: &str,
    done: impl Fn(&[(String, i64)]) -> bool,
) -> Vec<(String, i64)> {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let found = first_deliveries(app, key).await;
        if done(&found) {
            return found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not {what}: {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A receiver answering 503, and an endpoint of a new merchant on it that takes one
/// request at a time.
async fn failing_one_at_a_time(app: &TestApp) -> (Receiver, Merchant, String) {
    let receiver = Receiver::start().await;
    receiver.always(Answer::status(503));
    let m = app.merchant("m1").await;
    let ep = app
        .endpoint(&m.key, &receiver, json!({"max_concurrency": 1}))
        .await;
    (receiver, m, ep)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_to_requests_sent_before_the_breaker_opened_do_not_close_it() {
    let app = TestApp::spawn_with(&[
        ("delivery.breaker_failures", "3"),
        ("delivery.breaker_cooldown", "60s"),
    ])
    .await;
    // A receiver going down for a restart: it still answers the requests it has, slowly,
    // and refuses every new one.
    let receiver = Receiver::start().await;
    let slow = Duration::from_secs(1);
    receiver.script(std::iter::repeat_n(Answer::status(200).delay(slow), 4));
    receiver.always(Answer::status(503));
    let m = app.merchant("m1").await;
    let ep = app
        .endpoint(&m.key, &receiver, json!({"max_concurrency": 8}))
        .await;
    send_batch(&app, &m.device_token, 1..=40).await;

    // The quick refusals open the breaker while the four slow requests are under way;
    // then those four succeed.
    let settled = settle(&app, &m.key, 4).await;
    // Time for anything those successes would have let out.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let got = receiver.received();
    let first = got.iter().map(|r| r.at).min().unwrap();
    let late: Vec<_> = got.iter().filter(|r| r.at >= first + slow).collect();
    assert!(
        late.is_empty(),
        "{} requests went out after the old ones were answered, of {}",
        late.len(),
        got.len()
    );
    // Only what started before the breaker opened was sent: 4 slow, and the refusals
    // that opened it (at most 8 under way at once, 3 in a row to open it).
    assert!((7..=10).contains(&got.len()), "{} requests", got.len());
    let (_, shown) = app.get(&format!("/v1/endpoints/{ep}"), &m.key).await;
    assert!(shown["paused_until"].is_string(), "still paused: {shown}");
    // The deliveries queued behind kept every attempt.
    let untouched = settled.iter().filter(|(_, n)| *n == 0).count();
    assert_eq!(untouched, 40 - got.len(), "{settled:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_endpoints_deliver_each_devices_events_in_order_blocking_only_that_device() {
    let app = TestApp::spawn_with(&[("delivery.timeout", "60s")]).await;
    let receiver = Receiver::start().await;
    let m = app.merchant("m1").await;
    let second = app.device(&m.key, "dev2", "ch").await;
    app.endpoint(&m.key, &receiver, json!({"ordering": "device"}))
        .await;

    // The first device's first event hangs; the second device's events all go by.
    receiver.script([Answer::status(200).delay(Duration::from_secs(30))]);
    send_batch(&app, &m.device_token, 100..110).await;
    receiver.wait_for(1).await;
    send_batch(&app, &second, 200..210).await;
    let got = receiver.wait_for(11).await;
    let first_device: Vec<i64> = rids(&got).into_iter().filter(|r| *r < 200).collect();
    assert_eq!(
        first_device,
        [100],
        "nothing passes the first device's head"
    );
    let second_device: Vec<i64> = rids(&got).into_iter().filter(|r| *r >= 200).collect();
    assert_eq!(second_device, (200..210).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordered_queue_waits_for_its_head_through_every_retry() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start().await;
    receiver.script([Answer::status(500), Answer::status(502)]);
    let m = app.merchant("m1").await;
    app.endpoint(&m.key, &receiver, json!({"ordering": "device"}))
        .await;
    send_batch(&app, &m.device_token, 1..=6).await;
    let got = receiver.wait_for(8).await;
    assert_eq!(rids(&got), [1, 1, 1, 2, 3, 4, 5, 6]);
    // One at a time, however many the endpoint may take.
    assert_eq!(receiver.most_at_once(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_that_fails_for_good_lets_the_queue_go_on() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start().await;
    // A client error is final: the next event goes after it.
    receiver.script([Answer::status(400)]);
    let m = app.merchant("m1").await;
    app.endpoint(&m.key, &receiver, json!({"ordering": "device"}))
        .await;
    send_batch(&app, &m.device_token, 1..=3).await;
    let got = receiver.wait_for(3).await;
    assert_eq!(rids(&got), [1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_deliveries_held_while_disabled_resume_in_order() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start().await;
    let m = app.merchant("m1").await;
    let ep = app
        .endpoint(
            &m.key,
            &receiver,
            json!({"ordering": "device", "disabled": true}),
        )
        .await;
    send_batch(&app, &m.device_token, 1..=5).await;
    app.patch(
        &format!("/v1/endpoints/{ep}"),
        &m.key,
        json!({"disabled": false}),
    )
    .await;
    let got = receiver.wait_for(5).await;
    assert_eq!(rids(&got), [1, 2, 3, 4, 5]);
    assert_eq!(receiver.most_at_once(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_ordering_off_releases_the_waiting_deliveries() {
    let app = TestApp::spawn_with(&[("delivery.timeout", "60s")]).await;
    let receiver = Receiver::start().await;
    let m = app.merchant("m1").await;
    let ep = app
        .endpoint(&m.key, &receiver, json!({"ordering": "device"}))
        .await;
    receiver.pause();
    send_batch(&app, &m.device_token, 1..=4).await;
    receiver.wait_for(1).await;
    let (status, body) = app
        .patch(
            &format!("/v1/endpoints/{ep}"),
            &m.key,
            json!({"ordering": null}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ordering"], Value::Null);
    // The three behind the hanging head go while it still hangs.
    let got = receiver.wait_for(4).await;
    let mut seen = rids(&got);
    seen.sort_unstable();
    assert_eq!(seen, [1, 2, 3, 4]);
    receiver.resume();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_ordering_are_validated_and_shown() {
    let app = TestApp::spawn().await;
    let m = app.merchant("m1").await;
    let url = "http://127.0.0.1:9/hook";
    for (bad, code) in [
        (json!({"max_concurrency": 0}), 422),
        (json!({"max_concurrency": 100000}), 422),
        (json!({"max_concurrency": -1}), 422),
        (json!({"max_concurrency": "2"}), 422),
        (json!({"rate_limit": 0}), 422),
        (json!({"rate_limit": 1.5}), 422),
        (json!({"rate_limit": 1_000_000}), 422),
        (json!({"ordering": "global"}), 422),
        (json!({"ordering": 1}), 422),
    ] {
        let mut body = json!({ "url": url });
        body.as_object_mut()
            .unwrap()
            .extend(bad.as_object().unwrap().clone());
        let (status, out) = app.post("/v1/endpoints", &m.key, body).await;
        assert_eq!(status, code, "{bad}: {out}");
        assert!(out["error"]["message"].is_string(), "{out}");
    }
    let (_, list) = app.get("/v1/endpoints", &m.key).await;
    assert_eq!(list["data"], json!([]), "nothing half-written");

    let created = app
        .ok_post(
            "/v1/endpoints",
            &m.key,
            json!({"url": url, "ordering": "device", "max_concurrency": 4, "rate_limit": 50}),
            201,
        )
        .await;
    assert_eq!(created["ordering"], "device");
    assert_eq!(created["max_concurrency"], 4);
    assert_eq!(created["rate_limit"], 50);
    let id = created["id"].as_str().unwrap();
    let (status, _) = app
        .patch(
            &format!("/v1/endpoints/{id}"),
            &m.key,
            json!({"rate_limit": 0}),
        )
        .await;
    assert_eq!(status, 422);
    let (status, patched) = app
        .patch(
            &format!("/v1/endpoints/{id}"),
            &m.key,
            json!({"rate_limit": null, "max_concurrency": 8}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(patched["rate_limit"], Value::Null);
    assert_eq!(patched["max_concurrency"], 8);
    assert_eq!(patched["ordering"], "device");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_delivery_of_an_ordered_endpoint_waits_its_turn_in_the_device_queue() {
    let app = TestApp::spawn_with(&[("delivery.timeout", "60s")]).await;
    let receiver = Receiver::start().await;
    // The first event is refused for good; the second hangs until the test lets it go.
    receiver.script([Answer::status(400)]);
    let m = app.merchant("m1").await;
    app.endpoint(&m.key, &receiver, json!({"ordering": "device"}))
        .await;
    send_batch(&app, &m.device_token, 1..=1).await;
    receiver.wait_for(1).await;
    let (_, page) = app.get("/v1/events?limit=1", &m.key).await;
    let first = page["data"][0]["id"].as_str().unwrap().to_string();
    let failed = app.settled_event(&m.key, &first).await["deliveries"][0]["id"]
        .as_i64()
        .unwrap();

    receiver.pause();
    send_batch(&app, &m.device_token, 2..=2).await;
    receiver.wait_for(2).await;
    // Resent while the device's queue is busy: it waits for the event under way.
    app.ok_post(
        &format!("/v1/deliveries/{failed}/resend"),
        &m.key,
        json!({}),
        202,
    )
    .await;
    send_batch(&app, &m.device_token, 3..=3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received().len(), 2, "one at a time");
    receiver.resume();
    let got = receiver.wait_for(4).await;
    assert_eq!(
        rids(&got),
        [1, 2, 1, 3],
        "the resend in event order, before 3"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_deliveries_than_the_worker_holds_all_arrive_once() {
    // The worker holds at most 2 under way + 256 queued: the rest of each wave is stored due
    // rather than handed over, and claimed as room frees up.
    let app = TestApp::spawn_with(&[("delivery.max_in_flight", "2")]).await;
    let receiver = Receiver::start().await;
    let m = app.merchant("m1").await;
    app.endpoint(&m.key, &receiver, json!({})).await;

    receiver.pause();
    for wave in 0..6 {
        send_batch(&app, &m.device_token, wave * 100 + 1..=wave * 100 + 100).await;
    }
    receiver.resume();
    let got = receiver.wait_for(600).await;
    let mut seen = rids(&got);
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), 600);
    assert!(receiver.most_at_once() <= 2);

    // Every bit of room came back: a second wave goes through as the first did.
    for wave in 6..12 {
        send_batch(&app, &m.device_token, wave * 100 + 1..=wave * 100 + 100).await;
    }
    let got = receiver.wait_for(1200).await;
    let mut seen = rids(&got);
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), 1200);
    assert_eq!(got.len(), 1200, "each delivered once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_that_arrive_while_a_lane_parks_are_all_delivered_once_it_answers() {
    // A lane that hangs parks what it cannot start. Waves keep coming for a while after the
    // stall began, so that many are parked, at different times, when the receiver answers.
    let app = TestApp::spawn_with(&[("delivery.timeout", "60s")]).await;
    let stalled = Receiver::start().await;
    let healthy = Receiver::start().await;
    stalled.pause();
    let m = app.merchant("m1").await;
    app.endpoint(&m.key, &stalled, json!({"max_concurrency": 2}))
        .await;
    app.endpoint(&m.key, &healthy, json!({})).await;

    let began = std::time::Instant::now();
    let mut sent = 0;
    while sent < 2000 && began.elapsed() < Duration::from_millis(1500) {
        send_batch(&app, &m.device_token, sent + 1..=sent + 10).await;
        sent += 10;
        // The healthy endpoint keeps up with every wave.
        healthy.wait_for(sent as usize).await;
    }
    assert_eq!(stalled.received().len(), 2, "only its own concurrency");

    stalled.resume();
    let got = stalled.wait_for(sent as usize).await;
    let mut seen = rids(&got);
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), sent as usize);
    assert_eq!(got.len(), sent as usize, "each delivered once");
    assert_eq!(stalled.most_at_once(), 2);
}
