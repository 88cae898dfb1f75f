//! Bad input to the alert routes: each a clear 4xx naming what is wrong, and nothing
//! half-written.

use serde_json::{json, Value};

use crate::alerts::{rig, Rig};
use crate::helpers::*;

async fn refused(app: &TestApp, path: &str, key: &str, body: Value, status: u16, says: &str) {
    let (got, v) = app.post(path, key, body.clone()).await;
    assert_eq!(got.as_u16(), status, "POST {path} {body}: {v}");
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(says),
        "POST {path} {body}: {message:?} should say {says:?}"
    );
}

async fn count(app: &TestApp, path: &str, key: &str) -> usize {
    let (status, v) = app.get(path, key).await;
    assert_eq!(status, 200, "{v}");
    v["data"].as_array().unwrap().len()
}

async fn other_account(app: &TestApp) -> String {
    let m = app.merchant_on("m2", "wa").await;
    app.ok_post(
        "/v1/channels",
        &m.key,
        json!({"id": "theirs", "name": "Theirs", "engine": "wa", "business_id": "biz"}),
        201,
    )
    .await;
    m.key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rules_are_refused_and_nothing_is_written() {
    let Rig { app, key, .. } = rig("wa", &[]).await;
    other_account(&app).await;
    let rules = "/v1/alert-rules";
    refused(
        &app,
        rules,
        &key,
        json!({"down_after": "-5m"}),
        422,
        "down_after",
    )
    .await;
    refused(
        &app,
        rules,
        &key,
        json!({"down_after": "30d"}),
        422,
        "at most 7 days",
    )
    .await;
    refused(
        &app,
        rules,
        &key,
        json!({"down_after": "soon"}),
        422,
        "duration",
    )
    .await;
    refused(
        &app,
        rules,
        &key,
        json!({"repeat_every": "1m"}),
        422,
        "at least 5m",
    )
    .await;
    refused(
        &app,
        rules,
        &key,
        json!({"severity": "urgent"}),
        422,
        "severity",
    )
    .await;
    refused(
        &app,
        rules,
        &key,
        json!({"notifiers": ["nope"]}),
        422,
        "no notifier \"nope\"",
    )
    .await;
    refused(
        &app,
        rules,
        &key,
        json!({"escalation": [{"after": "10m", "notifiers": ["team-slack"]}, {"after": "5m", "notifiers": ["team-slack"]}]}),
        422,
        "after the step before",
    )
    .await;
    refused(
        &app,
        rules,
        &key,
        json!({"escalation": [{"after": "10m", "notifiers": []}]}),
        422,
        "at least one notifier",
    )
    .await;
    refused(
        &app,
        rules,
        &key,
        json!({"match": {"channel_id": "theirs"}}),
        422,
        "no channel \"theirs\"",
    )
    .await;
    refused(
        &app,
        rules,
        &key,
        json!({"match": {"colour": "red"}}),
        422,
        "colour",
    )
    .await;
    refused(
        &app,
        rules,
        &key,
        json!({"down_afterr": "5m"}),
        422,
        "down_afterr",
    )
    .await;
    assert_eq!(count(&app, rules, &key).await, 0);

    // A PATCH that would make a rule bad changes nothing.
    app.ok_post(rules, &key, json!({"id": "r1", "down_after": "1m"}), 201)
        .await;
    let (status, v) = app
        .patch("/v1/alert-rules/r1", &key, json!({"repeat_every": "30s"}))
        .await;
    assert_eq!(status, 422, "{v}");
    let (_, r1) = app.get("/v1/alert-rules/r1", &key).await;
    assert!(r1.get("repeat_every").is_none(), "{r1}");
    let (status, v) = app
        .patch(
            "/v1/alert-rules/r1",
            &key,
            json!({"down_after": null, "repeat_every": "off"}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert!(v.get("down_after").is_none());
    assert_eq!(v["repeat_every"], "off");
    let (status, _) = app
        .get("/v1/alert-rules/effective?device_id=ghost", &key)
        .await;
    assert_eq!(status, 404);
    let (status, _) = app.get("/v1/alert-rules/effective", &key).await;
    assert_eq!(status, 422);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_notifiers_are_refused_and_nothing_is_written() {
    let Rig { app, key, .. } = rig("wa", &[]).await;
    let n = "/v1/notifiers";
    refused(
        &app,
        n,
        &key,
        json!({"name": "x", "kind": "pager"}),
        422,
        "not a notifier kind",
    )
    .await;
    refused(
        &app,
        n,
        &key,
        json!({"name": "x", "kind": "slack"}),
        422,
        "needs url",
    )
    .await;
    refused(
        &app,
        n,
        &key,
        json!({"name": "x", "kind": "slack", "url": "http://10.1.2.3/hook"}),
        422,
        "url",
    )
    .await;
    refused(
        &app,
        n,
        &key,
        json!({"name": "x", "kind": "webhook", "url": "http://169.254.169.254/latest"}),
        422,
        "url",
    )
    .await;
    refused(
        &app,
        n,
        &key,
        json!({"name": "x", "kind": "telegram", "bot_token": "12345", "chat_id": "1"}),
        422,
        "not a Telegram bot token",
    )
    .await;
    refused(
        &app,
        n,
        &key,
        json!({"name": "x", "kind": "telegram", "bot_token": "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw_", "chat_id": "ops room"}),
        422,
        "chat_id",
    )
    .await;
    refused(
        &app,
        n,
        &key,
        json!({"name": "x", "kind": "email", "to": ["ops@example.com"]}),
        422,
        "e-mail is not set up",
    )
    .await;
    refused(
        &app,
        n,
        &key,
        json!({"name": "x", "kind": "webhook", "url": "https://example.com/h", "secret": "hunter2"}),
        422,
        "secret",
    )
    .await;
    refused(
        &app,
        n,
        &key,
        json!({"name": "x", "kind": "slack", "url": "https://hooks.example.com/x", "bot_token": "1"}),
        422,
        "bot_token is not a setting of a slack notifier",
    )
    .await;
    refused(
        &app,
        n,
        &key,
        json!({"name": "x", "kind": "slack", "url": "https://hooks.example.com/x", "language": "fr"}),
        422,
        "language",
    )
    .await;
    assert_eq!(count(&app, n, &key).await, 1, "only the rig's own");
    // A notifier a rule names cannot be deleted from under it.
    app.ok_post(
        "/v1/alert-rules",
        &key,
        json!({"id": "uses-slack", "notifiers": ["team-slack"]}),
        201,
    )
    .await;
    let (status, v) = app.delete("/v1/notifiers/team-slack", &key).await;
    assert_eq!(status, 409, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("uses-slack"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_windows_are_refused_and_overlapping_ones_are_allowed() {
    let Rig { app, key, .. } = rig("wa", &[]).await;
    let w = "/v1/maintenance-windows";
    let weekly = |days: Value, start: &str, duration: &str, tz: &str| json!({"weekly": {"days": days, "start": start, "duration": duration}, "timezone": tz});
    refused(
        &app,
        w,
        &key,
        weekly(json!(["mon"]), "22:00", "2h", "Mars/Olympus_Mons"),
        422,
        "not an IANA time zone",
    )
    .await;
    refused(
        &app,
        w,
        &key,
        weekly(json!(["someday"]), "22:00", "2h", "UTC"),
        422,
        "not a day",
    )
    .await;
    refused(
        &app,
        w,
        &key,
        weekly(json!([]), "22:00", "2h", "UTC"),
        422,
        "at least one day",
    )
    .await;
    refused(
        &app,
        w,
        &key,
        weekly(json!(["mon"]), "25:00", "2h", "UTC"),
        422,
        "HH:MM",
    )
    .await;
    refused(
        &app,
        w,
        &key,
        weekly(json!(["mon"]), "22:00", "0s", "UTC"),
        422,
        "more than 0s",
    )
    .await;
    refused(
        &app,
        w,
        &key,
        weekly(json!(["mon"]), "22:00", "8d", "UTC"),
        422,
        "7 days",
    )
    .await;
    refused(
        &app,
        w,
        &key,
        json!({"starts_at": "2026-12-01T10:00:00Z", "ends_at": "2026-12-01T09:00:00Z"}),
        422,
        "ends_at must be after starts_at",
    )
    .await;
    refused(
        &app,
        w,
        &key,
        json!({"starts_at": "2026-12-01T10:00:00Z"}),
        422,
        "both",
    )
    .await;
    refused(
        &app,
        w,
        &key,
        json!({"starts_at": "2026-12-01T10:00:00Z", "ends_at": "2026-12-01T11:00:00Z",
               "weekly": {"days": ["mon"], "start": "10:00", "duration": "1h"}}),
        422,
        "not both",
    )
    .await;
    refused(
        &app,
        w,
        &key,
        json!({"starts_at": "yesterday", "ends_at": "today"}),
        422,
        "starts_at",
    )
    .await;
    assert_eq!(count(&app, w, &key).await, 0);
    // Overlapping windows: both kept (they count as their union).
    for (s, e) in [("10:00", "12:00"), ("11:00", "13:00")] {
        app.ok_post(
            w,
            &key,
            json!({"starts_at": format!("2026-12-01T{s}:00Z"), "ends_at": format!("2026-12-01T{e}:00Z")}),
            201,
        )
        .await;
    }
    assert_eq!(count(&app, w, &key).await, 2);
    // Crossing midnight is a window like any other.
    app.ok_post(
        w,
        &key,
        weekly(json!(["sat", "sun"]), "23:00", "3h", "Asia/Jakarta"),
        201,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incidents_that_do_not_exist_or_cannot_change_say_so() {
    let Rig {
        app, key, token, ..
    } = rig("wa", &[("alerts.group_wait", "0s")]).await;
    let (status, _) = app.get("/v1/incidents/inc_nope", &key).await;
    assert_eq!(status, 404);
    let (status, _) = app
        .post("/v1/incidents/inc_nope/acknowledge", &key, json!({}))
        .await;
    assert_eq!(status, 404);
    let (status, _) = app.get("/v1/incidents?state=burning", &key).await;
    assert_eq!(status, 422);
    crate::alerts::up(&app, &token).await;
    crate::alerts::report(&app, &token, "logged_out").await;
    app.tick().await;
    let id = crate::alerts::incidents(&app, &key).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let other = other_account(&app).await;
    let (status, _) = app.get(&format!("/v1/incidents/{id}"), &other).await;
    assert_eq!(status, 404, "another account's incident is not there");
    let (status, v) = app
        .post(&format!("/v1/incidents/{id}/notes"), &key, json!({}))
        .await;
    assert_eq!(status, 422, "{v}");
    let resolved = app
        .ok_post(
            &format!("/v1/incidents/{id}/resolve"),
            &key,
            json!({"by": "Rina"}),
            200,
        )
        .await;
    assert_eq!(resolved["state"], "resolved");
    let (status, v) = app
        .post(&format!("/v1/incidents/{id}/acknowledge"), &key, json!({}))
        .await;
    assert_eq!(status, 409, "{v}");
    assert_eq!(
        crate::alerts::incidents(&app, &key).await.len(),
        1,
        "still the one incident"
    );
}
