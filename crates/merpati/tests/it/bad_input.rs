//! Every bad input of the issue: a JSON error with the right status, and nothing written.

use serde_json::{json, Value};

use crate::helpers::*;

fn assert_error(status: reqwest::StatusCode, body: &Value, expected: u16, what: &str) {
    assert_eq!(status.as_u16(), expected, "{what}: {body}");
    assert!(
        body["error"]["code"].is_string() && body["error"]["message"].is_string(),
        "{what}: not the error shape: {body}"
    );
}

/// Everything a merchant can list, to show that a refused request wrote nothing.
pub(crate) async fn snapshot(app: &TestApp, m: &Merchant) -> Vec<Value> {
    let mut all = Vec::new();
    for list in [
        "/v1/businesses",
        "/v1/channels",
        "/v1/devices",
        "/v1/endpoints",
        "/v1/events",
        "/v1/connectors",
        "/v1/notifiers",
        "/v1/alert-rules",
        "/v1/maintenance-windows",
        "/v1/incidents",
    ] {
        let (status, body) = app.get(list, &m.key).await;
        assert_eq!(status, 200);
        all.push(body["data"].clone());
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_mistyped_bodies() {
    let app = TestApp::spawn().await;
    let m = app.merchant("m1").await;
    let before = snapshot(&app, &m).await;
    let cases: Vec<(&str, &str, &[u8], u16)> = vec![
        ("/v1/businesses", "key", b"{\"name\":", 400),
        ("/v1/businesses", "key", b"not json", 400),
        ("/v1/businesses", "key", b"", 400),
        ("/v1/businesses", "key", br#"{"name": 5}"#, 422),
        ("/v1/businesses", "key", br#"{"id": 5, "name": "x"}"#, 422),
        ("/v1/businesses", "key", br#"{}"#, 422),
        (
            "/v1/businesses",
            "key",
            br#"{"name": "x", "colour": "red"}"#,
            422,
        ),
        ("/v1/businesses", "key", br#"{"name": "   "}"#, 422),
        (
            "/v1/channels",
            "key",
            br#"{"name": "x", "business_id": "biz"}"#,
            422,
        ),
        (
            "/v1/channels",
            "key",
            br#"{"name": "x", "engine": "", "business_id": "biz"}"#,
            422,
        ),
        (
            "/v1/channels",
            "key",
            br#"{"name": "x", "engine": "wa", "business_id": "nope"}"#,
            422,
        ),
        ("/v1/devices", "key", br#"{"name": "x"}"#, 422),
        (
            "/v1/devices",
            "key",
            br#"{"name": "x", "channel_id": "ch", "phone": "+1<script>"}"#,
            422,
        ),
        ("/v1/endpoints", "key", br#"{}"#, 422),
        ("/v1/endpoints", "key", br#"{"url": 42}"#, 422),
        (
            "/v1/endpoints",
            "key",
            br#"{"url": "https://e.com", "format": "xml"}"#,
            422,
        ),
        (
            "/v1/endpoints",
            "key",
            br#"{"url": "https://e.com", "secret_in_body": "yes"}"#,
            422,
        ),
        ("/v1/device/messages", "device", b"{\"type\":\"sms\"", 400),
        (
            "/v1/device/messages",
            "device",
            br#"{"type": "sms", "rid": 1, "phone": "+1"}"#,
            422,
        ),
        (
            "/v1/device/messages",
            "device",
            br#"{"type": "sms", "rid": 1, "phone": "+1", "message": 7}"#,
            422,
        ),
        (
            "/v1/device/messages",
            "device",
            br#"{"rid": 1, "phone": "+1", "message": "m"}"#,
            422,
        ),
        ("/v1/device/messages", "device", br#"[1, 2]"#, 422),
        ("/v1/device/messages", "device", br#"{"items": "all"}"#, 422),
        (
            "/v1/device/status",
            "device",
            br#"{"status": "sleeping"}"#,
            422,
        ),
        ("/v1/device/status", "device", br#"{}"#, 422),
    ];
    for (path, who, body, expected) in cases {
        let token = if who == "key" {
            &m.key
        } else {
            &m.device_token
        };
        let (status, err) = app.post_raw(path, token, body).await;
        assert_error(
            status,
            &err,
            expected,
            &format!("{path} {}", String::from_utf8_lossy(body)),
        );
    }
    assert_eq!(snapshot(&app, &m).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_event_types() {
    let app = TestApp::spawn().await;
    let m = app.merchant("m1").await;
    let before = snapshot(&app, &m).await;
    let (status, err) = app
        .post(
            "/v1/device/messages",
            &m.device_token,
            json!({"type": "mms", "rid": 1, "phone": "+1", "message": "m"}),
        )
        .await;
    assert_error(status, &err, 422, "item type mms");
    for events in [
        json!(["sms", "mms"]),
        json!(["sms.*"]),
        json!(["device.reboot"]),
        json!([]),
    ] {
        let (status, err) = app
            .post(
                "/v1/endpoints",
                &m.key,
                json!({"url": "https://e.com/", "events": events}),
            )
            .await;
        assert_error(status, &err, 422, &format!("filter {events}"));
    }
    let (status, err) = app.get("/v1/events?type=mms", &m.key).await;
    assert_error(status, &err, 422, "list filter");
    assert_eq!(snapshot(&app, &m).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_batches_and_bodies() {
    let app = TestApp::spawn().await;
    let m = app.merchant("m1").await;
    let item = json!({"type": "sms", "rid": 1, "phone": "+1", "message": "m"});
    let items: Vec<Value> = (0..1001)
        .map(|i| {
            let mut it = item.clone();
            it["rid"] = json!(i);
            it
        })
        .collect();
    let (status, err) = app
        .post(
            "/v1/device/messages",
            &m.device_token,
            json!({"items": items}),
        )
        .await;
    assert_error(status, &err, 413, "1001 items");
    assert_eq!(app.event_count(&m.key).await, 0);
    // Exactly the limit is fine.
    let (status, v) = app
        .post(
            "/v1/device/messages",
            &m.device_token,
            json!({"items": items[..1000]}),
        )
        .await;
    assert_eq!(status, 202, "{v}");
    assert_eq!(v["accepted"], 1000);

    let big =
        json!({"type": "sms", "rid": "big", "phone": "+1", "message": "x".repeat(1024 * 1024)});
    let (status, err) = app.post("/v1/device/messages", &m.device_token, big).await;
    assert_error(status, &err, 413, "2 MiB body");
    let (status, err) = app
        .post(
            "/v1/businesses",
            &m.key,
            json!({"name": "x".repeat(2 * 1024 * 1024)}),
        )
        .await;
    assert_error(status, &err, 413, "big management body");
    let (_, businesses) = app.get("/v1/businesses", &m.key).await;
    assert_eq!(businesses["data"].as_array().unwrap().len(), 1);
    let (_, newest) = app.get("/v1/events?limit=1", &m.key).await;
    assert_eq!(newest["data"][0]["id"], v["items"][999]["event_id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_urls() {
    let app = TestApp::spawn().await;
    let m = app.merchant("m1").await;
    for url in [
        "ftp://example.com/hook",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "https://user:pass@example.com/hook",
        "https://token@example.com/hook",
        "example.com/hook",
        "",
    ] {
        let (status, err) = app.post("/v1/endpoints", &m.key, json!({"url": url})).await;
        assert_error(status, &err, 422, url);
    }
    let ep = app
        .ok_post(
            "/v1/endpoints",
            &m.key,
            json!({"url": "https://example.com/hook"}),
            201,
        )
        .await;
    let id = ep["id"].as_str().unwrap();
    let (status, err) = app
        .patch(
            &format!("/v1/endpoints/{id}"),
            &m.key,
            json!({"url": "https://u:p@example.com/"}),
        )
        .await;
    assert_error(status, &err, 422, "patched url");
    for (headers, what) in [
        (json!({"webhook-signature": "forged"}), "reserved header"),
        (json!({"Content-Type": "text/plain"}), "content type"),
        (json!({"bad header": "x"}), "header name"),
        (json!({"x-ok": "line\nbreak"}), "header value"),
    ] {
        let (status, err) = app
            .post(
                "/v1/endpoints",
                &m.key,
                json!({"url": "https://e.com/", "headers": headers}),
            )
            .await;
        assert_error(status, &err, 422, what);
    }
    for secret in ["not-a-secret", "whsec_short", "whsec_!!!!"] {
        let (status, err) = app
            .post(
                "/v1/endpoints",
                &m.key,
                json!({"url": "https://e.com/", "secret": secret}),
            )
            .await;
        assert_error(status, &err, 422, secret);
    }
    let (status, err) = app
        .post(
            "/v1/endpoints",
            &m.key,
            json!({"url": "https://e.com/", "ordering": "global"}),
        )
        .await;
    assert_error(status, &err, 422, "ordering");
    let (_, list) = app.get("/v1/endpoints", &m.key).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_outside_the_allowed_characters_or_too_long() {
    let app = TestApp::spawn().await;
    let m = app.merchant("m1").await;
    let before = snapshot(&app, &m).await;
    let long = "x".repeat(129);
    for id in ["has space", "slash/y", "quote\"", "ünï", "", long.as_str()] {
        let (status, err) = app
            .post("/v1/businesses", &m.key, json!({"id": id, "name": "x"}))
            .await;
        assert_error(status, &err, 422, &format!("business id {id:?}"));
        let (status, err) = app
            .post(
                "/v1/devices",
                &m.key,
                json!({"id": id, "name": "x", "channel_id": "ch"}),
            )
            .await;
        assert_error(status, &err, 422, &format!("device id {id:?}"));
        let (status, err) = app
            .post("/v1/accounts", ADMIN, json!({"id": id, "name": "x"}))
            .await;
        assert_error(status, &err, 422, &format!("account id {id:?}"));
    }
    let ok = "A-z_0.9:x".to_string() + &"y".repeat(119);
    assert_eq!(ok.len(), 128);
    app.ok_post(
        "/v1/businesses",
        &m.key,
        json!({"id": ok, "name": "x"}),
        201,
    )
    .await;
    let (status, err) = app
        .post("/v1/businesses", &m.key, json!({"id": ok, "name": "again"}))
        .await;
    assert_error(status, &err, 409, "taken id");
    let mut after = snapshot(&app, &m).await;
    assert_eq!(after[0].as_array_mut().unwrap().len(), 2);
    after[0]
        .as_array_mut()
        .unwrap()
        .retain(|b| b["id"] != ok.as_str());
    assert_eq!(after, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_wrong_and_revoked_tokens() {
    let app = TestApp::spawn().await;
    let m = app.merchant("m1").await;
    let (status, err) = app
        .request(reqwest::Method::GET, "/v1/businesses", None, None)
        .await;
    assert_error(status, &err, 401, "no token");
    for token in ["mpk_wrong", "", "Basic abc"] {
        let (status, err) = app.get("/v1/businesses", token).await;
        assert_error(status, &err, 401, token);
    }
    let (status, err) = app.get("/v1/accounts", "not-the-admin-token").await;
    assert_error(status, &err, 401, "admin");
    let (status, err) = app
        .post(
            "/v1/device/messages",
            "mdt_wrong",
            json!({"type": "sms", "rid": 1, "phone": "+1", "message": "m"}),
        )
        .await;
    assert_error(status, &err, 401, "device");

    // Revoke the merchant's key: it stops working at once.
    let (_, keys) = app.get("/v1/accounts/m1/api-keys", ADMIN).await;
    let key_id = keys["data"][0]["id"].as_str().unwrap();
    assert!(m.key.starts_with(keys["data"][0]["hint"].as_str().unwrap()));
    let (status, _) = app
        .delete(&format!("/v1/accounts/m1/api-keys/{key_id}"), ADMIN)
        .await;
    assert_eq!(status, 204);
    let (status, err) = app.get("/v1/businesses", &m.key).await;
    assert_error(status, &err, 401, "revoked key");
    let (_, keys) = app.get("/v1/accounts/m1/api-keys", ADMIN).await;
    assert!(keys["data"][0]["revoked_at"].is_string());

    // Rotate the device token: the old one stops working at once.
    let key = app
        .ok_post("/v1/accounts/m1/api-keys", ADMIN, json!({}), 201)
        .await["key"]
        .as_str()
        .unwrap()
        .to_string();
    // Used just before (so a cache would hold it), then rotated.
    app.ok_post(
        "/v1/device/status",
        &m.device_token,
        json!({"status": "connected"}),
        202,
    )
    .await;
    let rotated = app
        .ok_post("/v1/devices/dev/token", &key, json!({}), 200)
        .await;
    let new_token = rotated["token"].as_str().unwrap();
    let (status, err) = app
        .post(
            "/v1/device/status",
            &m.device_token,
            json!({"status": "connected"}),
        )
        .await;
    assert_error(status, &err, 401, "rotated device token");
    app.ok_post(
        "/v1/device/status",
        new_token,
        json!({"status": "connected"}),
        202,
    )
    .await;
    // Deleted: its token stops at once too.
    app.ok_post("/v1/device/heartbeat", new_token, json!({}), 200)
        .await;
    assert_eq!(app.delete("/v1/devices/dev", &key).await.0, 204);
    let (status, err) = app.post("/v1/device/heartbeat", new_token, json!({})).await;
    assert_error(status, &err, 401, "deleted device's token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_cannot_post_as_another_device() {
    let app = TestApp::spawn().await;
    let m = app.merchant("m1").await;
    app.device(&m.key, "dev2", "ch").await;
    for item in [
        json!({"type": "sms", "rid": 1, "device": "dev2", "phone": "+1", "message": "m"}),
        json!({"type": "ussd", "rid": 2, "device": "dev2", "code": "*1#", "response": "r"}),
        json!({"type": "notification", "rid": 3, "device": "dev2", "package": "p", "title": "t", "content": "c"}),
        json!({"items": [
            {"type": "sms", "rid": 4, "device": "dev", "phone": "+1", "message": "m"},
            {"type": "sms", "rid": 5, "device": "other", "phone": "+1", "message": "m"},
        ]}),
    ] {
        let (status, err) = app
            .post("/v1/device/messages", &m.device_token, item.clone())
            .await;
        assert_error(status, &err, 403, &item.to_string());
    }
    assert_eq!(app.event_count(&m.key).await, 0);
    // Naming itself is fine.
    app.ok_post(
        "/v1/device/messages",
        &m.device_token,
        json!({"type": "sms", "rid": 1, "device": "dev", "phone": "+1", "message": "m"}),
        202,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_methods_and_query_parameters() {
    let app = TestApp::spawn().await;
    let m = app.merchant("m1").await;
    let (status, err) = app.get("/v1/nothing-here", &m.key).await;
    assert_error(status, &err, 404, "route");
    let (status, err) = app
        .request(reqwest::Method::PUT, "/v1/businesses", Some(&m.key), None)
        .await;
    assert_error(status, &err, 405, "method");
    for query in [
        "limit=0",
        "limit=501",
        "limit=ten",
        "cursor=%21%21",
        "colour=red",
    ] {
        let (status, err) = app.get(&format!("/v1/events?{query}"), &m.key).await;
        assert_error(status, &err, 422, query);
        let (status, err) = app.get(&format!("/v1/devices?{query}"), &m.key).await;
        assert_error(status, &err, 422, query);
    }
}
