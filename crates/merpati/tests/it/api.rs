//! The management API: create, read, update, delete, paginate; the event log; the admin
//! token rule; health.

use serde_json::{json, Value};

use crate::helpers::*;

async fn walk(app: &TestApp, key: &str, list: &str, limit: usize) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("{list}?limit={limit}&cursor={c}"),
            None => format!("{list}?limit={limit}"),
        };
        let (status, page) = app.get(&path, key).await;
        assert_eq!(status, 200, "{page}");
        let data = page["data"].as_array().unwrap();
        assert!(data.len() <= limit);
        ids.extend(data.iter().map(|d| d["id"].as_str().unwrap().to_string()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return ids,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_are_created_read_updated_and_deleted() {
    let app = TestApp::spawn().await;
    let m = app.merchant("m1").await;

    // Generated ids carry their kind.
    let b = app
        .ok_post("/v1/businesses", &m.key, json!({"name": "Toko"}), 201)
        .await;
    let biz = b["id"].as_str().unwrap();
    assert!(biz.starts_with("biz_"), "{b}");
    let (_, b) = app
        .patch(
            &format!("/v1/businesses/{biz}"),
            &m.key,
            json!({"name": "Toko Baru"}),
        )
        .await;
    assert_eq!(b["name"], "Toko Baru");

    let ch = app
        .ok_post(
            "/v1/channels",
            &m.key,
            json!({"name": "Telegram", "engine": "telegram", "business_id": biz, "backup_channel_id": "ch"}),
            201,
        )
        .await;
    let ch_id = ch["id"].as_str().unwrap();
    assert_eq!(ch["backup_channel_id"], "ch");
    let (status, ch) = app
        .patch(
            &format!("/v1/channels/{ch_id}"),
            &m.key,
            json!({"backup_channel_id": null, "engine": "slack"}),
        )
        .await;
    assert_eq!(status, 200, "{ch}");
    assert!(ch["backup_channel_id"].is_null());
    assert_eq!(ch["engine"], "slack");
    let (status, _) = app
        .patch(
            &format!("/v1/channels/{ch_id}"),
            &m.key,
            json!({"backup_channel_id": ch_id}),
        )
        .await;
    assert_eq!(status, 422, "a channel is not its own backup");

    let dev = app
        .ok_post(
            "/v1/devices",
            &m.key,
            json!({"name": "Phone", "channel_id": ch_id}),
            201,
        )
        .await;
    let dev_id = dev["id"].as_str().unwrap();
    assert!(dev["token"].as_str().unwrap().starts_with("mdt_"));
    assert_eq!(dev["status"], "unknown");
    let (_, read) = app.get(&format!("/v1/devices/{dev_id}"), &m.key).await;
    assert!(read.get("token").is_none(), "the token is shown only once");
    let (_, d) = app
        .patch(
            &format!("/v1/devices/{dev_id}"),
            &m.key,
            json!({"phone": "+62 811", "channel_id": "ch"}),
        )
        .await;
    assert_eq!(
        (d["phone"].as_str(), d["channel_id"].as_str()),
        (Some("+62 811"), Some("ch"))
    );

    // Parents cannot go while children remain.
    let (status, err) = app.delete("/v1/businesses/biz", &m.key).await;
    assert_eq!(status, 409, "{err}");
    let (status, _) = app.delete("/v1/channels/ch", &m.key).await;
    assert_eq!(status, 409);
    assert_eq!(
        app.delete(&format!("/v1/devices/{dev_id}"), &m.key).await.0,
        204
    );
    assert_eq!(
        app.delete(&format!("/v1/channels/{ch_id}"), &m.key).await.0,
        204
    );
    assert_eq!(
        app.delete(&format!("/v1/businesses/{biz}"), &m.key).await.0,
        204
    );
    assert_eq!(
        app.get(&format!("/v1/businesses/{biz}"), &m.key).await.0,
        404
    );

    // Endpoints: defaults, patch, secret not shown again.
    let ep = app
        .ok_post(
            "/v1/endpoints",
            &m.key,
            json!({"url": "https://example.com/hook"}),
            201,
        )
        .await;
    assert!(ep["secret"].as_str().unwrap().starts_with("whsec_"));
    assert_eq!(ep["format"], "json");
    assert!(ep["events"].is_null());
    let ep_id = ep["id"].as_str().unwrap();
    let (_, ep) = app
        .patch(
            &format!("/v1/endpoints/{ep_id}"),
            &m.key,
            json!({"events": ["device.*", "sms"], "format": "form", "description": "ops"}),
        )
        .await;
    assert_eq!(ep["events"], json!(["device.*", "sms"]));
    assert_eq!(ep["format"], "form");
    assert!(ep.get("secret").is_none());
    let (_, ep) = app
        .patch(
            &format!("/v1/endpoints/{ep_id}"),
            &m.key,
            json!({"events": null}),
        )
        .await;
    assert!(ep["events"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_paginate_with_cursors() {
    let app = TestApp::spawn().await;
    let m = app.merchant("m1").await;
    for i in 0..6 {
        app.ok_post(
            "/v1/businesses",
            &m.key,
            json!({"id": format!("b{i}"), "name": "x"}),
            201,
        )
        .await;
    }
    let ids = walk(&app, &m.key, "/v1/businesses", 4).await;
    assert_eq!(ids, ["b0", "b1", "b2", "b3", "b4", "b5", "biz"]);
    let ids = walk(&app, &m.key, "/v1/businesses", 7).await;
    assert_eq!(ids.len(), 7);

    for i in 0..5 {
        app.sms(&m.device_token, i).await;
    }
    app.ok_post(
        "/v1/device/status",
        &m.device_token,
        json!({"status": "connected"}),
        202,
    )
    .await;
    let all = walk(&app, &m.key, "/v1/events", 2).await;
    assert_eq!(all.len(), 6);
    let (_, newest) = app.get("/v1/events?limit=1", &m.key).await;
    assert_eq!(
        newest["data"][0]["type"], "device.connected",
        "newest first"
    );
    let (_, sms) = app.get("/v1/events?type=sms&limit=10", &m.key).await;
    assert_eq!(sms["data"].as_array().unwrap().len(), 5);
    let (_, none) = app.get("/v1/events?device_id=other", &m.key).await;
    assert_eq!(none["data"], json!([]));
    let (_, mine) = app
        .get("/v1/events?device_id=dev&type=device.connected", &m.key)
        .await;
    assert_eq!(mine["data"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_are_managed_by_the_admin() {
    let app = TestApp::spawn().await;
    let m = app.merchant("m1").await;
    let acct = app
        .ok_post("/v1/accounts", ADMIN, json!({"name": "Generated"}), 201)
        .await;
    assert!(acct["id"].as_str().unwrap().starts_with("acct_"));
    let (status, _) = app
        .post("/v1/accounts", ADMIN, json!({"id": "m1", "name": "dup"}))
        .await;
    assert_eq!(status, 409);
    let (_, a) = app
        .patch("/v1/accounts/m1", ADMIN, json!({"name": "Renamed"}))
        .await;
    assert_eq!(a["name"], "Renamed");
    let (_, list) = app.get("/v1/accounts", ADMIN).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 2);
    assert_eq!(
        app.post("/v1/accounts/nobody/api-keys", ADMIN, json!({}))
            .await
            .0,
        404
    );

    // The payloads carry the name of the moment.
    let receiver = Receiver::start().await;
    app.endpoint(&m.key, &receiver, json!({"events": ["device.*"]}))
        .await;
    app.ok_post(
        "/v1/device/status",
        &m.device_token,
        json!({"status": "connected"}),
        202,
    )
    .await;
    let got = receiver.wait_for(1).await;
    assert_eq!(
        got[0].json()["device"]["user"],
        json!({"id": "m1", "name": "Renamed"})
    );

    // Deleting an account deletes everything it owns; its keys and tokens stop working.
    assert_eq!(app.delete("/v1/accounts/m1", ADMIN).await.0, 204);
    assert_eq!(app.get("/v1/accounts/m1", ADMIN).await.0, 404);
    assert_eq!(app.get("/v1/businesses", &m.key).await.0, 401);
    let (status, _) = app
        .post(
            "/v1/device/status",
            &m.device_token,
            json!({"status": "connected"}),
        )
        .await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_status_reports_alternate_and_carry_reasons() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start().await;
    let m = app.merchant_on("m1", "wa").await;
    // Reports a moment apart may be delivered in any order unless the endpoint asks for
    // the device's order.
    app.endpoint(
        &m.key,
        &receiver,
        json!({"ordering": "device", "events": ["device.*"]}),
    )
    .await;
    let report = |status: &'static str| {
        let app = &app;
        let token = m.device_token.clone();
        async move {
            app.ok_post(
                "/v1/device/status",
                &token,
                json!({"status": status, "reason": "engine says so"}),
                202,
            )
            .await
        }
    };
    let first = report("connected").await;
    assert!(first["event_id"].is_string());
    assert!(report("connected").await["event_id"].is_null(), "no repeat");
    let down = report("logged_out").await;
    assert_eq!(down["status"], "disconnected");
    assert!(
        report("disconnected").await["event_id"].is_null(),
        "already down"
    );
    report("connected").await;
    let got = receiver.wait_for(3).await;
    let bodies: Vec<Value> = got.iter().map(|r| r.json()).collect();
    assert_eq!(bodies[0]["status"], "connected");
    assert!(bodies[0].get("offline_seconds").is_none());
    assert_eq!(bodies[1]["status"], "disconnected");
    assert_eq!(bodies[1]["reason"], "logged_out");
    assert_eq!(bodies[2]["status"], "connected");
    assert!(bodies[2]["offline_seconds"].as_i64().unwrap() >= 0);
    let (_, device) = app.get("/v1/devices/dev", &m.key).await;
    assert_eq!(device["status"], "connected");
    assert!(device["status_since"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_configured_admin_token_one_is_made_and_kept() {
    let app = TestApp::spawn_with(&[("admin_token", "")]).await;
    let stored = std::fs::read_to_string(app.data_dir.join("admin-token")).unwrap();
    assert!(stored.starts_with("mat_"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(app.data_dir.join("admin-token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "only the owner may read it");
    }
    assert_eq!(app.get("/v1/accounts", &stored).await.0, 200);
    assert_eq!(app.get("/v1/accounts", ADMIN).await.0, 401);
    // The same token after a restart, and it is not printed again.
    let app = app.restart().await;
    assert_eq!(app.get("/v1/accounts", &stored).await.0, 200);
    assert_eq!(
        std::fs::read_to_string(app.data_dir.join("admin-token")).unwrap(),
        stored
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness() {
    let app = TestApp::spawn().await;
    let (status, body) = app
        .request(reqwest::Method::GET, "/healthz", None, None)
        .await;
    assert_eq!(
        (status.as_u16(), body["status"].as_str()),
        (200, Some("ok"))
    );
    let (status, body) = app
        .request(reqwest::Method::GET, "/readyz", None, None)
        .await;
    assert_eq!(
        (status.as_u16(), body["status"].as_str()),
        (200, Some("ready"))
    );
}

/// The real binary on a data directory it makes: the directory is its owner's alone, so
/// are the database and its log files (they hold endpoints' secrets) and the generated
/// admin token's file; the log says where the token is, never what it is.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_is_private_and_the_log_never_shows_the_admin_token() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut child, url, logs) =
        crate::restart::spawn_binary_logged(&data, &[("MERPATI_ADMIN_TOKEN", "")]).await;
    let token = std::fs::read_to_string(data.join("admin-token")).unwrap();
    let app = TestApp::at(url);
    // Some secrets into the database and its log.
    let key = app
        .ok_post("/v1/accounts", &token, json!({"id": "a", "name": "A"}), 201)
        .await;
    assert_eq!(key["id"], "a");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700, "the data directory");
    for file in [
        "merpati.db",
        "merpati.db-wal",
        "merpati.db-shm",
        "admin-token",
    ] {
        assert_eq!(mode(&data.join(file)), 0o600, "{file}");
    }
    crate::restart::stop_gracefully(&mut child).await;
    let logged = logs.lock().unwrap().join("\n");
    assert!(!logged.contains(token.trim()), "the token is in the log");
    assert!(
        logged.contains("admin-token"),
        "the log says where the token is"
    );
}
