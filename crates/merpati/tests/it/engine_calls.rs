//! Engines merpati calls: it polls an engine's sessions to keep its devices' presence (and
//! announces the devices of one that stops answering), and points a bot at its connector.

use serde_json::{json, Value};

use crate::connectors::{connector, rotate_secret, watched_merchant};
use crate::helpers::*;

/// A fake of WAHA's session API on loopback: answers what it is told, counts the asking,
/// and can fall silent (`status` set to `""`: it never answers again).
struct FakeWaha {
    url: String,
    asked: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    status: std::sync::Arc<std::sync::Mutex<&'static str>>,
    _server: tokio::task::JoinHandle<()>,
}

impl FakeWaha {
    async fn start() -> FakeWaha {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let status = std::sync::Arc::new(std::sync::Mutex::new("WORKING"));
        let (a, s) = (asked.clone(), status.clone());
        let app = axum::Router::new().route(
            "/api/sessions",
            axum::routing::get(move |headers: axum::http::HeaderMap| {
                let (a, s) = (a.clone(), s.clone());
                async move {
                    assert_eq!(headers["x-api-key"], "waha-key");
                    a.fetch_add(1, Ordering::SeqCst);
                    let status = *s.lock().unwrap();
                    if status.is_empty() {
                        std::future::pending::<()>().await;
                    }
                    axum::Json(json!([{"name": "default", "status": status}]))
                }
            }),
        );
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeWaha {
            url,
            asked,
            status,
            _server: server,
        }
    }

    fn asked(&self) -> usize {
        self.asked.load(std::sync::atomic::Ordering::SeqCst)
    }

