//! Maintenance windows: no alerts inside, the downtime still recorded and marked,
//! availability with and without it, an alert when a device is still down at the end, and
//! the recovery notice of an incident opened before a window.

use serde_json::json;

use crate::alerts::{incidents, report, rig, texts, up};
use crate::helpers::*;

const MINUTE: i64 = 60_000;
const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// A moment as Jakarta (UTC+7, no daylight saving) reads it: day name and `HH:MM`.
fn jakarta(ms: i64) -> (&'static str, String) {
    let local_min = (ms / 1000 + 7 * 3600) / 60;
    let days = local_min.div_euclid(24 * 60);
    // 1970-01-01 was a Thursday.
    let day = DAYS[((days + 3).rem_euclid(7)) as usize];
    let of_day = local_min.rem_euclid(24 * 60);
    (day, format!("{:02}:{:02}", of_day / 60, of_day % 60))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weekly_window_in_jakarta_holds_alerts_marks_downtime_and_ends_in_an_alert() {
    let r = rig("wa", &[("alerts.group_wait", "0s")]).await;
    let (app, k) = (&r.app, &r.key);
    up(app, &r.token).await;
    let since = app.now_ms();
    // The window begins six to seven minutes from now, on its local day and time.
    let start = (since + 6 * MINUTE) / MINUTE * MINUTE + MINUTE;
    let (day, hhmm) = jakarta(start);
    let w = app
        .ok_post(
            "/v1/maintenance-windows",
            k,
            json!({"name": "Nightly", "match": {"channel_id": "ch"},
                   "weekly": {"days": [day], "start": hhmm, "duration": "1h"},
                   "timezone": "Asia/Jakarta"}),
            201,
        )
        .await;
    assert!(w["active"].is_null(), "{w}");
    assert!(w["next"].is_object(), "{w}");
    assert_eq!(w["weekly"]["start"], hhmm);
    app.advance(start - since).await;
    let (_, w) = app
        .get(
            &format!("/v1/maintenance-windows/{}", w["id"].as_str().unwrap()),
            k,
        )
        .await;
    assert!(w["active"].is_object(), "{w}");

    report(app, &r.token, "logged_out").await;
    app.tick().await;
    app.advance(20 * MINUTE).await;
    assert!(r.slack.received().is_empty(), "{:?}", texts(&r.slack));
    assert!(incidents(app, k).await.is_empty());

    let (_, log) = app.get("/v1/devices/dev/downtime", k).await;
    assert_eq!(log["data"][0]["maintenance"], true, "{log}");
    assert_eq!(log["data"][0]["maintenance_seconds"], 20 * 60);
    let window = format!("from={}&to={}", since / 1000, app.now_ms() / 1000);
    let (_, plain) = app
        .get(&format!("/v1/devices/dev/availability?{window}"), k)
        .await;
    let (_, excluded) = app
        .get(
            &format!("/v1/devices/dev/availability?{window}&exclude_maintenance=true"),
            k,
        )
        .await;
    let down = plain["down_seconds"].as_i64().unwrap();
    assert!((20 * 60 - 1..=20 * 60).contains(&down), "{plain}");
    // Up six and a bit minutes, then down twenty.
    assert!(
        plain["availability_percent"].as_f64().unwrap() < 30.0,
        "{plain}"
    );
    assert_eq!(excluded["down_seconds"], 0, "{excluded}");
    assert_eq!(excluded["outages"], 0);
    assert!(
        excluded["maintenance_seconds"].as_i64().unwrap() >= 20 * 60 - 1,
        "{excluded}"
    );
    assert_eq!(excluded["availability_percent"], 100.0);

    // Still down when the window ends: treated as just dropped (wa: at once).
    let end = start + 60 * MINUTE;
    app.advance(end - app.now_ms() - 1).await;
    assert!(r.slack.received().is_empty());
    app.advance(1).await;
    let got = r.slack.wait_for(1).await;
    assert!(got[0].json()["text"].as_str().unwrap().contains("is down"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incident_opened_before_a_window_still_gets_its_recovery_notice() {
    let r = rig("wa", &[("alerts.group_wait", "0s")]).await;
    let (app, k) = (&r.app, &r.key);
    up(app, &r.token).await;
    report(app, &r.token, "logged_out").await;
    app.tick().await;
    r.slack.wait_for(1).await;
    let now = app.now_ms();
    app.ok_post(
        "/v1/maintenance-windows",
        k,
        json!({"match": {"device_id": "dev"},
               "starts_at": (now / 1000).to_string(), "ends_at": ((now + 3_600_000) / 1000).to_string()}),
        201,
    )
    .await;
    app.advance(15 * MINUTE).await;
    up(app, &r.token).await;
    let got = r.slack.wait_for(2).await;
    assert!(
        got[1].json()["text"]
            .as_str()
            .unwrap()
            .contains("is back online after 15 min"),
        "{:?}",
        texts(&r.slack)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escalation_waits_out_a_window_that_covers_every_device_down() {
    let r = rig("wa", &[("alerts.group_wait", "0s")]).await;
    let (app, k) = (&r.app, &r.key);
    let boss = Receiver::start().await;
    app.ok_post(
        "/v1/notifiers",
        k,
        json!({"id": "boss", "name": "Boss", "kind": "slack", "url": boss.url}),
        201,
    )
    .await;
    app.ok_post(
        "/v1/alert-rules",
        k,
        json!({"match": {}, "notifiers": ["team-slack"],
               "escalation": [{"after": "10m", "notifiers": ["boss"]}]}),
        201,
    )
    .await;
    up(app, &r.token).await;
    report(app, &r.token, "logged_out").await;
    app.tick().await;
    r.slack.wait_for(1).await;
    let now = app.now_ms();
    app.ok_post(
        "/v1/maintenance-windows",
        k,
        json!({"match": {}, "starts_at": (now / 1000).to_string(),
               "ends_at": ((now + 30 * MINUTE) / 1000).to_string()}),
        201,
    )
    .await;
    app.advance(10 * MINUTE).await;
    assert!(
        boss.received().is_empty(),
        "no escalation inside the window"
    );
    app.advance(20 * MINUTE).await;
    boss.wait_for(1).await;
    let id = incidents(app, k).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, inc) = app.get(&format!("/v1/incidents/{id}"), k).await;
    let types: Vec<&str> = inc["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert!(types.contains(&"maintenance_started"), "{types:?}");
}
