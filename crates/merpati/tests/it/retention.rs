//! Background deletion. Retention prunes old events with everything hanging off them,
//! except those still owed to an endpoint; a deleted endpoint is gone from every view at once
//! and its deliveries and attempts are purged after, also across a restart.

use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

/// On PostgreSQL the log is kept in parts of `retention.part_span`: with a minute's, the
/// events are in a part closed before they are an hour old, and retention gets to them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_events_are_pruned_unless_still_owed() {
    let app = TestApp::spawn_manual(&[
        ("retention.max_age", "1h"),
        ("retention.interval", "50ms"),
        ("retention.part_span", "1m"),
    ])
    .await;
    let (live, off) = (Receiver::start().await, Receiver::start().await);
    let m = app.merchant("m1").await;
    app.endpoint(&m.key, &live, json!({"events": ["sms"]}))
        .await;
    app.endpoint(&m.key, &off, json!({"events": ["ussd"], "disabled": true}))
        .await;
    let delivered = app.sms(&m.device_token, 1).await["items"][0]["event_id"]
        .as_str()
        .unwrap()
        .to_string();
    let owed = app
        .ok_post(
            "/v1/device/messages",
            &m.device_token,
            json!({"type": "ussd", "rid": 2, "code": "*1#", "response": "r"}),
            202,
        )
        .await["items"][0]["event_id"]
        .as_str()
        .unwrap()
        .to_string();
    app.settled_event(&m.key, &delivered).await;

    // Young: kept.
    app.advance(30 * 60_000).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        app.get(&format!("/v1/events/{delivered}"), &m.key).await.0,
        200
    );

    // Old: the delivered one goes, the one held for a disabled endpoint stays.
    app.advance(31 * 60_000).await;
    let deadline = std::time::Instant::now() + PATIENCE;
    while app.get(&format!("/v1/events/{delivered}"), &m.key).await.0 != 404 {
        assert!(std::time::Instant::now() < deadline, "never pruned");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, kept) = app.get(&format!("/v1/events/{owed}"), &m.key).await;
    assert_eq!(status, 200);
    assert_eq!(kept["deliveries"][0]["status"], "held");
    // The dedup record went with it: the same rid is a new item now.
    let again = app.sms(&m.device_token, 1).await;
    assert_ne!(again["items"][0]["event_id"], delivered.as_str());
}

/// Rows of the server's database, read beside it.
fn rows(app: &TestApp, sql: &str) -> i64 {
    RawDatabase::of(app).scalar(sql)
}

/// Writes to the server's database beside it, so that nothing in the server (the pruner,
/// say) hears of the change.
fn behind_its_back(app: &TestApp, sql: &str) {
    assert_eq!(RawDatabase::of(app).execute(sql), 1, "{sql}");
}

/// `field` of each object in a JSON list.
fn each<'a>(list: &'a serde_json::Value, field: &str) -> Vec<&'a str> {
    let items = list.as_array().unwrap().iter();
    items.map(|item| item[field].as_str().unwrap()).collect()
}

