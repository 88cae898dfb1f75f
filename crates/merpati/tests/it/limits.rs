//! What an account may take of a shared hub: its devices' and its own events a second
//! (429 with `Retry-After`, nothing stored), its caps on devices, endpoints and alert
//! rules (409 `limit_reached`), all set per account by the admin; and a flooding account
//! beside a quiet one.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::*;

fn batch(from: i64, n: i64) -> Value {
    let items: Vec<Value> = (from..from + n)
        .map(|rid| json!({"type": "sms", "rid": rid, "phone": "+62811", "message": "m"}))
        .collect();
    json!({ "items": items })
}

async fn post_batch(app: &TestApp, token: &str, from: i64, n: i64) -> reqwest::Response {
    app.client
        .post(format!("{}/v1/device/messages", app.url))
        .bearer_auth(token)
        .json(&batch(from, n))
        .send()
        .await
        .unwrap()
}

async fn refused_with(answer: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(answer.status(), status);
    let retry_after = answer.headers().get("retry-after").cloned();
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["error"]["code"], code, "{body}");
    if status == 429 {
        assert_eq!(retry_after.expect("Retry-After"), "1");
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_and_accounts_are_held_to_their_rates() {
    let app = TestApp::spawn_manual(&[
        ("limits.device_events_per_second", "5"),
        ("limits.events_per_second", "8"),
    ])
    .await;
    let m = app.merchant("acct").await;
    let second = app.device(&m.key, "dev2", "ch").await;
    let other = app.merchant("other").await;

    assert_eq!(post_batch(&app, &m.device_token, 1, 5).await.status(), 202);
    let body = refused_with(
        post_batch(&app, &m.device_token, 6, 1).await,
        429,
        "rate_limited",
    )
    .await;
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("device"));
    // The account has 3 left for its other device, then none.
    assert_eq!(post_batch(&app, &second, 100, 3).await.status(), 202);
    let body = refused_with(post_batch(&app, &second, 103, 1).await, 429, "rate_limited").await;
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("account"));
    // More at once than a device may send in a second is never taken.
    refused_with(
        post_batch(&app, &m.device_token, 200, 6).await,
        413,
        "payload_too_large",
    )
    .await;
    // Another account is not touched.
    assert_eq!(
        post_batch(&app, &other.device_token, 1, 5).await.status(),
        202
    );
    // The device link is held to the same rate.
    let mut link = Link::open(&app, &other.device_token).await;
    link.send_json(json!({"type": "messages", "ref": "x", "items": [
        {"type": "sms", "rid": 50, "phone": "+62811", "message": "m"}]}))
        .await;
    let frame = link.next_json().await;
    assert_eq!(
        (frame["type"].as_str(), frame["status"].as_u64()),
        (Some("error"), Some(429)),
        "{frame}"
    );

    // Nothing refused was stored.
    assert_eq!(app.count_of(&m.key, "sms").await, 8);
    // A second later both buckets are full again.
    app.advance(1_000).await;
    assert_eq!(post_batch(&app, &m.device_token, 6, 5).await.status(), 202);
    assert_eq!(app.count_of(&m.key, "sms").await, 13);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_sets_an_account_s_own_limits_and_gives_them_back() {
    let app = TestApp::spawn_manual(&[
        ("limits.device_events_per_second", "2"),
        ("limits.max_devices", "1"),
        ("limits.max_endpoints", "1"),
        ("limits.max_alert_rules", "1"),
    ])
    .await;
    let m = app.merchant("acct").await;
    let receiver = Receiver::start().await;

    // The caps: one device (the merchant's), one endpoint, one rule.
    let (status, body) = app
        .post(
            "/v1/devices",
            &m.key,
            json!({"id": "dev2", "name": "d", "channel_id": "ch"}),
        )
        .await;
    assert_eq!(
        (status.as_u16(), body["error"]["code"].as_str()),
        (409, Some("limit_reached")),
        "{body}"
    );
    app.endpoint(&m.key, &receiver, json!({})).await;
    let (status, body) = app
        .post("/v1/endpoints", &m.key, json!({"url": receiver.url}))
        .await;
    assert_eq!(
        (status.as_u16(), body["error"]["code"].as_str()),
        (409, Some("limit_reached")),
        "{body}"
    );
    app.ok_post("/v1/alert-rules", &m.key, json!({"match": {}}), 201)
        .await;
    let (status, body) = app
        .post("/v1/alert-rules", &m.key, json!({"match": {}}))
        .await;
    assert_eq!(
        (status.as_u16(), body["error"]["code"].as_str()),
        (409, Some("limit_reached")),
        "{body}"
    );

    // The admin raises them for this account alone.
    let raised = json!({"limits": {"max_devices": 2, "max_endpoints": 2,
        "max_alert_rules": 2, "device_events_per_second": 10}});
    let (status, account) = app.patch("/v1/accounts/acct", ADMIN, raised).await;
    assert_eq!(status, 200, "{account}");
    assert_eq!(account["limits"]["max_devices"], 2);
    app.device(&m.key, "dev2", "ch").await;
    app.ok_post("/v1/endpoints", &m.key, json!({"url": receiver.url}), 201)
        .await;
    app.ok_post("/v1/alert-rules", &m.key, json!({"match": {}}), 201)
        .await;
    assert_eq!(post_batch(&app, &m.device_token, 1, 10).await.status(), 202);

    // `null` gives a limit back to the default; the others stay.
    app.advance(1_000).await;
    let (status, account) = app
        .patch(
            "/v1/accounts/acct",
            ADMIN,
            json!({"limits": {"device_events_per_second": null}}),
        )
        .await;
    assert_eq!(status, 200);
    assert!(
        account["limits"].get("device_events_per_second").is_none(),
        "{account}"
    );
    assert_eq!(account["limits"]["max_devices"], 2);
    refused_with(
        post_batch(&app, &m.device_token, 20, 3).await,
        413,
        "payload_too_large",
    )
    .await;

    // Bad limits change nothing.
    let (_, before) = app.get("/v1/accounts/acct", ADMIN).await;
    for bad in [
        json!({"limits": "many"}),
        json!({"limits": {"max_devices": 0}}),
        json!({"limits": {"max_devices": -1}}),
        json!({"limits": {"max_devices": 1.5}}),
        json!({"limits": {"max_devices": "9"}}),
        json!({"limits": {"max_devices": 5_000_000_000u64}}),
        json!({"limits": {"max_widgets": 9}}),
    ] {
        let (status, body) = app.patch("/v1/accounts/acct", ADMIN, bad.clone()).await;
        assert_eq!(status, 422, "{bad}: {body}");
    }
    let (status, _) = app
        .post(
            "/v1/accounts",
            ADMIN,
            json!({"id": "x", "name": "X", "limits": {"max_devices": 0}}),
        )
        .await;
    assert_eq!(status, 422);
    let (_, after) = app.get("/v1/accounts/acct", ADMIN).await;
    assert_eq!(before, after);
    let (status, _) = app.get("/v1/accounts/x", ADMIN).await;
    assert_eq!(status, 404);
}

