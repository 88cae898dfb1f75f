//! Accounts never see, touch or reference one another's resources: 404 (never 403, never
//! the data) on every route, and ids are per account.

use serde_json::json;

use crate::helpers::*;

/// A business `biz_a`, channel `ch_a` and device `dev_a`: ids only A has.
async fn own_tree(app: &TestApp, a: &Merchant) {
    app.ok_post(
        "/v1/businesses",
        &a.key,
        json!({"id": "biz_a", "name": "A"}),
        201,
    )
    .await;
    app.ok_post(
        "/v1/channels",
        &a.key,
        json!({"id": "ch_a", "name": "A", "engine": "wa", "business_id": "biz_a"}),
        201,
    )
    .await;
    app.device(&a.key, "dev_a", "ch_a").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_accounts_resources_are_not_found_on_every_route() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start().await;
    let a = app.merchant("a").await;
    let b = app.merchant("b").await;
    own_tree(&app, &a).await;
    let ep = app.endpoint(&a.key, &receiver, json!({})).await;
    let event_id = app.sms(&a.device_token, 1).await["items"][0]["event_id"]
        .as_str()
        .unwrap()
        .to_string();

    let paths = [
        "/v1/businesses/biz_a".to_string(),
        "/v1/channels/ch_a".to_string(),
        "/v1/devices/dev_a".to_string(),
        format!("/v1/endpoints/{ep}"),
        format!("/v1/events/{event_id}"),
    ];
    for path in &paths {
        let (status, body) = app.get(path, &b.key).await;
        assert_eq!(status, 404, "GET {path}: {body}");
        assert_eq!(body["error"]["code"], "not_found");
        assert!(!body.to_string().contains("biz_a\""), "{body}");
        let patch = if path.contains("endpoints") {
            json!({"description": "stolen"})
        } else {
            json!({"name": "stolen"})
        };
        let (status, _) = app.patch(path, &b.key, patch).await;
        assert!(status == 404 || status == 405, "PATCH {path}: {status}");
        if !path.starts_with("/v1/events") {
            let (status, _) = app.delete(path, &b.key).await;
            assert_eq!(status, 404, "DELETE {path}");
        }
    }
    for path in [
        format!("/v1/events/{event_id}/replay"),
        format!("/v1/endpoints/{ep}/secret/rotate"),
        "/v1/devices/dev_a/token".to_string(),
    ] {
        let (status, _) = app.post(&path, &b.key, json!({})).await;
        assert_eq!(status, 404, "POST {path}");
    }
    let (status, _) = app
        .post(
            &format!("/v1/events/{event_id}/replay"),
            &a.key,
            json!({"endpoint_id": "ep_of_nobody"}),
        )
        .await;
    assert_eq!(status, 404);

    // Lists show only one's own.
    for list in [
        "/v1/businesses",
        "/v1/channels",
        "/v1/devices",
        "/v1/endpoints",
        "/v1/events",
    ] {
        let (_, body) = app.get(list, &b.key).await;
        let text = body.to_string();
        assert!(
            !text.contains("_a\"") && !text.contains(&ep),
            "{list}: {text}"
        );
    }
    // Everything of A is still there.
    for path in &paths {
        assert_eq!(app.get(path, &a.key).await.0, 200, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn references_to_another_accounts_resources_are_refused() {
    let app = TestApp::spawn().await;
    let a = app.merchant("a").await;
    let b = app.merchant("b").await;
    own_tree(&app, &a).await;
    for (path, body) in [
        (
            "/v1/channels",
            json!({"name": "x", "engine": "wa", "business_id": "biz_a"}),
        ),
        (
            "/v1/channels",
            json!({"name": "x", "engine": "wa", "business_id": "biz", "backup_channel_id": "ch_a"}),
        ),
        ("/v1/devices", json!({"name": "x", "channel_id": "ch_a"})),
        (
            "/v1/endpoints",
            json!({"url": "https://example.com/", "business_ids": ["biz_a"]}),
        ),
        (
            "/v1/endpoints",
            json!({"url": "https://example.com/", "channel_ids": ["ch_a"]}),
        ),
        (
            "/v1/endpoints",
            json!({"url": "https://example.com/", "device_ids": ["dev_a"]}),
        ),
    ] {
        let (status, err) = app.post(path, &b.key, body.clone()).await;
        assert_eq!(status, 422, "{path} {body}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_are_per_account_and_events_stay_inside_their_account() {
    let app = TestApp::spawn().await;
    let (ra, rb) = (Receiver::start().await, Receiver::start().await);
    // Both merchants use the same ids "biz", "ch", "dev" without clashing.
    let a = app.merchant("a").await;
    let b = app.merchant("b").await;
    app.endpoint(&a.key, &ra, json!({})).await;
    app.endpoint(&b.key, &rb, json!({"device_ids": ["dev"]}))
        .await;
    app.sms(&a.device_token, 1).await;
    app.sms(&a.device_token, 2).await;
    app.sms(&b.device_token, 1).await;
    ra.wait_for(2).await;
    let got_b = rb.wait_for(1).await;
    assert_eq!(app.event_count(&a.key).await, 2);
    assert_eq!(app.event_count(&b.key).await, 1);
    let ev = got_b[0].json();
    assert_eq!(ev["data"]["device"], "dev");
    assert_eq!(ra.received().len(), 2);
    assert_eq!(rb.received().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_only_open_their_own_door() {
    let app = TestApp::spawn().await;
    let a = app.merchant("a").await;
    // An API key is not an admin token, a device token not an API key, and so on.
    let (status, _) = app.get("/v1/accounts", &a.key).await;
    assert_eq!(status, 401);
    let (status, _) = app.get("/v1/businesses", &a.device_token).await;
    assert_eq!(status, 401);
    let (status, _) = app.get("/v1/businesses", ADMIN).await;
    assert_eq!(status, 401);
    let (status, _) = app
        .post(
            "/v1/device/messages",
            &a.key,
            json!({"type": "sms", "rid": 1, "phone": "+1", "message": "m"}),
        )
        .await;
    assert_eq!(status, 401);
}
