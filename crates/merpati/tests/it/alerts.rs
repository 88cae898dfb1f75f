//! Alerts on a scripted clock: the documents' thresholds, rules, reminders, escalation,
//! acknowledgement (by API and by signed link), recovery notices, flapping, grouping and
//! maintenance windows, against real receivers standing in for Slack.

use serde_json::{json, Value};

use crate::helpers::*;

/// A 60 s heartbeat lease and a 30 s grace; alerts with the defaults.
pub const LEASE: &[(&str, &str)] = &[
    ("presence.heartbeat_timeout", "60s"),
    ("presence.grace", "30s"),
];

pub struct Rig {
    pub app: TestApp,
    pub key: String,
    pub token: String,
    /// The receiver of the Slack-compatible notifier `team-slack`.
    pub slack: Receiver,
}

pub async fn rig(engine: &str, settings: &[(&str, &str)]) -> Rig {
    let mut all = LEASE.to_vec();
    all.extend_from_slice(settings);
    let app = TestApp::spawn_manual(&all).await;
    let m = app.merchant_on("m1", engine).await;
    let slack = Receiver::start().await;
    app.ok_post(
        "/v1/notifiers",
        &m.key,
        json!({"id": "team-slack", "name": "Team Slack", "kind": "slack", "url": slack.url}),
        201,
    )
    .await;
    Rig {
        app,
        key: m.key,
        token: m.device_token,
        slack,
    }
}

/// An engine reports the device's state; the hub has applied it when this returns.
pub async fn report(app: &TestApp, token: &str, status: &str) -> Value {
    app.ok_post("/v1/device/status", token, json!({"status": status}), 202)
        .await
}

/// Connected, and its `device.connected` written.
pub async fn up(app: &TestApp, token: &str) {
    report(app, token, "connected").await;
    app.tick().await;
}

/// Lost, and announced a grace (30 s) later.
pub async fn drop_announced(app: &TestApp, token: &str) {
    assert_eq!(
        report(app, token, "disconnected").await["status"],
        "pending"
    );
    app.advance(30_000).await;
}

/// The `text` of every message a Slack receiver got.
pub fn texts(r: &Receiver) -> Vec<String> {
    r.received()
        .iter()
        .map(|x| x.json()["text"].as_str().unwrap_or_default().to_string())
        .collect()
}

pub async fn incidents(app: &TestApp, key: &str) -> Vec<Value> {
    let (status, v) = app.get("/v1/incidents", key).await;
    assert_eq!(status, 200, "{v}");
    v["data"].as_array().unwrap().clone()
}

pub async fn incident(app: &TestApp, key: &str, id: &str) -> Value {
    let (status, v) = app.get(&format!("/v1/incidents/{id}"), key).await;
    assert_eq!(status, 200, "{v}");
    v
}