/// One account floods (64 devices posting as fast as they can, well past its rate) while
/// another posts one item every 20 ms. The quiet one is never refused and its answers stay
/// quick; the flood is refused with 429. The quiet account's p99 is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_account_beside_a_quiet_one() {
    let app = TestApp::spawn_with(&[("limits.events_per_second", "500")]).await;
    let flood = app.merchant("flood").await;
    let quiet = app.merchant("quiet").await;
    let mut flooders = Vec::new();
    for i in 0..16 {
        flooders.push(app.device(&flood.key, &format!("f{i}"), "ch").await);
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, token) in flooders.into_iter().enumerate() {
        let client = client();
        let url = format!("{}/v1/device/messages", app.url);
        let stop = stop.clone();
        tasks.spawn(async move {
            let (mut taken, mut refused) = (0u64, 0u64);
            let mut rid = (i as i64) * 1_000_000;
            while !stop.is_cancelled() {
                rid += 10;
                let answer = client
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&batch(rid, 10))
                    .send()
                    .await
                    .unwrap();
                match answer.status().as_u16() {
                    202 => taken += 10,
                    429 => refused += 10,
                    other => panic!("the flood got {other}"),
                }
            }
            (taken, refused)
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut latencies = Vec::new();
    let started = Instant::now();
    let mut rid = 0;
    while started.elapsed() < Duration::from_secs(5) {
        rid += 1;
        let sent = Instant::now();
        let answer = post_batch(&app, &quiet.device_token, rid, 1).await;
        assert_eq!(answer.status(), 202, "the quiet account was refused");
        latencies.push(sent.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    let (mut taken, mut refused) = (0, 0);
    while let Some(r) = tasks.join_next().await {
        let (t, r) = r.unwrap();
        taken += t;
        refused += r;
    }
    latencies.sort();
    let p = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    println!(
        "flood: {taken} events taken, {refused} refused (429); quiet: {} requests, p50 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        p(0.5),
        p(0.99),
        latencies.last().unwrap()
    );
    assert!(refused > 0, "the flood was never refused");
    assert_eq!(
        app.count_of(&quiet.key, "sms").await.min(500),
        latencies.len().min(500)
    );
}
