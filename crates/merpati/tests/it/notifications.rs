//! Notifications as the notifiers' servers get them (Slack and Telegram bodies field by
//! field, e-mail through a real SMTP server, signed webhooks), and their durability:
//! retries, a notifier that fails for good, a recovery that replaces an alert still being
//! retried, and a server killed between the commit and the send.

use std::time::Duration;

use merpati_webhooks::Webhook;
use serde_json::{json, Value};

use crate::alerts::{incident, incidents, report, rig, up, Rig};
use crate::helpers::*;
use crate::smtp::SmtpSink;

async fn whatsapp(app: &TestApp, token: &str, rid: i64, phone: &str) {
    app.ok_post(
        "/v1/device/messages",
        token,
        json!({"type": "whatsapp", "rid": rid, "phone": phone, "message": "halo"}),
        202,
    )
    .await;
}

const HOUR: i64 = 3_600_000;

/// Three distinct senders in the 24 h before the drop (one of them twice), one 25 h before:
/// three affected conversations. The backup channel's devices, as they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slack_message_names_the_conversations_hit_and_the_backup_channel() {
    let r = rig("wa", &[("alerts.group_wait", "0s")]).await;
    let (app, k) = (&r.app, &r.key);
    app.ok_post(
        "/v1/channels",
        k,
        json!({"id": "ch-b", "name": "Backup WA", "engine": "wa", "business_id": "biz"}),
        201,
    )
    .await;
    let (status, v) = app
        .patch("/v1/channels/ch", k, json!({"backup_channel_id": "ch-b"}))
        .await;
    assert_eq!(status, 200, "{v}");
    let b1 = app.device(k, "b1", "ch-b").await;
    app.device(k, "b2", "ch-b").await;
    report(app, &b1, "connected").await;
    up(app, &r.token).await;

    whatsapp(app, &r.token, 1, "+6281000000004").await;
    app.advance(2 * HOUR).await;
    whatsapp(app, &r.token, 2, "+6281000000001").await;
    whatsapp(app, &r.token, 3, "+6281000000002").await;
    app.advance(20 * HOUR).await;
    whatsapp(app, &r.token, 4, "+6281000000001").await;
    whatsapp(app, &r.token, 5, "+6281000000003").await;
    app.advance(3 * HOUR).await;
    report(app, &r.token, "logged_out").await;
    app.tick().await;

    let got = r.slack.wait_for(1).await;
    let body = got[0].json();
    let text = body["text"].as_str().unwrap();
    assert!(text.contains("Affected conversations: 3"), "{text}");
    assert!(
        text.contains("Backup channel: Backup WA (1 of 2 devices up)"),
        "{text}"
    );
    let blocks = body["blocks"].as_array().unwrap();
    assert_eq!(blocks.len(), 3, "{body:#}");
    assert_eq!(blocks[0]["type"], "header");
    assert_eq!(blocks[0]["text"]["type"], "plain_text");
    assert_eq!(
        blocks[0]["text"]["text"],
        "🔴 [CRITICAL] Device dev name (Channel, wa) of Biz is down"
    );
    assert_eq!(blocks[1]["type"], "section");
    assert_eq!(blocks[1]["text"]["type"], "mrkdwn");
    let section = blocks[1]["text"]["text"].as_str().unwrap();
    assert!(
        section.starts_with("• dev name (Channel, wa): down since "),
        "{section}"
    );
    assert!(section.contains("Affected conversations: 3"));
    assert_eq!(blocks[2]["type"], "actions");
    let buttons = blocks[2]["elements"].as_array().unwrap();
    assert_eq!(buttons.len(), 2);
    assert_eq!(buttons[0]["type"], "button");
    assert!(buttons[0]["url"].as_str().unwrap().contains("/ack/"));
    assert_eq!(buttons[1]["text"]["text"], "Incident");
    let id = incidents(app, k).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(buttons[1]["url"]
        .as_str()
        .unwrap()
        .ends_with(&format!("/incidents/{id}")));

    let inc = incident(app, k, &id).await;
    assert_eq!(inc["affected_conversations"]["count"], 3);
    assert_eq!(
        inc["affected_conversations"]["phones"],
        json!(["+6281000000001", "+6281000000002", "+6281000000003"])
    );
    assert_eq!(inc["affected_conversations"]["window"], "1day");
    assert_eq!(
        inc["backup_channel"],
        json!({"id": "ch-b", "name": "Backup WA", "devices_up": 1, "devices": 2})
    );
    assert_eq!(
        inc["channels"],
        json!([{"id": "ch", "name": "Channel", "engine": "wa"}])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telegram_gets_send_message_in_html() {
    let r = rig("telegram", &[("alerts.group_wait", "0s")]).await;
    let bot = Receiver::start().await;
    bot.always(Answer::status(200).body(r#"{"ok":true,"result":{"message_id":7}}"#));
    let token = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw_";
    r.app
        .ok_post(
            "/v1/notifiers",
            &r.key,
            json!({"id": "tg", "name": "Ops chat", "kind": "telegram", "bot_token": token,
                   "chat_id": "-1001234567890", "api_url": bot.url, "language": "id"}),
            201,
        )
        .await;
    up(&r.app, &r.token).await;
    report(&r.app, &r.token, "logged_out").await;
    r.app.advance(5 * 60_000).await;
    let got = bot.wait_for(1).await;
    assert_eq!(got[0].path, format!("/hook/bot{token}/sendMessage"));
    assert_eq!(got[0].header("content-type"), "application/json");
    let body = got[0].json();
    assert_eq!(body["chat_id"], "-1001234567890");
    assert_eq!(body["parse_mode"], "HTML");
    assert_eq!(body["link_preview_options"], json!({"is_disabled": true}));
    let text = body["text"].as_str().unwrap();
    assert!(
        text.starts_with(
            "<b>🔴 [KRITIS] Perangkat dev name (Channel, telegram) milik Biz terputus</b>\n"
        ),
        "{text}"
    );
    assert!(text.contains("Percakapan terdampak: 0"));
    assert!(text.contains(&format!("<a href=\"{}/ack/", r.app.url)));
    assert!(text.contains(">Akui</a>"));
    assert!(text.chars().count() <= 4096);
    // The view never shows the token whole.
    let (_, n) = r.app.get("/v1/notifiers/tg", &r.key).await;
    assert_eq!(n["bot_token"], "123456789:…saw_");
    assert_eq!(n["health"]["status"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_goes_through_a_real_smtp_server_in_one_thread_per_incident() {
    let sink = SmtpSink::start().await;
    let url = sink.url();
    let r = rig(
        "wa",
        &[
            ("alerts.group_wait", "0s"),
            ("alerts.smtp_url", &url),
            ("alerts.smtp_from", "merpati <alerts@merpati.test>"),
        ],
    )
    .await;
    let n = r
        .app
        .ok_post(
            "/v1/notifiers",
            &r.key,
            json!({"name": "Ops mail", "kind": "email", "to": ["ops@example.com", "boss@example.com"]}),
            201,
        )
        .await;
    let tested = r
        .app
        .ok_post(
            &format!("/v1/notifiers/{}/test", n["id"].as_str().unwrap()),
            &r.key,
            json!({}),
            200,
        )
        .await;
    assert_eq!(tested["outcome"], "sent", "{tested}");
    assert!(
        tested["answer"].as_str().unwrap().starts_with("250"),
        "{tested}"
    );
    sink.wait_for(1).await;

    up(&r.app, &r.token).await;
    report(&r.app, &r.token, "logged_out").await;
    r.app.tick().await;
    r.app.advance(6 * 60_000).await;
    up(&r.app, &r.token).await;
    let mails = sink.wait_for(3).await;
    let (alert, recovery) = (&mails[1], &mails[2]);
    assert_eq!(alert.from, "<alerts@merpati.test>");
    assert_eq!(alert.to, vec!["<ops@example.com>", "<boss@example.com>"]);
    assert_eq!(
        alert.header("Subject").unwrap(),
        "[CRITICAL] Device dev name (Channel, wa) of Biz is down"
    );
    assert!(alert
        .header("Content-Type")
        .unwrap()
        .starts_with("multipart/alternative"));
    assert!(alert.data.contains("Content-Type: text/plain"));
    assert!(alert.data.contains("Content-Type: text/html"));
    let thread = alert.header("Message-ID").unwrap();
    assert!(
        thread.starts_with("<inc_") && thread.ends_with("@merpati.test>"),
        "{thread}"
    );
    assert!(recovery
        .header("Subject")
        .unwrap()
        .contains("is back online after 6 min"));
    assert_eq!(recovery.header("In-Reply-To").unwrap(), thread);
    assert_eq!(recovery.header("References").unwrap(), thread);
    assert_ne!(recovery.header("Message-ID").unwrap(), thread);

    // A server that refuses: the test answers with its reply.
    sink.refuse_recipients("550 5.1.1 no such user");
    let tested = r
        .app
        .ok_post(
            &format!("/v1/notifiers/{}/test", n["id"].as_str().unwrap()),
            &r.key,
            json!({}),
            200,
        )
        .await;
    assert_eq!(tested["outcome"], "failed");
    assert!(
        tested["error"].as_str().unwrap().contains("no such user"),
        "{tested}"
    );
}

async fn webhook_notifier(r: &Rig, receiver: &Receiver) -> (String, String) {
    let n = r
        .app
        .ok_post(
            "/v1/notifiers",
            &r.key,
            json!({"name": "Pager", "kind": "webhook", "url": receiver.url}),
            201,
        )
        .await;
    (
        n["id"].as_str().unwrap().to_string(),
        n["secret"].as_str().unwrap().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notifier_answering_500_three_times_gets_the_message_on_the_fourth_attempt() {
    let r = rig("wa", &[("alerts.group_wait", "0s")]).await;
    let pager = Receiver::start().await;
    let (pager_id, secret) = webhook_notifier(&r, &pager).await;
    pager.script([
        Answer::status(500),
        Answer::status(500),
        Answer::status(500),
    ]);
    up(&r.app, &r.token).await;
    report(&r.app, &r.token, "logged_out").await;
    r.app.tick().await;
    pager.wait_for(1).await;
    for (wait, n) in [(5_000, 2), (15_000, 3), (60_000, 4)] {
        r.app.advance(wait).await;
        pager.wait_for(n).await;
    }
    let got = pager.received();
    assert_eq!(got.len(), 4);
    let id = got[0].header("webhook-id").to_string();
    assert!(id.starts_with("msg_"));
    assert!(
        got.iter().all(|x| x.header("webhook-id") == id),
        "the same id on every retry"
    );
    let hook = Webhook::new(&secret).unwrap();
    for x in &got {
        hook.verify(&x.headers, &x.body)
            .expect("signed per Standard Webhooks");
    }
    assert_eq!(got[3].json()["event"], "alert.alert");
    let inc_id = incidents(&r.app, &r.key).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let inc = incident(&r.app, &r.key, &inc_id).await;
    let mine: Vec<&Value> = inc["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["notifier_id"] == pager_id)
        .collect();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0]["status"], "sent");
    assert_eq!(mine[0]["attempts"], 4);
    let failed: Vec<&Value> = inc["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "notification_failed" && e["notifier_id"] == pager_id)
        .collect();
    assert_eq!(failed.len(), 3);
    assert_eq!(failed[2]["attempt"], 3);
    assert_eq!(failed[2]["gave_up"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notifier_answering_404_fails_at_once_and_the_others_are_told() {
    let r = rig("wa", &[("alerts.group_wait", "0s")]).await;
    let pager = Receiver::start().await;
    webhook_notifier(&r, &pager).await;
    r.slack.always(Answer::status(404).body("no_service"));
    up(&r.app, &r.token).await;
    report(&r.app, &r.token, "logged_out").await;
    r.app.tick().await;
    r.app.tick().await;
    let got = pager.wait_for(2).await;
    let events: Vec<String> = got
        .iter()
        .map(|x| x.json()["event"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(events, ["alert.alert", "alert.notifier_failing"]);
    let text = got[1].json()["text"].as_str().unwrap().to_string();
    assert!(
        text.contains("Team Slack (team-slack): HTTP 404: no_service"),
        "{text}"
    );
    assert_eq!(r.slack.received().len(), 1, "a 404 is not retried");
    let (_, n) = r.app.get("/v1/notifiers/team-slack", &r.key).await;
    assert_eq!(n["health"]["status"], "failing");
    assert_eq!(n["health"]["failures_in_row"], 1);
    assert_eq!(n["health"]["last_error"], "HTTP 404: no_service");
}

/// A recovery that comes while the alert is still being retried replaces both with one
/// message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovery_while_the_alert_is_retried_is_one_message() {
    let r = rig("wa", &[("alerts.group_wait", "0s")]).await;
    r.slack.always(Answer::status(503));
    up(&r.app, &r.token).await;
    report(&r.app, &r.token, "logged_out").await;
    r.app.tick().await;
    for wait in [5_000, 15_000, 60_000] {
        r.app.advance(wait).await;
    }
    assert_eq!(r.slack.received().len(), 4);
    r.app.advance(6 * 60_000 - 80_000).await;
    r.slack.always(Answer::status(200));
    up(&r.app, &r.token).await;
    let got = r.slack.wait_for(5).await;
    let last = got[4].json()["text"].as_str().unwrap().to_string();
    assert!(
        last.starts_with("✅ Device dev name (Channel, wa) of Biz was down 6 min and is back now"),
        "{last}"
    );
    r.app.advance(60 * 60_000).await;
    assert_eq!(
        r.slack.received().len(),
        5,
        "the alert is not sent after all"
    );
    let id = incidents(&r.app, &r.key).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let statuses: Vec<(String, String)> = incident(&r.app, &r.key, &id).await["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["kind"].as_str().unwrap().into(),
                n["status"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [
            ("alert".into(), "superseded".into()),
            ("recovery".into(), "sent".into())
        ]
    );
}

/// `merpati serve` killed with SIGKILL while a notification is under way: after the
/// restart it is sent, with the same id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_committed_before_a_kill_is_sent_after_restart_with_the_same_id() {
    let dir = tempfile::tempdir().unwrap();
    let pager = Receiver::start().await;
    pager.always(Answer::status(200).delay(Duration::from_secs(120)));
    let settings = [("MERPATI_ALERTS_GROUP_WAIT", "0s")];
    let (mut child, url) = crate::restart::spawn_binary_with(dir.path(), &settings).await;
    let mut app = TestApp::at(url);
    let m = app.merchant_on("m1", "wa").await;
    app.ok_post(
        "/v1/notifiers",
        &m.key,
        json!({"name": "Pager", "kind": "webhook", "url": pager.url}),
        201,
    )
    .await;
    report(&app, &m.device_token, "connected").await;
    report(&app, &m.device_token, "logged_out").await;
    let first = pager.wait_for(1).await[0].header("webhook-id").to_string();
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    pager.always(Answer::status(200));

    let (mut child, url) = crate::restart::spawn_binary_with(dir.path(), &settings).await;
    app.url = url;
    let got = pager.wait_for(2).await;
    assert_eq!(got[1].header("webhook-id"), first);
    assert_eq!(got[1].json()["event"], "alert.alert");
    let _ = child.start_kill();
    let _ = child.wait().await;
}

/// A deleted account's notifications still being retried stop at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_account_is_notified_no_more() {
    let r = rig("wa", &[("alerts.group_wait", "0s")]).await;
    r.slack.always(Answer::status(503));
    up(&r.app, &r.token).await;
    report(&r.app, &r.token, "logged_out").await;
    r.app.tick().await;
    r.slack.wait_for(1).await;
    let (status, _) = r.app.delete("/v1/accounts/m1", ADMIN).await;
    assert_eq!(status, 204);
    r.app.advance(60 * 60_000).await;
    assert_eq!(
        r.slack.received().len(),
        1,
        "no retry after the account went"
    );
}

/// An e-mail notifier of the rig's account, tested: the test's answer.
async fn test_email(r: &Rig) -> Value {
    let n = r
        .app
        .ok_post(
            "/v1/notifiers",
            &r.key,
            json!({"name": "Ops mail", "kind": "email", "to": ["ops@example.com"]}),
            201,
        )
        .await;
    let path = format!("/v1/notifiers/{}/test", n["id"].as_str().unwrap());
    r.app.ok_post(&path, &r.key, json!({}), 200).await
}

/// STARTTLS and TLS from the first byte, to a relay whose certificate a private CA signed
/// (`alerts.smtp_ca_file`); without that CA, the relay is refused, not spoken to in clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_goes_over_starttls_and_implicit_tls_to_a_relay_with_a_private_ca() {
    use crate::smtp::Security;
    for (security, scheme) in [
        (Security::StartTls, "smtp+starttls"),
        (Security::Tls, "smtps"),
    ] {
        let sink = SmtpSink::start_with(security).await;
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, sink.ca_pem.as_ref().unwrap()).unwrap();
        let url = format!("{scheme}://127.0.0.1:{}", sink.port);
        let ca_path = ca.to_str().unwrap().to_string();
        let smtp = [
            ("alerts.smtp_url", url.as_str()),
            ("alerts.smtp_from", "alerts@merpati.test"),
        ];
        let mut with_ca = smtp.to_vec();
        with_ca.push(("alerts.smtp_ca_file", &ca_path));
        let tested = test_email(&rig("wa", &with_ca).await).await;
        assert_eq!(tested["outcome"], "sent", "{scheme}: {tested}");
        sink.wait_for(1).await;
        assert_eq!(sink.encrypted(), 1, "{scheme}: the mail came over TLS");

        // The same relay without its CA: refused, nothing sent in clear.
        let tested = test_email(&rig("wa", &smtp).await).await;
        assert_eq!(tested["outcome"], "failed", "{scheme}: {tested}");
        assert_eq!(sink.mails().len(), 1, "{scheme}: nothing more arrived");
    }
}