fn timeline_types(inc: &Value) -> Vec<String> {
    inc["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatsapp_alerts_when_the_disconnect_is_announced() {
    let r = rig("wa", &[("alerts.group_wait", "0s")]).await;
    up(&r.app, &r.token).await;
    assert_eq!(
        report(&r.app, &r.token, "disconnected").await["status"],
        "pending"
    );
    r.app.advance(29_999).await;
    assert!(r.slack.received().is_empty(), "nothing inside the grace");
    assert!(incidents(&r.app, &r.key).await.is_empty());
    r.app.advance(1).await;
    let got = r.slack.wait_for(1).await;
    let text = got[0].json()["text"].as_str().unwrap().to_string();
    assert!(
        text.starts_with("🔴 [CRITICAL] Device dev name (Channel, wa) of Biz is down"),
        "{text}"
    );
    let list = incidents(&r.app, &r.key).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["state"], "open");
    assert_eq!(list[0]["severity"], "critical");
    assert_eq!(list[0]["devices"][0]["id"], "dev");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telegram_back_within_five_minutes_alerts_nobody_and_its_downtime_is_logged() {
    let r = rig("telegram", &[]).await;
    up(&r.app, &r.token).await;
    drop_announced(&r.app, &r.token).await;
    r.app.advance(4 * 60_000 + 59_000).await;
    up(&r.app, &r.token).await;
    r.app.advance(10 * 60_000).await;
    assert!(r.slack.received().is_empty(), "{:?}", texts(&r.slack));
    assert!(incidents(&r.app, &r.key).await.is_empty());
    let (_, downtime) = r.app.get("/v1/devices/dev/downtime", &r.key).await;
    let log = downtime["data"].as_array().unwrap();
    assert_eq!(log.len(), 1, "{downtime}");
    // From the lost lease to the return: the grace and the 4 min 59 s.
    assert_eq!(log[0]["duration_seconds"], 30 + 299);

    // Down again, and still down at 5 minutes: the alert.
    drop_announced(&r.app, &r.token).await;
    r.app.advance(4 * 60_000 + 59_999).await;
    assert!(r.slack.received().is_empty());
    r.app.advance(1).await;
    assert_eq!(incidents(&r.app, &r.key).await.len(), 1);
    // The grouped notice goes group_wait (10 s) after the alert fires.
    r.app.advance(10_000).await;
    let got = r.slack.wait_for(1).await;
    assert!(got[0].json()["text"]
        .as_str()
        .unwrap()
        .contains("(Channel, telegram) of Biz is down"));
}

/// Every pending alert is a stored due time: a restart between the drop and `down_after`
/// still alerts on time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_alert_survives_a_restart() {
    let r = rig("telegram", &[("alerts.group_wait", "0s")]).await;
    up(&r.app, &r.token).await;
    report(&r.app, &r.token, "logged_out").await;
    r.app.advance(2 * 60_000).await;
    let Rig {
        app, key, slack, ..
    } = r;
    let app = app.restart().await;
    app.advance(3 * 60_000 - 1).await;
    assert!(slack.received().is_empty());
    app.advance(1).await;
    slack.wait_for(1).await;
    assert_eq!(incidents(&app, &key).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_rule_overrides_its_channel_s_and_effective_shows_which_set_what() {
    let r = rig("slack", &[("alerts.group_wait", "0s")]).await;
    let k = &r.key;
    r.app
        .ok_post(
            "/v1/alert-rules",
            k,
            json!({"id": "channel-rule", "match": {"channel_id": "ch"}, "down_after": "10m", "severity": "critical"}),
            201,
        )
        .await;
    r.app
        .ok_post(
            "/v1/alert-rules",
            k,
            json!({"id": "device-rule", "match": {"device_id": "dev"}, "down_after": "1m"}),
            201,
        )
        .await;
    let (status, e) = r
        .app
        .get("/v1/alert-rules/effective?device_id=dev", k)
        .await;
    assert_eq!(status, 200, "{e}");
    assert_eq!(
        e["down_after"],
        json!({"value": "1m", "rule": "device-rule"})
    );
    assert_eq!(
        e["severity"],
        json!({"value": "critical", "rule": "channel-rule"})
    );
    assert_eq!(e["repeat_every"], json!({"value": "off", "rule": null}));
    assert_eq!(
        e["notifiers"],
        json!({"value": ["team-slack"], "rule": null})
    );
    assert_eq!(e["notify_recovery"], json!({"value": true, "rule": null}));

    up(&r.app, &r.token).await;
    drop_announced(&r.app, &r.token).await;
    r.app.advance(59_999).await;
    assert!(r.slack.received().is_empty());
    r.app.advance(1).await;
    let got = r.slack.wait_for(1).await;
    assert!(got[0].json()["text"]
        .as_str()
        .unwrap()
        .starts_with("🔴 [CRITICAL]"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reminders_and_escalation_run_until_acknowledged_and_stop_then() {
    let r = rig("wa", &[("alerts.group_wait", "0s")]).await;
    let k = &r.key;
    let boss = Receiver::start().await;
    r.app
        .ok_post(
            "/v1/notifiers",
            k,
            json!({"id": "boss", "name": "Boss", "kind": "slack", "url": boss.url}),
            201,
        )
        .await;
    r.app
        .ok_post(
            "/v1/alert-rules",
            k,
            json!({
                "match": {"engine": "wa"},
                "notifiers": ["team-slack"],
                "repeat_every": "5m",
                "escalation": [{"after": "10m", "notifiers": ["boss"]}, {"after": "30m", "notifiers": ["boss"]}],
            }),
            201,
        )
        .await;
    up(&r.app, &r.token).await;
    drop_announced(&r.app, &r.token).await;
    r.slack.wait_for(1).await;
    r.app.advance(5 * 60_000).await;
    let got = r.slack.wait_for(2).await;
    assert!(got[1].json()["text"]
        .as_str()
        .unwrap()
        .contains("still down"));
    r.app.advance(5 * 60_000).await;
    // 10 minutes in: the third reminder, and the first escalation step.
    r.slack.wait_for(3).await;
    let escalated = boss.wait_for(1).await;
    assert!(escalated[0].json()["text"]
        .as_str()
        .unwrap()
        .contains("escalated"));
    // Not acknowledged: the second step comes at 30 minutes.
    r.app.advance(20 * 60_000).await;
    boss.wait_for(2).await;
    let id = incidents(&r.app, k).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let acked = r
        .app
        .ok_post(
            &format!("/v1/incidents/{id}/acknowledge"),
            k,
            json!({"by": "Rina", "note": "on it"}),
            200,
        )
        .await;
    assert_eq!(acked["state"], "acknowledged");
    assert_eq!(acked["acknowledged_by"], "Rina");
    let (slack_before, boss_before) = (r.slack.received().len(), boss.received().len());
    r.app.advance(60 * 60_000).await;
    assert_eq!(
        r.slack.received().len(),
        slack_before,
        "no reminder after the ack"
    );
    assert_eq!(
        boss.received().len(),
        boss_before,
        "no escalation after the ack"
    );
    let inc = incident(&r.app, k, &id).await;
    let types = timeline_types(&inc);
    assert!(types.contains(&"escalated".to_string()), "{types:?}");
    assert!(types.contains(&"acknowledged".to_string()));
    assert!(types.contains(&"note".to_string()));
    assert_eq!(inc["next"]["escalate_at"], Value::Null);
}

/// The acknowledgement link in a message: `GET` shows a page and changes nothing, `POST`
/// acknowledges; a link past its 7 days answers 410.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_signed_link_acknowledges_only_on_post_and_expires() {
    let r = rig("wa", &[("alerts.group_wait", "0s")]).await;
    up(&r.app, &r.token).await;
    drop_announced(&r.app, &r.token).await;
    let got = r.slack.wait_for(1).await;
    let body = got[0].json();
    let buttons = body["blocks"][2]["elements"].as_array().unwrap();
    let ack = buttons[0]["url"].as_str().unwrap().to_string();
    assert_eq!(buttons[0]["text"]["text"], "Acknowledge");
    assert!(ack.starts_with(&format!("{}/ack/", r.app.url)), "{ack}");
    let client = reqwest::Client::new();
    let page = client.get(&ack).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("<form method=\"post\">"), "{html}");
    let id = incidents(&r.app, &r.key).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(incident(&r.app, &r.key, &id).await["state"], "open");
    let posted = client.post(&ack).send().await.unwrap();
    assert_eq!(posted.status(), 200);
    let inc = incident(&r.app, &r.key, &id).await;
    assert_eq!(inc["state"], "acknowledged");
    let last = inc["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|e| e["type"] == "acknowledged")
        .unwrap()
        .clone();
    assert_eq!(last["via"], "link");
    // A forged or stretched link is not one.
    let forged = format!("{}x", &ack[..ack.len() - 1]);
    assert_eq!(client.get(&forged).send().await.unwrap().status(), 404);
    r.app.advance(7 * 24 * 3_600_000).await;
    assert_eq!(client.get(&ack).send().await.unwrap().status(), 410);
    assert_eq!(client.post(&ack).send().await.unwrap().status(), 410);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recovery_notice_says_how_long_the_outage_lasted() {
    let r = rig("wa", &[("alerts.group_wait", "0s")]).await;
    let endpoint = Receiver::start().await;
    r.app
        .endpoint(&r.key, &endpoint, json!({"events": ["incident.*"]}))
        .await;
    up(&r.app, &r.token).await;
    drop_announced(&r.app, &r.token).await;
    r.slack.wait_for(1).await;
    // Its attempt recorded before the clock jumps: a delivery still leased when its lease
    // runs out on the scripted clock is sent again, as it should be.
    let opened = endpoint.wait_for(1).await;
    r.app
        .settled_event(&r.key, opened[0].header("webhook-id"))
        .await;
    r.app.advance(37 * 60_000 + 20_000).await;
    up(&r.app, &r.token).await;
    let got = r.slack.wait_for(2).await;
    let text = got[1].json()["text"].as_str().unwrap().to_string();
    assert!(
        text.starts_with(
            "✅ Device dev name (Channel, wa) of Biz is back online after 37 min 20 s"
        ),
        "{text}"
    );
    let inc = &incidents(&r.app, &r.key).await[0];
    assert_eq!(inc["state"], "resolved");
    // The events receivers get, in the device events' style.
    let events: Vec<Value> = endpoint
        .wait_for(2)
        .await
        .iter()
        .map(|x| x.json())
        .collect();
    assert_eq!(events[0]["event"], "incident.opened");
    assert_eq!(events[1]["event"], "incident.resolved");
    assert!(events[0]["timestamp"].is_i64());
    assert_eq!(events[0]["incident"]["id"], inc["id"]);
    assert_eq!(
        events[0]["incident"]["bisnis"],
        json!({"id": "biz", "name": "Biz"})
    );
    assert_eq!(
        events[0]["incident"]["devices"][0]["channel"]["engine"],
        "wa"
    );
    assert_eq!(events[1]["incident"]["state"], "resolved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_device_is_reported_once_then_left_quiet() {
    let r = rig("wa", &[]).await;
    up(&r.app, &r.token).await;
    for _ in 0..6 {
        assert_eq!(
            report(&r.app, &r.token, "logged_out").await["status"],
            "disconnected"
        );
        r.app.advance(20_000).await;
        up(&r.app, &r.token).await;
        r.app.advance(60_000).await;
    }
    let all = texts(&r.slack);
    let flapping: Vec<&String> = all.iter().filter(|t| t.contains("flapping")).collect();
    assert_eq!(flapping.len(), 1, "{all:#?}");
    let at = all.iter().position(|t| t.contains("flapping")).unwrap();
    assert_eq!(
        at,
        all.len() - 1,
        "nothing after the flapping notice: {all:#?}"
    );
    // Stable for the quiet period, then a drop alerts again.
    r.app.advance(30 * 60_000).await;
    report(&r.app, &r.token, "logged_out").await;
    r.app.advance(10_000).await;
    let after = texts(&r.slack);
    assert_eq!(after.len(), all.len() + 1, "{after:#?}");
    assert!(
        after.last().unwrap().contains("is down") || after.last().unwrap().contains("down again")
    );
}

async fn devices(app: &TestApp, key: &str, business: &str, n: usize) -> Vec<String> {
    app.ok_post(
        "/v1/businesses",
        key,
        json!({"id": business, "name": format!("Shop {business}")}),
        201,
    )
    .await;
    let channel = format!("{business}-wa");
    app.ok_post(
        "/v1/channels",
        key,
        json!({"id": channel, "name": "WA", "engine": "wa", "business_id": business}),
        201,
    )
    .await;
    let mut tokens = Vec::new();
    for i in 0..n {
        tokens.push(app.device(key, &format!("{business}-d{i}"), &channel).await);
    }
    tokens
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_devices_of_one_business_dropping_together_make_one_incident_and_one_message() {
    let r = rig("wa", &[]).await;
    let tokens = devices(&r.app, &r.key, "b1", 50).await;
    for t in &tokens {
        report(&r.app, t, "connected").await;
    }
    r.app.tick().await;
    // 50 drops over 8 s.
    for t in &tokens {
        report(&r.app, t, "logged_out").await;
        r.app.advance(160).await;
    }
    r.app.advance(10_000).await;
    let got = texts(&r.slack);
    assert_eq!(got.len(), 1, "{got:#?}");
    assert!(
        got[0].contains("50 devices of Shop b1 are down"),
        "{}",
        got[0]
    );
    assert!(got[0].contains("+30 more"));
    assert_eq!(got[0].matches("• ").count(), 20);
    let list = incidents(&r.app, &r.key).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["devices"].as_array().unwrap().len(), 50);

    // Ten more join later: one update, not ten messages.
    let more: Vec<String> = {
        let mut v = Vec::new();
        for i in 0..10 {
            v.push(r.app.device(&r.key, &format!("b1-late{i}"), "b1-wa").await);
        }
        v
    };
    for t in &more {
        report(&r.app, t, "connected").await;
        report(&r.app, t, "logged_out").await;
    }
    r.app.advance(10_000).await;
    let got = texts(&r.slack);
    let id = list[0]["id"].as_str().unwrap();
    assert_eq!(
        got.len(),
        2,
        "{got:#?}\n{:#}",
        incident(&r.app, &r.key, id).await["notifications"]
    );
    assert!(
        got[1].contains("Shop b1: 10 more devices down"),
        "{}",
        got[1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_devices_across_ten_businesses_make_ten_messages() {
    let r = rig("wa", &[]).await;
    let mut all = Vec::new();
    for b in 0..10 {
        all.extend(devices(&r.app, &r.key, &format!("biz{b}"), 20).await);
    }
    for t in &all {
        report(&r.app, t, "connected").await;
    }
    r.app.tick().await;
    for t in &all {
        report(&r.app, t, "logged_out").await;
    }
    r.app.advance(10_000).await;
    let got = texts(&r.slack);
    assert_eq!(got.len(), 10, "{got:#?}");
    assert!(got.iter().all(|t| t.contains("20 devices of Shop biz")));
    assert_eq!(incidents(&r.app, &r.key).await.len(), 10);
}

/// A hub restart is not an outage: devices that were up and come back within their grace
/// alert nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_is_not_an_outage() {
    let r = rig("wa", &[("alerts.group_wait", "0s")]).await;
    let Rig {
        app,
        key,
        token,
        slack,
        ..
    } = r;
    let link = Link::open(&app, &token).await;
    app.tick().await;
    let app = app.restart().await;
    drop(link);
    app.advance(10_000).await;
    let link = Link::open(&app, &token).await;
    app.advance(5 * 60_000).await;
    assert!(slack.received().is_empty(), "{:?}", texts(&slack));
    assert!(incidents(&app, &key).await.is_empty());
    // The same device gone for good does alert: the test above could have failed.
    link.close().await;
    app.wait_status(&key, "dev", "pending").await;
    app.advance(30_000).await;
    slack.wait_for(1).await;
}

/// A drop soon after an incident resolved reopens it; the account's language is the
/// messages'.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drop_soon_after_resolution_reopens_the_incident() {
    let r = rig("wa", &[("alerts.group_wait", "0s")]).await;
    let (status, v) = r
        .app
        .patch("/v1/accounts/m1", ADMIN, json!({"language": "id"}))
        .await;
    assert_eq!((status.as_u16(), v["language"].as_str()), (200, Some("id")));
    up(&r.app, &r.token).await;
    report(&r.app, &r.token, "logged_out").await;
    r.app.tick().await;
    r.app.advance(60_000).await;
    up(&r.app, &r.token).await;
    let first = incidents(&r.app, &r.key).await;
    assert_eq!(first[0]["state"], "resolved");
    r.app.advance(4 * 60_000).await;
    report(&r.app, &r.token, "logged_out").await;
    r.app.tick().await;
    let list = incidents(&r.app, &r.key).await;
    assert_eq!(list.len(), 1, "reopened, not another: {list:#?}");
    assert_eq!(list[0]["state"], "open");
    let inc = incident(&r.app, &r.key, list[0]["id"].as_str().unwrap()).await;
    assert!(timeline_types(&inc).contains(&"reopened".to_string()));
    let all = texts(&r.slack);
    assert_eq!(all.len(), 3, "{all:#?}");
    assert!(all[0].contains("milik Biz terputus"), "{}", all[0]);
    assert!(
        all[1].contains("kembali online setelah 1 mnt"),
        "{}",
        all[1]
    );
    assert!(all[2].contains("terputus lagi"), "{}", all[2]);
    // The acknowledgement page speaks the account's language, durations too.
    let reopened = r.slack.received()[2].json();
    let ack = reopened["blocks"][2]["elements"][0]["url"]
        .as_str()
        .unwrap()
        .to_string();
    let page = reqwest::get(&ack).await.unwrap().text().await.unwrap();
    assert!(page.contains("Akui insiden ini"), "{page}");
    assert!(page.contains("terputus selama 0 dtk"), "{page}");
    // Past reopen_within (5 min), a drop opens a new incident.
    r.app.advance(60_000).await;
    up(&r.app, &r.token).await;
    r.app.advance(6 * 60_000).await;
    report(&r.app, &r.token, "logged_out").await;
    r.app.tick().await;
    assert_eq!(incidents(&r.app, &r.key).await.len(), 2);
}