/// Waits until `sql` counts nothing.
async fn until_none(app: &TestApp, sql: &str) {
    let deadline = std::time::Instant::now() + PATIENCE;
    while rows(app, sql) != 0 {
        assert!(std::time::Instant::now() < deadline, "still there: {sql}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_endpoint_is_gone_at_once_and_its_rows_after() {
    let app = TestApp::spawn().await;
    let (gone, kept) = (Receiver::start().await, Receiver::start().await);
    let m = app.merchant("m1").await;
    let ep = app.endpoint(&m.key, &gone, json!({})).await;
    let other = app.endpoint(&m.key, &kept, json!({})).await;
    let event_id = app.sms(&m.device_token, 1).await["items"][0]["event_id"]
        .as_str()
        .unwrap()
        .to_string();
    let event = app.settled_event(&m.key, &event_id).await;
    let delivery = event["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["endpoint_id"] == ep.as_str())
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    let job = app
        .ok_post(
            &format!("/v1/endpoints/{ep}/recover"),
            &m.key,
            json!({"since": "2020-01-01T00:00:00Z"}),
            202,
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();

    let path = format!("/v1/endpoints/{ep}");
    assert_eq!(app.delete(&path, &m.key).await.0, 204);
    // Gone from every view and every action at once.
    assert_eq!(app.delete(&path, &m.key).await.0, 404, "deleted once");
    assert_eq!(app.get(&path, &m.key).await.0, 404);
    assert_eq!(
        app.patch(&path, &m.key, json!({"disabled": false})).await.0,
        404
    );
    let (_, list) = app.get("/v1/endpoints", &m.key).await;
    assert_eq!(each(&list["data"], "id"), [other.as_str()]);
    let actions = [
        format!("{path}/secret/rotate"),
        format!("{path}/recover"),
        format!("/v1/deliveries/{delivery}/resend"),
    ];
    for action in actions {
        let body = json!({"since": "2020-01-01T00:00:00Z"});
        let body = if action.ends_with("recover") {
            body
        } else {
            json!({})
        };
        assert_eq!(app.post(&action, &m.key, body).await.0, 404, "{action}");
    }
    let replay = format!("/v1/events/{event_id}/replay");
    let (status, _) = app.post(&replay, &m.key, json!({"endpoint_id": ep})).await;
    assert_eq!(status, 404);
    assert_eq!(app.get(&format!("/v1/jobs/{job}"), &m.key).await.0, 404);
    let (_, event) = app.get(&format!("/v1/events/{event_id}"), &m.key).await;
    assert_eq!(each(&event["deliveries"], "endpoint_id"), [other.as_str()]);

    // It gets nothing new; the other endpoint does.
    let second = app.sms(&m.device_token, 2).await;
    kept.wait_for(2).await;
    assert_eq!(gone.received().len(), 1);
    // Recorded, so that its attempt is counted below.
    let second = second["items"][0]["event_id"].as_str().unwrap();
    app.settled_event(&m.key, second).await;

    // Its rows go in the background, the other endpoint's stay.
    until_none(
        &app,
        &format!("SELECT COUNT(*) FROM endpoints WHERE id = '{ep}'"),
    )
    .await;
    assert_eq!(
        rows(
            &app,
            &format!("SELECT COUNT(*) FROM deliveries WHERE endpoint_id = '{ep}'")
        ),
        0
    );
    assert_eq!(
        rows(
            &app,
            &format!("SELECT COUNT(*) FROM jobs WHERE id = '{job}'")
        ),
        0
    );
    assert_eq!(
        rows(
            &app,
            &format!("SELECT COUNT(*) FROM deliveries WHERE endpoint_id = '{other}'")
        ),
        2
    );
    assert_eq!(
        rows(&app, "SELECT COUNT(*) FROM attempts"),
        2,
        "the other's attempts"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_a_restart_interrupted_is_taken_up_at_the_next_start() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start().await;
    let m = app.merchant("m1").await;
    let ep = app.endpoint(&m.key, &receiver, json!({})).await;
    for rid in 1..=3 {
        app.sms(&m.device_token, rid).await;
    }
    for got in receiver.wait_for(3).await {
        app.settled_event(&m.key, got.header("webhook-id")).await;
    }
    // What a deletion leaves when the server stops before its rows went: the mark alone.
    behind_its_back(
        &app,
        &format!("UPDATE endpoints SET deleted_at = 1, disabled = TRUE WHERE id = '{ep}'"),
    );
    let app = app.restart().await;
    until_none(
        &app,
        &format!("SELECT COUNT(*) FROM endpoints WHERE id = '{ep}'"),
    )
    .await;
    assert_eq!(rows(&app, "SELECT COUNT(*) FROM deliveries"), 0);
    assert_eq!(rows(&app, "SELECT COUNT(*) FROM attempts"), 0);
    assert_eq!(app.event_count(&m.key).await, 3, "the events stay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_account_is_gone_at_once_and_its_events_after() {
    let app = TestApp::spawn().await;
    let (theirs, others) = (Receiver::start().await, Receiver::start().await);
    let m = app.merchant("m1").await;
    let ep = app.endpoint(&m.key, &theirs, json!({})).await;
    let other = app.merchant("m2").await;
    app.endpoint(&other.key, &others, json!({})).await;
    for rid in 1..=3 {
        app.sms(&m.device_token, rid).await;
    }
    let others_event = app.sms(&other.device_token, 1).await["items"][0]["event_id"]
        .as_str()
        .unwrap()
        .to_string();
    for got in theirs.wait_for(3).await {
        app.settled_event(&m.key, got.header("webhook-id")).await;
    }
    others.wait_for(1).await;
    app.settled_event(&other.key, &others_event).await;

    assert_eq!(app.delete("/v1/accounts/m1", ADMIN).await.0, 204);
    // Gone from every view at once; nothing of it lets anyone in.
    assert_eq!(
        app.delete("/v1/accounts/m1", ADMIN).await.0,
        404,
        "deleted once"
    );
    assert_eq!(app.get("/v1/accounts/m1", ADMIN).await.0, 404);
    let renamed = app
        .patch("/v1/accounts/m1", ADMIN, json!({"name": "x"}))
        .await;
    assert_eq!(renamed.0, 404);
    assert_eq!(app.get("/v1/accounts/m1/api-keys", ADMIN).await.0, 404);
    assert_eq!(
        app.post("/v1/accounts/m1/api-keys", ADMIN, json!({}))
            .await
            .0,
        404
    );
    let (_, list) = app.get("/v1/accounts", ADMIN).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert_eq!(list["data"][0]["id"], "m2");
    assert_eq!(app.get("/v1/events", &m.key).await.0, 401);
    let sent = app
        .post(
            "/v1/device/messages",
            &m.device_token,
            json!({"type": "sms", "rid": 9, "phone": "+639760713666", "message": "late"}),
        )
        .await;
    assert_eq!(sent.0, 401);

    // Its rows go in the background; the other account's stay.
    until_none(&app, "SELECT COUNT(*) FROM accounts WHERE id = 'm1'").await;
    for table in ["events", "devices", "endpoints", "api_keys"] {
        let sql = format!("SELECT COUNT(*) FROM {table} WHERE account_id = 'm1'");
        assert_eq!(rows(&app, &sql), 0, "{table}");
    }
    let sql = format!("SELECT COUNT(*) FROM deliveries WHERE endpoint_id = '{ep}'");
    assert_eq!(rows(&app, &sql), 0);
    assert_eq!(rows(&app, "SELECT COUNT(*) FROM attempts"), 1, "m2's");
    assert_eq!(app.event_count(&other.key).await, 1);
    // The id is free again.
    let again = app
        .post("/v1/accounts", ADMIN, json!({"id": "m1", "name": "Again"}))
        .await;
    assert_eq!(again.0, 201, "{}", again.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_still_being_purged_keeps_its_id_until_it_is_gone() {
    let app = TestApp::spawn().await;
    let m = app.merchant("m1").await;
    app.sms(&m.device_token, 1).await;
    // The mark alone, as a restart mid-purge leaves it.
    behind_its_back(&app, "UPDATE accounts SET deleted_at = 1 WHERE id = 'm1'");
    let (status, body) = app
        .post("/v1/accounts", ADMIN, json!({"id": "m1", "name": "Again"}))
        .await;
    assert_eq!(status, 409);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("still being deleted"),
        "{body}"
    );
    let app = app.restart().await;
    until_none(&app, "SELECT COUNT(*) FROM accounts WHERE id = 'm1'").await;
    assert_eq!(rows(&app, "SELECT COUNT(*) FROM events"), 0);
    let again = app
        .post("/v1/accounts", ADMIN, json!({"id": "m1", "name": "Again"}))
        .await;
    assert_eq!(again.0, 201, "{}", again.1);
}