    async fn asked_more_than(&self, n: usize) {
        let deadline = std::time::Instant::now() + PATIENCE;
        while self.asked() <= n {
            assert!(std::time::Instant::now() < deadline, "never asked again");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polled_engine_keeps_its_device_up_and_one_that_stops_answering_is_announced() {
    let (app, m, receiver) = watched_merchant().await;
    let waha = FakeWaha::start().await;
    connector(
        &app,
        &m.key,
        json!({"engine": "waha", "channel_id": "ch", "bindings": {"default": "dev"},
               "api": {"base_url": waha.url, "key": "waha-key"}, "poll_interval": "20s"}),
    )
    .await;
    // Asked at once, and up.
    waha.asked_more_than(0).await;
    app.wait_status(&m.key, "dev", "connected").await;
    // Its answers keep the lease: well past the heartbeat timeout, still up.
    for _ in 0..5 {
        let asked = waha.asked();
        app.advance(20_000).await;
        waha.asked_more_than(asked).await;
    }
    app.tick().await;
    app.wait_status(&m.key, "dev", "connected").await;
    // The engine says the session needs its QR code again: logged out, at once.
    *waha.status.lock().unwrap() = "SCAN_QR_CODE";
    let asked = waha.asked();
    app.advance(20_000).await;
    waha.asked_more_than(asked).await;
    app.wait_status(&m.key, "dev", "disconnected").await;
    *waha.status.lock().unwrap() = "WORKING";
    let asked = waha.asked();
    app.advance(20_000).await;
    waha.asked_more_than(asked).await;
    app.wait_status(&m.key, "dev", "connected").await;
    // Then the engine dies: no answer, and the lease runs out, then the grace. The poll
    // that hangs is the one after the last answer was taken in (polls go one at a time).
    *waha.status.lock().unwrap() = "";
    let asked = waha.asked();
    app.advance(20_000).await;
    waha.asked_more_than(asked).await;
    app.advance(60_000 + 31_000).await;
    app.wait_status(&m.key, "dev", "disconnected").await;
    let events: Vec<(String, Value)> = receiver
        .wait_for(4)
        .await
        .iter()
        .map(|r| {
            let v = r.json();
            (
                v["event"].as_str().unwrap().to_string(),
                v["reason"].clone(),
            )
        })
        .collect();
    assert_eq!(
        events,
        [
            ("device.connected".to_string(), Value::Null),
            ("device.disconnected".to_string(), json!("logged_out")),
            ("device.connected".to_string(), Value::Null),
            (
                "device.disconnected".to_string(),
                json!("heartbeat_timeout")
            ),
        ]
    );
}

/// A fake of Telegram's Bot API on loopback: `getWebhookInfo` and `setWebhook` for one bot.
async fn fake_telegram(
    webhook: std::sync::Arc<std::sync::Mutex<Option<Value>>>,
) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (get, set) = (webhook.clone(), webhook);
    let app = axum::Router::new()
        .route(
            "/bot123:abc/getWebhookInfo",
            axum::routing::get(move || {
                let w = get.clone();
                async move {
                    let url = w.lock().unwrap().as_ref().map(|v| v["url"].clone());
                    axum::Json(json!({"ok": true, "result": {"url": url.unwrap_or(json!(""))}}))
                }
            }),
        )
        .route(
            "/bot123:abc/setWebhook",
            axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
                let w = set.clone();
                async move {
                    *w.lock().unwrap() = Some(body);
                    axum::Json(json!({"ok": true, "result": true}))
                }
            }),
        );
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (url, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merpati_points_a_telegram_bot_at_its_connector_and_again_after_a_rotation() {
    let app = TestApp::spawn_with(&[("alerts.public_url", "https://merpati.example")]).await;
    let m = app.merchant_on("acct", "telegram").await;
    let webhook = std::sync::Arc::new(std::sync::Mutex::new(None));
    let (api, _server) = fake_telegram(webhook.clone()).await;
    let c = connector(
        &app,
        &m.key,
        json!({"engine": "telegram", "channel_id": "ch", "device_id": "dev",
               "api": {"base_url": api, "key": "123:abc"}, "poll_interval": "5s"}),
    )
    .await;
    let id = c.view["id"].as_str().unwrap().to_string();
    let set_with = |secret: String| {
        let webhook = webhook.clone();
        async move {
            let deadline = std::time::Instant::now() + PATIENCE;
            loop {
                let now = webhook.lock().unwrap().clone();
                if now
                    .as_ref()
                    .is_some_and(|w| w["secret_token"] == secret.as_str())
                {
                    return now.unwrap();
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "setWebhook never came: {now:?}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    };
    let set = set_with(c.secret.clone()).await;
    assert_eq!(
        set["url"],
        format!("https://merpati.example/v1/connectors/{id}/inbound")
    );
    assert_eq!(set["allowed_updates"], json!(["message"]));
    app.wait_status(&m.key, "dev", "connected").await;

    // A rotated secret is given to Telegram at the next poll.
    let rotated = rotate_secret(&app, &m.key, &id).await;
    set_with(rotated["secret"].as_str().unwrap().to_string()).await;
}

/// Loopback fakes of Evolution's, textbee's, Telegram's and Slack's status APIs, in one
/// server: each answers that all is well, until told it is dead (then it fails every
/// request). It counts the asking.
async fn fake_engines(
    dead: std::sync::Arc<std::sync::atomic::AtomicBool>,
    asked: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> (String, tokio::task::JoinHandle<()>) {
    use axum::response::IntoResponse;
    use axum::routing::{get, post};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let answer = move |body: Value| {
        let (dead, asked) = (dead.clone(), asked.clone());
        move || {
            let (dead, asked, body) = (dead.clone(), asked.clone(), body.clone());
            async move {
                asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if dead.load(std::sync::atomic::Ordering::SeqCst) {
                    return axum::http::StatusCode::SERVICE_UNAVAILABLE.into_response();
                }
                axum::Json(body).into_response()
            }
        }
    };
    let app = axum::Router::new()
        .route(
            "/instance/connectionState/toko",
            get(answer(
                json!({"instance": {"instanceName": "toko", "state": "open"}}),
            )),
        )
        .route(
            "/api/v1/gateway/devices",
            get(answer(json!({"data": [
                {"_id": "p1", "enabled": true, "lastHeartbeat": "2999-01-01T00:00:00.000Z"}
            ]}))),
        )
        .route(
            "/bot123:abc/getWebhookInfo",
            get(answer(json!({"ok": true, "result": {"url": ""}}))),
        )
        .route(
            "/bot123:abc/setWebhook",
            post(answer(json!({"ok": true, "result": true}))),
        )
        .route(
            "/api/auth.test",
            get(answer(json!({"ok": true, "team_id": "T1"}))),
        );
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (url, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_polled_engine_that_stops_answering_is_announced_disconnected() {
    let app = TestApp::spawn_manual(&[
        ("presence.heartbeat_timeout", "60s"),
        ("presence.grace", "30s"),
        ("alerts.public_url", "https://merpati.example"),
    ])
    .await;
    let dead = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (api, _server) = fake_engines(dead.clone(), asked.clone()).await;
    let cases = [
        ("evolution", json!({"bindings": {"toko": "dev"}}), "evo-key"),
        ("textbee", json!({"bindings": {"p1": "dev"}}), "tb-key"),
        ("telegram", json!({"device_id": "dev"}), "123:abc"),
        (
            "slack",
            json!({"device_id": "dev", "secret": "8f742231b10e8888abcd99yyyzzz85a5"}),
            "xoxb-1",
        ),
    ];
    let mut keys = Vec::new();
    for (i, (engine, extra, api_key)) in cases.into_iter().enumerate() {
        let m = app.merchant_on(&format!("acct{i}"), engine).await;
        let mut body = json!({"engine": engine, "channel_id": "ch", "poll_interval": "5s",
                              "api": {"base_url": api, "key": api_key}});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        connector(&app, &m.key, body).await;
        app.wait_status(&m.key, "dev", "connected").await;
        keys.push((engine, m.key));
    }
    // Still answering: a minute later, everyone is up.
    for _ in 0..12 {
        app.advance(5_000).await;
    }
    for (_, key) in &keys {
        app.wait_status(key, "dev", "connected").await;
    }
    // Dead: each device is announced, its lease and its grace past. Once every engine has
    // been asked again and failed, no answer from before is still being taken in.
    dead.store(true, std::sync::atomic::Ordering::SeqCst);
    let before = asked.load(std::sync::atomic::Ordering::SeqCst);
    app.advance(5_000).await;
    let deadline = std::time::Instant::now() + PATIENCE;
    while asked.load(std::sync::atomic::Ordering::SeqCst) < before + keys.len() {
        assert!(
            std::time::Instant::now() < deadline,
            "not every engine was asked"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    app.advance(60_000 + 31_000).await;
    for (engine, key) in &keys {
        let presence = app.wait_status(key, "dev", "disconnected").await;
        assert_eq!(presence["status"], "disconnected", "{engine}");
    }
}
