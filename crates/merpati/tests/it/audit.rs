//! The audit trail: every change made through the API, by a key, the admin or a dashboard
//! session, with the address, the route, the object and the fields' names, never a value;
//! not the refused ones, not the reads, not the devices' posts; each account sees its own;
//! retention removes old entries.

use serde_json::{json, Value};

use crate::dashboard::{csrf_of, Browser};
use crate::helpers::*;

async fn trail(app: &TestApp, path: &str, token: &str) -> Vec<Value> {
    let (status, body) = app.get(path, token).await;
    assert_eq!(status, 200, "{body}");
    body["data"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_is_recorded_with_who_where_and_what_and_never_a_value() {
    let app = TestApp::spawn().await;
    let m = app.merchant("acct").await;
    let other = app.merchant("other").await;
    let receiver = Receiver::start().await;
    let (_, listed) = app.get("/v1/accounts/acct/api-keys", ADMIN).await;
    let key_id = listed["data"][0]["id"].as_str().unwrap().to_string();

    let endpoint = app
        .endpoint(&m.key, &receiver, json!({"description": "d"}))
        .await;
    // The scheme's name in any case the API takes: a change recorded all the same.
    let answer = app
        .client
        .patch(format!("{}/v1/endpoints/{endpoint}", app.url))
        .header("authorization", format!("bearer {}", m.key))
        .json(&json!({"description": "e"}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    const ROTATED: &str = "whsec_Zm9vYmFyYmF6cXV4cXV1eHF1dXhxdXV4cXV1";
    let (status, _) = app
        .post(
            &format!("/v1/endpoints/{endpoint}/secret/rotate"),
            &m.key,
            json!({"secret": ROTATED}),
        )
        .await;
    assert!(status.is_success());
    // Refused, read, or posted by a device: not changes.
    let (status, _) = app
        .post("/v1/endpoints", &m.key, json!({"url": "nope"}))
        .await;
    assert_eq!(status, 422);
    app.get("/v1/endpoints", &m.key).await;
    app.sms(&m.device_token, 1).await;
    // A dashboard session's change.
    let mut b = Browser::new(&app);
    b.sign_in(&m.key).await;
    let page = b.get(&format!("/endpoints/{endpoint}")).await;
    let csrf = csrf_of(&page.body);
    b.post(
        &format!("/endpoints/{endpoint}/disable"),
        &[("_csrf", &csrf)],
    )
    .await;

    let entries = trail(&app, "/v1/audit-log", &m.key).await;
    let shown = serde_json::to_string(&entries).unwrap();
    for secret in [SECRET, ROTATED, m.key.as_str(), ADMIN] {
        assert!(!shown.contains(secret), "the trail shows a secret: {shown}");
    }
    let routes: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| (e["method"].as_str().unwrap(), e["route"].as_str().unwrap()))
        .collect();
    assert_eq!(
        routes[..4],
        [
            ("PATCH", "/v1/endpoints/{id}"),
            ("POST", "/v1/endpoints/{id}/secret/rotate"),
            ("PATCH", "/v1/endpoints/{id}"),
            ("POST", "/v1/endpoints"),
        ],
        "{shown}"
    );
    let by_dashboard = &entries[0];
    assert_eq!(by_dashboard["actor"], format!("dashboard:{key_id}"));
    assert_eq!(by_dashboard["address"], "127.0.0.1", "the browser's");
    assert_eq!(by_dashboard["fields"], json!(["disabled"]));
    let rotate = &entries[1];
    assert_eq!(rotate["actor"], format!("api_key:{key_id}"));
    assert_eq!(rotate["address"], "127.0.0.1");
    assert_eq!(rotate["object_id"], endpoint);
    assert_eq!(rotate["fields"], json!(["secret"]));
    assert_eq!(rotate["account_id"], "acct");
    let created = &entries[3];
    assert_eq!(created["object_id"], endpoint, "the object a creation made");
    assert_eq!(created["fields"], json!(["description", "secret", "url"]));
    // The merchant's own setup, and the admin's account and key, are there too.
    assert!(routes.contains(&("POST", "/v1/devices")));
    let admin_view = trail(&app, "/v1/accounts/acct/audit-log", ADMIN).await;
    let by_admin: Vec<&Value> = admin_view
        .iter()
        .filter(|e| e["actor"] == "admin")
        .collect();
    let admin_routes: Vec<&str> = by_admin
        .iter()
        .map(|e| e["route"].as_str().unwrap())
        .collect();
    assert_eq!(
        admin_routes,
        ["/v1/accounts/{id}/api-keys", "/v1/accounts"],
        "{admin_view:?}"
    );
    assert_eq!(by_admin[1]["object_id"], "acct");
    assert_eq!(admin_view.len(), entries.len());

    // Another account's trail holds none of it.
    let theirs = trail(&app, "/v1/audit-log", &other.key).await;
    assert!(theirs.iter().all(|e| e["account_id"] == "other"));
    assert!(!serde_json::to_string(&theirs).unwrap().contains(&endpoint));

    // Pages, newest first.
    let first = app.get("/v1/audit-log?limit=2", &m.key).await.1;
    let cursor = first["next_cursor"].as_str().unwrap();
    let next = trail(
        &app,
        &format!("/v1/audit-log?limit=2&cursor={cursor}"),
        &m.key,
    )
    .await;
    assert_eq!(next[0]["id"], entries[2]["id"]);
    let (status, _) = app.get("/v1/audit-log?cursor=garbage", &m.key).await;
    assert_eq!(status, 422);
    let (status, _) = app.get("/v1/audit-log?limit=0", &m.key).await;
    assert_eq!(status, 422);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_old_entries() {
    let app = TestApp::spawn_manual(&[
        ("retention.audit_log", "1h"),
        ("retention.interval", "100ms"),
    ])
    .await;
    let m = app.merchant("acct").await;
    assert!(!trail(&app, "/v1/audit-log", &m.key).await.is_empty());
    app.advance(2 * 3_600_000).await;
    app.ok_post(
        "/v1/businesses",
        &m.key,
        json!({"id": "b2", "name": "B2"}),
        201,
    )
    .await;
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let entries = trail(&app, "/v1/audit-log", &m.key).await;
        if entries.len() == 1 {
            assert_eq!(entries[0]["object_id"], "b2");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} entries left",
            entries.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_the_client_s_address_is_recorded() {
    for (trusted, expected) in [("", "127.0.0.1"), ("127.0.0.0/8", "203.0.113.9")] {
        let settings: Vec<(&str, &str)> = if trusted.is_empty() {
            vec![]
        } else {
            vec![("server.trusted_proxies", trusted)]
        };
        let app = TestApp::spawn_with(&settings).await;
        let m = app.merchant("acct").await;
        let answer = app
            .client
            .post(format!("{}/v1/businesses", app.url))
            .bearer_auth(&m.key)
            .header("x-forwarded-for", "203.0.113.9")
            .json(&json!({"id": "b2", "name": "B2"}))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 201);
        let entries = trail(&app, "/v1/audit-log", &m.key).await;
        assert_eq!(entries[0]["object_id"], "b2");
        assert_eq!(entries[0]["address"], expected, "trusting {trusted:?}");
    }
}
