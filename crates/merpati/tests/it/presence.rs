//! Presence on a scripted clock: leases, grace, blips, restarts, per-engine settings,
//! history and availability. Time moves only when a test says so.

use serde_json::{json, Value};

use crate::helpers::*;

/// A 60 s heartbeat lease and a 30 s grace.
const LEASE: &[(&str, &str)] = &[
    ("presence.heartbeat_timeout", "60s"),
    ("presence.grace", "30s"),
];

async fn heartbeat(app: &TestApp, token: &str) -> Value {
    let (status, v) = app.post("/v1/device/heartbeat", token, json!({})).await;
    assert_eq!(status, 200, "{v}");
    v
}

/// Device events a receiver got, as (event, reason, timestamp).
fn announcements(r: &Receiver) -> Vec<(String, Option<String>, i64)> {
    r.received()
        .iter()
        .map(|x| x.json())
        .filter(|v| v.get("event").is_some())
        .map(|v| {
            (
                v["event"].as_str().unwrap().to_string(),
                v["reason"].as_str().map(str::to_owned),
                v["timestamp"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// Waits until the receiver got `n` deliveries and each is recorded. A delivery whose
/// outcome is not recorded yet is still leased until the attempt's timeout, and a clock
/// advanced past that lets the worker claim it again: a second copy, allowed (deliveries
/// are at least once) but not what these tests count.
async fn seen(app: &TestApp, key: &str, r: &Receiver, n: usize) {
    for got in r.wait_for(n).await {
        app.settled_event(key, got.header("webhook-id")).await;
    }
}

async fn watched(app: &TestApp, engine: &str) -> (Merchant, Receiver) {
    let m = app.merchant_on("m1", engine).await;
    let r = Receiver::start().await;
    app.endpoint(&m.key, &r, json!({"events": ["device.*"]}))
        .await;
    (m, r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_device_is_announced_a_grace_after_its_lease_ran_out() {
    let app = TestApp::spawn_manual(LEASE).await;
    let (m, r) = watched(&app, "sms").await;
    let t0 = app.now_ms();
    let first = heartbeat(&app, &m.device_token).await;
    assert_eq!(first["status"], "connected");
    assert!(first["event_id"].is_string());
    seen(&app, &m.key, &r, 1).await;

    app.advance(59_000).await;
    assert!(heartbeat(&app, &m.device_token).await["event_id"].is_null());
    // The lease now runs to t0 + 119 s.
    app.advance(59_999).await;
    assert_eq!(
        app.wait_status(&m.key, "dev", "connected").await["status"],
        "connected"
    );
    app.advance(1).await;
    app.wait_status(&m.key, "dev", "pending").await;
    app.advance(29_999).await;
    app.wait_status(&m.key, "dev", "pending").await;
    assert_eq!(
        announcements(&r).len(),
        1,
        "nothing during the grace: {:?}",
        r.received()
            .iter()
            .map(|x| x.header("webhook-id").to_string())
            .collect::<Vec<_>>()
    );
    app.advance(1).await;
    app.wait_status(&m.key, "dev", "disconnected").await;
    seen(&app, &m.key, &r, 2).await;
    let a = announcements(&r);
    assert_eq!(a[1].0, "device.disconnected");
    assert_eq!(a[1].1.as_deref(), Some("heartbeat_timeout"));
    // Dated from when the lease ran out, not from when it was announced.
    assert_eq!(a[1].2, (t0 + 119_000) / 1000);

    app.advance(60_000).await;
    let back = heartbeat(&app, &m.device_token).await;
    assert!(back["event_id"].is_string());
    let got = r.wait_for(3).await;
    let connected = got[2].json();
    assert_eq!(connected["event"], "device.connected");
    assert_eq!(connected["offline_seconds"], 90);
    got[2].event();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_back_inside_the_grace_is_a_blip_and_announces_nothing() {
    let app = TestApp::spawn_manual(LEASE).await;
    let (m, r) = watched(&app, "wa").await;
    let link = Link::open(&app, &m.device_token).await;
    seen(&app, &m.key, &r, 1).await;
    link.close().await;
    app.wait_status(&m.key, "dev", "pending").await;
    app.advance(10_000).await;
    let _again = Link::open(&app, &m.device_token).await;
    app.wait_status(&m.key, "dev", "connected").await;
    app.advance(120_000).await;
    assert_eq!(announcements(&r).len(), 1);
    let (_, sessions) = app.get("/v1/devices/dev/sessions", &m.key).await;
    let blips = sessions["blips"].as_array().unwrap();
    assert_eq!(blips.len(), 1, "{sessions}");
    assert_eq!(blips[0]["reason"], "link_closed");
    assert_eq!(sessions["data"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_link_not_back_in_time_is_announced_with_its_reason() {
    let app = TestApp::spawn_manual(LEASE).await;
    let (m, r) = watched(&app, "wa").await;
    let link = Link::open(&app, &m.device_token).await;
    link.close().await;
    app.wait_status(&m.key, "dev", "pending").await;
    app.advance(30_000).await;
    app.wait_status(&m.key, "dev", "disconnected").await;
    seen(&app, &m.key, &r, 2).await;
    assert_eq!(announcements(&r)[1].1.as_deref(), Some("link_closed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_reports_logged_out_at_once_disconnected_after_the_grace() {
    let app = TestApp::spawn_manual(LEASE).await;
    let (m, r) = watched(&app, "wa").await;
    let report = |status: &'static str| {
        let (app, token) = (&app, m.device_token.clone());
        async move {
            app.ok_post("/v1/device/status", &token, json!({"status": status}), 202)
                .await
        }
    };
    assert_eq!(report("connected").await["status"], "connected");
    seen(&app, &m.key, &r, 1).await;
    // Engines report changes, not heartbeats: no lease runs out under them.
    app.advance(3_600_000).await;
    assert_eq!(report("disconnected").await["status"], "pending");
    app.advance(5_000).await;
    assert!(report("connected").await["event_id"].is_null(), "a blip");
    let out = report("logged_out").await;
    assert_eq!(out["status"], "disconnected");
    assert!(
        out["event_id"].is_string(),
        "logged_out is announced at once"
    );
    seen(&app, &m.key, &r, 2).await;
    assert_eq!(announcements(&r)[1].1.as_deref(), Some("logged_out"));
    // Until the engine says connected, heartbeats do not bring it back.
    assert_eq!(
        heartbeat(&app, &m.device_token).await["status"],
        "disconnected"
    );
    app.advance(1_000).await;
    report("connected").await;
    seen(&app, &m.key, &r, 3).await;
    let kinds: Vec<String> = announcements(&r).into_iter().map(|a| a.0).collect();
    assert_eq!(
        kinds,
        [
            "device.connected",
            "device.disconnected",
            "device.connected"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_settings_per_engine_and_per_channel() {
    let app = TestApp::spawn_manual(&[
        ("presence.heartbeat_timeout", "60s"),
        ("presence.grace", "30s"),
        ("presence.engines.wa.grace", "5s"),
    ])
    .await;
    let (m, r) = watched(&app, "wa").await;
    app.ok_post(
        "/v1/channels",
        &m.key,
        json!({"id": "slow", "name": "Slow", "engine": "sms", "business_id": "biz",
               "heartbeat_timeout": "10m", "presence_grace": "1m"}),
        201,
    )
    .await;
    let slow = app.device(&m.key, "slow_phone", "slow").await;
    heartbeat(&app, &m.device_token).await;
    heartbeat(&app, &slow).await;
    seen(&app, &m.key, &r, 2).await;
    app.advance(60_000).await;
    app.wait_status(&m.key, "dev", "pending").await;
    app.advance(5_000).await;
    app.wait_status(&m.key, "dev", "disconnected").await;
    assert_eq!(
        app.wait_status(&m.key, "slow_phone", "connected").await["status"],
        "connected"
    );
    app.advance(9 * 60_000).await;
    app.wait_status(&m.key, "slow_phone", "pending").await;
    app.advance(60_000).await;
    app.wait_status(&m.key, "slow_phone", "disconnected").await;
    let (_, ch) = app.get("/v1/channels/slow", &m.key).await;
    assert_eq!(
        (
            ch["heartbeat_timeout"].as_str(),
            ch["presence_grace"].as_str()
        ),
        (Some("10m"), Some("1m"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_brings_no_storm_and_still_catches_who_does_not_return() {
    let app = TestApp::spawn_manual(LEASE).await;
    let (m, r) = watched(&app, "sms").await;
    let quiet = app.device(&m.key, "quiet", "ch").await;
    let linked = app.device(&m.key, "linked", "ch").await;
    heartbeat(&app, &m.device_token).await;
    heartbeat(&app, &quiet).await;
    let link = Link::open(&app, &linked).await;
    seen(&app, &m.key, &r, 3).await;

    let app = app.restart().await;
    drop(link);
    app.advance(1_000).await;
    // Everyone had been up: nobody is announced down for the restart itself.
    for d in ["dev", "quiet", "linked"] {
        app.wait_status(&m.key, d, "connected").await;
    }
    let _link = Link::open(&app, &linked).await;
    app.advance(30_000).await;
    heartbeat(&app, &m.device_token).await;
    app.advance(28_000).await;
    assert_eq!(announcements(&r).len(), 3);
    app.wait_status(&m.key, "quiet", "connected").await;
    // "quiet" never came back: a lease and a grace after the restart, it is announced.
    app.advance(1_000).await;
    app.wait_status(&m.key, "quiet", "pending").await;
    app.advance(30_000).await;
    app.wait_status(&m.key, "quiet", "disconnected").await;
    seen(&app, &m.key, &r, 4).await;
    let a = announcements(&r);
    assert_eq!(a.len(), 4);
    assert_eq!(a[3].0, "device.disconnected");
    for d in ["dev", "linked"] {
        app.wait_status(&m.key, d, "connected").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_and_availability_on_a_scripted_timeline() {
    let app = TestApp::spawn_manual(LEASE).await;
    let (m, r) = watched(&app, "sms").await;
    let t0 = app.now_ms();
    heartbeat(&app, &m.device_token).await;
    // Silent from t0: lease lost at +60 s, announced at +90 s, back at +420 s.
    app.advance(90_000).await;
    app.wait_status(&m.key, "dev", "disconnected").await;
    app.advance(330_000).await;
    heartbeat(&app, &m.device_token).await;
    for _ in 0..4 {
        app.advance(45_000).await;
        heartbeat(&app, &m.device_token).await;
    }
    seen(&app, &m.key, &r, 3).await;

    let window = format!(
        "from={}&to={}",
        merpati::api::time::rfc3339(t0),
        merpati::api::time::rfc3339(t0 + 600_000)
    );
    for scope in ["devices/dev", "channels/ch", "businesses/biz"] {
        let (status, a) = app
            .get(&format!("/v1/{scope}/availability?{window}"), &m.key)
            .await;
        assert_eq!(status, 200, "{a}");
        // Up 60 s + 180 s, down 360 s.
        assert_eq!(a["up_seconds"], 240, "{scope}: {a}");
        assert_eq!(a["down_seconds"], 360, "{scope}: {a}");
        assert_eq!(a["availability_percent"], 40.0, "{scope}: {a}");
        assert_eq!(a["outages"], 1);
        let (_, d) = app
            .get(&format!("/v1/{scope}/downtime?{window}"), &m.key)
            .await;
        let log = d["data"].as_array().unwrap();
        assert_eq!(log.len(), 1, "{d}");
        assert_eq!(log[0]["duration_seconds"], 360);
        assert_eq!(log[0]["reason"], "heartbeat_timeout");
        assert_eq!(log[0]["device_id"], "dev");
        assert_eq!(log[0]["ongoing"], false);
    }
    let (_, s) = app
        .get(&format!("/v1/devices/dev/sessions?{window}"), &m.key)
        .await;
    assert_eq!(s["data"].as_array().unwrap().len(), 2);
    assert!(
        s["data"][1]["ended_at"].is_null(),
        "the current session is open"
    );
    // The API speaks RFC 3339 too, and refuses nonsense.
    let (status, _) = app
        .get(
            "/v1/devices/dev/availability?from=2026-01-01T00:00:00Z",
            &m.key,
        )
        .await;
    assert_eq!(status, 200);
    for bad in ["from=yesterday", "from=10&to=5", "colour=red"] {
        let (status, _) = app
            .get(&format!("/v1/devices/dev/availability?{bad}"), &m.key)
            .await;
        assert_eq!(status, 422, "{bad}");
    }
    for missing in ["devices/nope", "channels/nope", "businesses/nope"] {
        let (status, _) = app
            .get(&format!("/v1/{missing}/availability"), &m.key)
            .await;
        assert_eq!(status, 404, "{missing}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_are_listed_by_status_engine_business_and_channel() {
    let app = TestApp::spawn_manual(LEASE).await;
    let m = app.merchant_on("m1", "wa").await;
    app.ok_post(
        "/v1/businesses",
        &m.key,
        json!({"id": "b2", "name": "B2"}),
        201,
    )
    .await;
    app.ok_post(
        "/v1/channels",
        &m.key,
        json!({"id": "tg", "name": "TG", "engine": "telegram", "business_id": "b2"}),
        201,
    )
    .await;
    let bot = app.device(&m.key, "bot", "tg").await;
    app.device(&m.key, "idle", "ch").await;
    heartbeat(&app, &m.device_token).await;
    heartbeat(&app, &bot).await;
    app.advance(90_000).await;
    app.wait_status(&m.key, "dev", "disconnected").await;
    heartbeat(&app, &bot).await;
    let ids = |v: Value| -> Vec<String> {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_string())
            .collect()
    };
    for (query, expected) in [
        ("status=connected", vec!["bot"]),
        ("status=disconnected", vec!["dev"]),
        ("status=unknown", vec!["idle"]),
        ("engine=wa", vec!["dev", "idle"]),
        ("business_id=b2", vec!["bot"]),
        ("channel_id=ch&status=disconnected", vec!["dev"]),
    ] {
        let (status, v) = app.get(&format!("/v1/devices?{query}"), &m.key).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(ids(v), expected, "{query}");
    }
    let (status, _) = app.get("/v1/devices?status=asleep", &m.key).await;
    assert_eq!(status, 422);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_floods_are_refused_with_retry_after() {
    let app = TestApp::spawn_manual(LEASE).await;
    let m = app.merchant("m1").await;
    for _ in 0..10 {
        heartbeat(&app, &m.device_token).await;
    }
    let resp = app
        .client
        .post(format!("{}/v1/device/heartbeat", app.url))
        .bearer_auth(&m.device_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "1");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    app.advance(1_000).await;
    heartbeat(&app, &m.device_token).await;
    // Telemetry rides along and is shown with the presence.
    app.advance(1_000).await;
    let (status, _) = app
        .post(
            "/v1/device/heartbeat",
            &m.device_token,
            json!({"battery": 87, "charging": true, "signal": -71, "network": "4g"}),
        )
        .await;
    assert_eq!(status, 200);
    let p = app.wait_status(&m.key, "dev", "connected").await;
    assert_eq!(
        p["telemetry"],
        json!({"battery": 87, "charging": true, "signal": -71, "network": "4g"})
    );
    for bad in [
        json!({"battery": 101}),
        json!({"network": ""}),
        json!({"colour": "red"}),
    ] {
        let (status, _) = app
            .post("/v1/device/heartbeat", &m.device_token, bad.clone())
            .await;
        assert_eq!(status, 422, "{bad}");
    }
}
