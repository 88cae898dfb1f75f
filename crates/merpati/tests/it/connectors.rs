//! Connectors: an engine pointed at merpati, unchanged. Its documented bodies, signed its
//! own way, reach a real receiver in the documents' format; forged, tampered, stale or
//! misdirected requests store nothing; a retry is one event; its session states drive
//! presence (a quick reconnect is a blip), and a silent engine is noticed.

use merpati_engines::verify::sign;
use merpati_engines::Engine;
use reqwest::header::HeaderMap;
use serde_json::{json, Value};

use crate::helpers::*;

pub(crate) fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../merpati-engines/tests/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub(crate) struct Connector {
    pub(crate) path: String,
    pub(crate) secret: String,
    pub(crate) view: Value,
}

pub(crate) async fn connector(app: &TestApp, key: &str, body: Value) -> Connector {
    let view = app.ok_post("/v1/connectors", key, body, 201).await;
    let url = view["url"].as_str().unwrap();
    let path = url[url.find("/v1/").unwrap()..].to_string();
    Connector {
        path,
        secret: view["secret"].as_str().unwrap().to_string(),
        view,
    }
}

/// A server on a manual clock (heartbeats due within a minute, 30 s of grace), a merchant
/// with a device on "wa", and a receiver of its device events.
pub(crate) async fn watched_merchant() -> (TestApp, Merchant, Receiver) {
    let app = TestApp::spawn_manual(&[
        ("presence.heartbeat_timeout", "60s"),
        ("presence.grace", "30s"),
    ])
    .await;
    let m = app.merchant_on("acct", "wa").await;
    let receiver = Receiver::start().await;
    app.endpoint(&m.key, &receiver, json!({"events": ["device.*"]}))
        .await;
    (app, m, receiver)
}

/// Rotates connector `id`'s secret; the connector as the answer shows it.
pub(crate) async fn rotate_secret(app: &TestApp, key: &str, id: &str) -> Value {
    app.ok_post(
        &format!("/v1/connectors/{id}/secret/rotate"),
        key,
        json!({}),
        200,
    )
    .await
}

/// Posts `body` as the engine would, with `headers`; the status and answer.
async fn post(app: &TestApp, path: &str, body: &[u8], headers: &[(&str, String)]) -> (u16, Value) {
    let mut req = app
        .client
        .post(format!("{}{path}", app.url))
        .header("content-type", "application/json")
        .body(body.to_vec());
    for (name, value) in headers {
        req = req.header(*name, value);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let _: &HeaderMap = resp.headers();
    let value: Value = resp.json().await.unwrap();
    crate::contract::check("POST", path, status, &value);
    (status, value)
}

pub(crate) async fn waha(app: &TestApp, c: &Connector, body: &[u8]) -> (u16, Value) {
    let sig = sign(Engine::Waha, &c.secret, body, 0);
    post(app, &c.path, body, &[("X-Webhook-Hmac", sig)]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waha_messages_arrive_as_the_documents_say_and_forgeries_store_nothing() {
    let app = TestApp::spawn().await;
    let m = app.merchant_on("acct", "wa").await;
    let receiver = Receiver::start().await;
    app.endpoint(&m.key, &receiver, json!({"events": ["whatsapp"]}))
        .await;
    let c = connector(
        &app,
        &m.key,
        json!({"engine": "waha", "channel_id": "ch", "bindings": {"default": "dev"}}),
    )
    .await;
    // The setup is what WAHA takes, with this connector's address and key.
    let hook = &c.view["setup"]["snippet"]["config"]["webhooks"][0];
    assert_eq!(hook["hmac"]["key"], c.secret.as_str());
    assert!(hook["url"].as_str().unwrap().ends_with(&c.path));

    // The engine's first signed request shows it alive: `device.connected` is event 1.
    let body = fixture("waha-message-received.json");
    let (status, taken) = waha(&app, &c, &body).await;
    assert_eq!(
        (status, taken["stored"].as_i64()),
        (200, Some(1)),
        "{taken}"
    );
    let got = receiver.wait_for(1).await;
    assert_eq!(
        got[0].body_str(),
        r#"{"type":"whatsapp","data":{"id":2,"wid":"+71111111111","phone":"+11111111111","message":"Hi there!","timestamp":1667561485}}"#
    );
    got[0].event();

    // WAHA retries: one event.
    let (status, taken) = waha(&app, &c, &body).await;
    assert_eq!((status, taken["duplicates"].as_i64()), (200, Some(1)));

    // Tampered, wrong key, no signature: 401 and nothing stored.
    let mut tampered = body.clone();
    let at = tampered.len() / 2;
    tampered[at] ^= 1;
    let sig = sign(Engine::Waha, &c.secret, &body, 0);
    let (status, refused) = post(&app, &c.path, &tampered, &[("X-Webhook-Hmac", sig)]).await;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let wrong = sign(Engine::Waha, "not-the-connector-s-key", &body, 0);
    assert_eq!(
        post(&app, &c.path, &body, &[("X-Webhook-Hmac", wrong)])
            .await
            .0,
        401
    );
    assert_eq!(post(&app, &c.path, &body, &[]).await.0, 401);

    // Signed for one connector, sent to another's address.
    let other = connector(
        &app,
        &m.key,
        json!({"engine": "waha", "channel_id": "ch", "device_id": "dev"}),
    )
    .await;
    let sig = sign(Engine::Waha, &c.secret, &body, 0);
    assert_eq!(
        post(&app, &other.path, &body, &[("X-Webhook-Hmac", sig)])
            .await
            .0,
        401
    );

    // The documented message is the account's own; an unknown session is bound to nothing.
    let (_, own) = waha(&app, &c, &fixture("waha-message.json")).await;
    assert_eq!(own["skipped"]["from_me"], 1);
    let stranger = String::from_utf8(body.clone())
        .unwrap()
        .replace("\"session\": \"default\"", "\"session\": \"stranger\"");
    let (status, unbound) = waha(&app, &c, stranger.as_bytes()).await;
    assert_eq!(
        (status, unbound["skipped"]["unbound"].as_i64()),
        (200, Some(1))
    );
    // Past the body limit: 413, whatever its signature.
    let enormous = vec![b' '; 1024 * 1024 + 1];
    let sig = sign(Engine::Waha, &c.secret, &enormous, 0);
    assert_eq!(
        post(&app, &c.path, &enormous, &[("X-Webhook-Hmac", sig)])
            .await
            .0,
        413
    );
    // Not JSON, signed: taken and skipped, so that WAHA does not retry it for hours.
    let (status, malformed) = waha(&app, &c, b"{not json").await;
    assert_eq!(
        (status, malformed["skipped"]["malformed"].as_i64()),
        (200, Some(1))
    );

    assert_eq!(app.count_of(&m.key, "whatsapp").await, 1);
    assert_eq!(receiver.received().len(), 1);

    // What it took in, and what it skipped, without the credentials in the bodies.
    let id = c.view["id"].as_str().unwrap();
    let (_, stats) = app.get(&format!("/v1/connectors/{id}/stats"), &m.key).await;
    assert_eq!(
        (&stats["stored"], &stats["duplicates"], &stats["rejected"]),
        (&json!(1), &json!(1), &json!(3))
    );
    assert_eq!(
        stats["skipped"],
        json!({"from_me": 1, "malformed": 1, "unbound": 1})
    );
    let recent = stats["recent_skipped"].as_array().unwrap();
    assert_eq!(recent.len(), 3);
    assert_eq!(recent[0]["reason"], "malformed");
    assert_eq!(recent[0]["body"], "[not JSON, 9 bytes]");
    assert!(recent[2]["body"].as_str().unwrap().contains("Hi there!"));
    // A rejected request counts at the connector it was sent to.
    let (_, other_stats) = app
        .get(
            &format!(
                "/v1/connectors/{}/stats",
                other.view["id"].as_str().unwrap()
            ),
            &m.key,
        )
        .await;
    assert_eq!(other_stats["rejected"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_android_gateway_signs_body_and_time_and_stale_requests_are_refused() {
    let app = TestApp::spawn().await;
    let m = app.merchant_on("acct", "sms").await;
    let receiver = Receiver::start().await;
    app.endpoint(&m.key, &receiver, json!({"events": ["sms"]}))
        .await;
    let c = connector(
        &app,
        &m.key,
        json!({"engine": "android-sms-gateway", "channel_id": "ch", "device_id": "dev"}),
    )
    .await;
    assert_eq!(
        c.view["setup"]["snippet"][0],
        json!({"url": c.view["url"], "event": "sms:received"})
    );
    let body = fixture("android-sms-received.json");
    let signed = |ts: i64| {
        vec![
            (
                "X-Signature",
                sign(Engine::AndroidSmsGateway, &c.secret, &body, ts),
            ),
            ("X-Timestamp", ts.to_string()),
        ]
    };
    let now = app.now_ms() / 1000;
    let (status, taken) = post(&app, &c.path, &body, &signed(now)).await;
    assert_eq!(
        (status, taken["stored"].as_i64()),
        (200, Some(1)),
        "{taken}"
    );
    let got = receiver.wait_for(1).await;
    assert_eq!(
        got[0].body_str(),
        r#"{"type":"sms","data":{"id":2,"rid":"abc123@1719045971","sim":1,"device":"dev","phone":"6505551212","message":"Android is always a sweet treat!","timestamp":1719045971}}"#
    );
    // The app re-signs each retry with a new time: still one message.
    let (_, again) = post(&app, &c.path, &body, &signed(now + 20)).await;
    assert_eq!(again["duplicates"], 1);
    // An hour old: refused, however well signed.
    assert_eq!(post(&app, &c.path, &body, &signed(now - 3600)).await.0, 401);
    assert_eq!(app.count_of(&m.key, "sms").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_states_make_a_reconnect_a_blip_and_a_silent_engine_is_noticed() {
    let (app, m, receiver) = watched_merchant().await;
    let c = connector(
        &app,
        &m.key,
        json!({"engine": "waha", "channel_id": "ch", "bindings": {"default": "dev"}}),
    )
    .await;
    let status = |s: &str| {
        format!(r#"{{"event":"session.status","session":"default","payload":{{"status":"{s}"}}}}"#)
            .into_bytes()
    };
    let (code, taken) = waha(&app, &c, &status("WORKING")).await;
    assert_eq!((code, taken["states"].as_i64()), (200, Some(1)));
    app.wait_status(&m.key, "dev", "connected").await;
    // Each announcement is received before the clock jumps: a delivery under way across a
    // jump past its lease would be claimed and sent again.
    receiver.wait_for(1).await;
    // WAHA restarts its session: STARTING, then WORKING inside the grace. A blip.
    waha(&app, &c, &status("STARTING")).await;
    app.advance(10_000).await;
    waha(&app, &c, &status("WORKING")).await;
    app.wait_status(&m.key, "dev", "connected").await;
    // Stopped for longer than the grace: one disconnect.
    waha(&app, &c, &status("STOPPED")).await;
    app.advance(31_000).await;
    app.wait_status(&m.key, "dev", "disconnected").await;
    receiver.wait_for(2).await;
    waha(&app, &c, &status("WORKING")).await;
    app.wait_status(&m.key, "dev", "connected").await;
    receiver.wait_for(3).await;
    // A state dated before the last one, arriving late, is dropped.
    let late = br#"{"event":"session.status","session":"default","timestamp":1000,"payload":{"status":"STOPPED"}}"#;
    let newer = br#"{"event":"session.status","session":"default","timestamp":2000,"payload":{"status":"WORKING"}}"#;
    waha(&app, &c, newer).await;
    let (_, dropped) = waha(&app, &c, late).await;
    assert_eq!(dropped["skipped"]["out_of_order"], 1);
    app.wait_status(&m.key, "dev", "connected").await;
    // Then silence: no engine reports its own death, so its lease runs out.
    app.advance(60_000 + 31_000).await;
    app.wait_status(&m.key, "dev", "disconnected").await;

    let events: Vec<String> = receiver
        .wait_for(4)
        .await
        .iter()
        .map(|r| r.json()["event"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        events,
        [
            "device.connected",
            "device.disconnected",
            "device.connected",
            "device.disconnected"
        ]
    );
    let last = receiver.received()[3].json();
    assert_eq!(last["reason"], "heartbeat_timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_connectors_are_refused_and_nothing_is_written() {
    let app = TestApp::spawn().await;
    let m = app.merchant_on("acct", "wa").await;
    let other = app.merchant_on("other", "wa").await;
    app.device(&other.key, "theirs", "ch").await;
    app.ok_post(
        "/v1/channels",
        &other.key,
        json!({"id": "their-ch", "name": "Theirs", "engine": "wa", "business_id": "biz"}),
        201,
    )
    .await;
    let cases = [
        json!({"engine": "whatsmeow", "channel_id": "ch", "device_id": "dev"}),
        json!({"engine": "waha", "channel_id": "ch"}),
        json!({"engine": "waha", "channel_id": "ch", "device_id": "dev", "bindings": {"s": "dev"}}),
        json!({"engine": "waha", "channel_id": "nope", "device_id": "dev"}),
        json!({"engine": "waha", "channel_id": "their-ch", "device_id": "dev"}),
        json!({"engine": "waha", "channel_id": "ch", "device_id": "theirs"}),
        json!({"engine": "waha", "channel_id": "ch", "device_id": "dev", "notifications": true}),
        json!({"engine": "waha", "channel_id": "ch", "device_id": "dev", "secret": "short"}),
        json!({"engine": "waha", "channel_id": "ch", "device_id": "dev", "poll_interval": "30s"}),
        json!({"engine": "waha", "channel_id": "ch", "device_id": "dev", "api": {"base_url": "ftp://x", "key": "k"}}),
        json!({"engine": "waha", "channel_id": "ch", "device_id": "dev", "extra": 1}),
        json!({"engine": "android-sms-gateway", "channel_id": "ch", "device_id": "dev",
               "api": {"base_url": "http://127.0.0.1:1", "key": "k"}}),
        json!({"engine": "evolution", "channel_id": "ch", "device_id": "dev",
               "api": {"base_url": "http://127.0.0.1:1", "key": "k"}}),
    ];
    for case in cases {
        let (status, body) = app.post("/v1/connectors", &m.key, case.clone()).await;
        assert_eq!(status, 422, "{case}: {body}");
    }
    let (status, _) = app
        .post_raw("/v1/connectors", &m.key, b"{\"engine\":")
        .await;
    assert_eq!(status, 400);
    let (_, list) = app.get("/v1/connectors", &m.key).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 0);

    // Not another account's to see, change, rotate or delete.
    let c = connector(
        &app,
        &m.key,
        json!({"engine": "evolution", "channel_id": "ch", "bindings": {"toko": "dev"},
               "api": {"base_url": "http://127.0.0.1:1", "key": "evo-key"}, "poll_interval": "30s"}),
    )
    .await;
    let id = c.view["id"].as_str().unwrap();
    assert_eq!(
        c.view["api"],
        json!({"base_url": "http://127.0.0.1:1"}),
        "the key is never shown"
    );
    for (method, path) in [
        (reqwest::Method::GET, format!("/v1/connectors/{id}")),
        (reqwest::Method::DELETE, format!("/v1/connectors/{id}")),
        (
            reqwest::Method::POST,
            format!("/v1/connectors/{id}/secret/rotate"),
        ),
    ] {
        let (status, _) = app.request(method, &path, Some(&other.key), None).await;
        assert_eq!(status, 404, "{path}");
    }
    // Evolution's secret travels as a header, since it cannot sign.
    let body = br#"{"event":"connection.update","instance":"toko","data":{"state":"open"}}"#;
    let (status, _) = post(&app, &c.path, body, &[("X-Merpati-Secret", "guess".into())]).await;
    assert_eq!(status, 401);
    let (status, taken) = post(
        &app,
        &c.path,
        body,
        &[("X-Merpati-Secret", c.secret.clone())],
    )
    .await;
    assert_eq!((status, taken["states"].as_i64()), (200, Some(1)));

    // A rotated secret keeps working through its grace, and the new one at once.
    let rotated = app
        .ok_post(
            &format!("/v1/connectors/{id}/secret/rotate"),
            &m.key,
            json!({"grace": "1h"}),
            200,
        )
        .await;
    let new = rotated["secret"].as_str().unwrap().to_string();
    for secret in [new.clone(), c.secret.clone()] {
        let (status, _) = post(&app, &c.path, body, &[("X-Merpati-Secret", secret)]).await;
        assert_eq!(status, 200);
    }
    app.ok_post(
        &format!("/v1/connectors/{id}/secret/rotate"),
        &m.key,
        json!({"grace": "0s", "secret": new.clone() + "-next-one"}),
        200,
    )
    .await;
    let (status, _) = post(&app, &c.path, body, &[("X-Merpati-Secret", new)]).await;
    assert_eq!(status, 401);

    // Deleted: its address takes nothing.
    let (status, _) = app.delete(&format!("/v1/connectors/{id}"), &m.key).await;
    assert_eq!(status, 204);
    assert_eq!(post(&app, &c.path, body, &[]).await.0, 404);
}

/// For each engine: its documented message, signed its own way, reaches a real receiver in
/// the documents' format, once however often it is sent; the same body tampered with, or
/// without its signature, is refused and stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_engine_s_message_reaches_a_receiver_once_and_a_forgery_nothing() {
    let app = TestApp::spawn().await;
    let now = app.now_ms() / 1000;
    let slack_secret = "8f742231b10e8888abcd99yyyzzz85a5";
    // (engine, connector's extra fields, fixture, item type, what the receiver gets; the
    // system ids count each account's `device.connected` too)
    let cases = [
        (
            Engine::Evolution,
            json!({"bindings": {"toko-1": "dev"}}),
            "evolution-messages-upsert.json",
            "whatsapp",
            r#"{"type":"whatsapp","data":{"id":2,"wid":"+6289876543210","phone":"+6281234567890","message":"Halo, apakah pesanan saya sudah dikirim?","timestamp":1717171717}}"#,
        ),
        (
            Engine::Textbee,
            json!({"bindings": {"66a1f0c2e4b0a1b2c3d4e5f6": "dev"}}),
            "textbee-message-received.json",
            "sms",
            r#"{"type":"sms","data":{"id":4,"rid":"66a1f3d9e4b0a1b2c3d4e5f7","sim":1,"device":"dev","phone":"+628111222333","message":"Kode OTP Anda 123456","timestamp":1721889753}}"#,
        ),
        (
            Engine::Telegram,
            json!({"device_id": "dev", "notifications": true}),
            "telegram-update.json",
            "notification",
            r#"{"type":"notification","data":{"id":6,"device":"dev","package":"org.telegram.messenger","title":"@ani_w","content":"Halo bot","timestamp":1717000000}}"#,
        ),
        (
            Engine::Slack,
            json!({"bindings": {"T061EG9R6": "dev"}, "notifications": true, "secret": slack_secret}),
            "slack-message.json",
            "notification",
            r#"{"type":"notification","data":{"id":8,"device":"dev","package":"com.Slack","title":"C2147483705","content":"Hello world","timestamp":1355517523}}"#,
        ),
    ];
    for (i, (engine, extra, file, item_type, data)) in cases.into_iter().enumerate() {
        let m = app.merchant_on(&format!("acct{i}"), engine.as_str()).await;
        let receiver = Receiver::start().await;
        app.endpoint(&m.key, &receiver, json!({"events": [item_type]}))
            .await;
        let mut body = json!({"engine": engine.as_str(), "channel_id": "ch"});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let c = connector(&app, &m.key, body).await;
        let payload = fixture(file);
        let headers = |body: &[u8]| -> Vec<(&str, String)> {
            let sig = sign(engine, &c.secret, body, now);
            match engine {
                Engine::Evolution => vec![("X-Merpati-Secret", sig)],
                Engine::Textbee => vec![("X-Signature", sig)],
                Engine::Telegram => vec![("X-Telegram-Bot-Api-Secret-Token", sig)],
                Engine::Slack => vec![
                    ("X-Slack-Signature", sig),
                    ("X-Slack-Request-Timestamp", now.to_string()),
                ],
                _ => unreachable!(),
            }
        };
        let (status, taken) = post(&app, &c.path, &payload, &headers(&payload)).await;
        assert_eq!(
            (status, taken["stored"].as_i64()),
            (200, Some(1)),
            "{engine}: {taken}"
        );
        let (_, again) = post(&app, &c.path, &payload, &headers(&payload)).await;
        assert_eq!(again["duplicates"], 1, "{engine}");

        let got = &receiver.wait_for(1).await[0];
        assert_eq!(got.body_str(), data, "{engine}");
        got.event();

        // Tampered with, or unsigned: refused, nothing stored.
        let mut tampered = payload.clone();
        let at = tampered.len() / 2;
        tampered[at] ^= 1;
        // (Evolution and Telegram send a shared secret, not a signature of the body.)
        if engine != Engine::Evolution && engine != Engine::Telegram {
            let (status, _) = post(&app, &c.path, &tampered, &headers(&payload)).await;
            assert_eq!(status, 401, "{engine}: tampered");
        }
        assert_eq!(
            post(&app, &c.path, &payload, &[]).await.0,
            401,
            "{engine}: unsigned"
        );
        assert_eq!(app.count_of(&m.key, item_type).await, 1, "{engine}");
        assert_eq!(receiver.received().len(), 1, "{engine}");

        if engine == Engine::Slack {
            // Slack checks the address with a challenge, and a replay is stale.
            let challenge = fixture("slack-url-verification.json");
            let (status, answer) = post(&app, &c.path, &challenge, &headers(&challenge)).await;
            assert_eq!(
                (status, answer["challenge"].as_str()),
                (
                    200,
                    Some("3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P")
                )
            );
            let old = now - 600;
            let replayed = vec![
                (
                    "X-Slack-Signature",
                    sign(engine, slack_secret, &payload, old),
                ),
                ("X-Slack-Request-Timestamp", old.to_string()),
            ];
            assert_eq!(post(&app, &c.path, &payload, &replayed).await.0, 401);
        }
    }
}

/// A connector's whole life in the real binary, logging at debug: no secret of it, no key
/// of its engine, and nothing an engine put in its bodies reaches the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_s_secrets_and_its_engine_s_keys_never_reach_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, url, logs) = crate::restart::spawn_binary_logged(
        dir.path(),
        &[("MERPATI_LOG", "debug"), ("MERPATI_PRESENCE_GRACE", "1s")],
    )
    .await;
    let app = TestApp::at(url);
    let m = app.merchant_on("acct", "wa").await;
    let evo = connector(
        &app,
        &m.key,
        json!({"engine": "evolution", "channel_id": "ch", "bindings": {"toko-1": "dev"},
               "api": {"base_url": "http://127.0.0.1:1", "key": "evo-api-key-5f1e2d"},
               "poll_interval": "5s"}),
    )
    .await;
    let body = fixture("evolution-messages-upsert.json");
    let (status, _) = post(
        &app,
        &evo.path,
        &body,
        &[("X-Merpati-Secret", evo.secret.clone())],
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = post(
        &app,
        &evo.path,
        &body,
        &[("X-Merpati-Secret", "wrong".into())],
    )
    .await;
    assert_eq!(status, 401);
    let id = evo.view["id"].as_str().unwrap();
    let rotated = rotate_secret(&app, &m.key, id).await;
    let waha = connector(
        &app,
        &m.key,
        json!({"engine": "waha", "channel_id": "ch", "device_id": "dev",
               "secret": "my-own-waha-hmac-key-0123"}),
    )
    .await;
    let signed = sign(Engine::Waha, &waha.secret, b"{nope", 0);
    post(&app, &waha.path, b"{nope", &[("X-Webhook-Hmac", signed)]).await;
    // A poll or two of the engine that is not there.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    crate::restart::stop_gracefully(&mut child).await;

    let logged = logs.lock().unwrap().join("\n");
    assert!(logged.contains("merpati is listening"), "the log was read");
    assert!(
        logged.contains("engine did not answer"),
        "the poller logged its failure"
    );
    for secret in [
        evo.secret.as_str(),
        rotated["secret"].as_str().unwrap(),
        waha.secret.as_str(),
        "evo-api-key-5f1e2d",
        // Evolution puts its instance key in every body.
        "B6D711FCDE4D4FD5936544120E713976",
        m.key.as_str(),
        m.device_token.as_str(),
        ADMIN,
    ] {
        assert!(!logged.contains(secret), "{secret:?} is in the log");
    }
}

/// When the store cannot take what an engine sent (here its database is locked by another
/// writer longer than the store waits), the engine is told 503 with `Retry-After`, and its
/// retry is stored once the store can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_write_answers_503_and_the_retry_is_stored() {
    let app = TestApp::spawn().await;
    let m = app.merchant_on("acct", "wa").await;
    let c = connector(
        &app,
        &m.key,
        json!({"engine": "waha", "channel_id": "ch", "bindings": {"default": "dev"}}),
    )
    .await;
    let body = fixture("waha-message-received.json");
    let sig = sign(Engine::Waha, &c.secret, &body, 0);

    let blocked = RawDatabase::of(&app).block_writes();
    let resp = app
        .client
        .post(format!("{}{}", app.url, c.path))
        .header("X-Webhook-Hmac", &sig)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    drop(blocked);

    let (status, taken) = waha(&app, &c, &body).await;
    assert_eq!(
        (status, taken["stored"].as_i64()),
        (200, Some(1)),
        "{taken}"
    );
    assert_eq!(app.count_of(&m.key, "whatsapp").await, 1);
}
