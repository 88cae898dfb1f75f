//! The CLI's resource commands, the real binary against a server of the test's: tables,
//! `--json`, actions, and `events tail` following events as they are stored.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::helpers::*;

async fn merpati(app: &TestApp, key: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_merpati"))
        .args(args)
        .env("MERPATI_URL", &app.url)
        .env("MERPATI_API_KEY", key)
        .output()
        .await
        .expect("the binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_commands_show_tables_json_and_act() {
    let app = TestApp::spawn_with(&[("alerts.group_wait", "0s")]).await;
    let m = app.merchant_on("m1", "wa").await;
    let receiver = Receiver::start().await;
    app.endpoint(&m.key, &receiver, json!({"events": ["sms"]}))
        .await;
    let sent = app.sms(&m.device_token, 1).await;
    let event_id = sent["items"][0]["event_id"].as_str().unwrap().to_string();
    app.settled_event(&m.key, &event_id).await;

    let (ok, out, err) = merpati(&app, &m.key, &["devices", "list"]).await;
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("ID"), "{out}");
    assert!(lines[0].contains("STATUS"));
    assert!(lines[1].starts_with("dev "), "{out}");

    let (ok, out, err) = merpati(&app, &m.key, &["events", "list", "--json"]).await;
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["data"][0]["id"], event_id);

    let (ok, out, err) = merpati(&app, &m.key, &["events", "get", &event_id]).await;
    assert!(ok, "{err}");
    assert!(out.contains("payload: {\"type\":\"sms\""), "{out}");
    assert!(out.contains("ENDPOINT"), "the attempts: {out}");

    let (ok, out, err) = merpati(&app, &m.key, &["events", "replay", &event_id]).await;
    assert!(ok, "{err}");
    assert!(out.starts_with("replayed:"), "{out}");
    receiver.wait_for(2).await;

    // An incident, acknowledged from the command line.
    app.ok_post(
        "/v1/device/status",
        &m.device_token,
        json!({"status": "connected"}),
        202,
    )
    .await;
    app.ok_post(
        "/v1/device/status",
        &m.device_token,
        json!({"status": "logged_out"}),
        202,
    )
    .await;
    let id = {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            let (_, v) = app.get("/v1/incidents", &m.key).await;
            if let Some(id) = v["data"][0]["id"].as_str() {
                break id.to_string();
            }
            assert!(std::time::Instant::now() < deadline, "no incident");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let (ok, out, err) = merpati(&app, &m.key, &["incidents", "ack", &id, "--by", "Rina"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("state: acknowledged"), "{out}");
    assert!(out.contains("acknowledged_by: Rina"), "{out}");

    // A recovery job, followed to its end.
    let ep = app.get("/v1/endpoints", &m.key).await.1["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (ok, out, err) = merpati(
        &app,
        &m.key,
        &["endpoints", "recover", &ep, "--since", "1h"],
    )
    .await;
    assert!(ok, "{err}");
    assert!(out.starts_with("recovered 0 of 0 deliveries"), "{out}");
    assert!(err.contains("0/0"), "the progress: {err}");

    // Errors say what the API said.
    let (ok, _, err) = merpati(&app, "mpk_wrong", &["devices", "list"]).await;
    assert!(!ok);
    assert!(err.contains("401"), "{err}");
    let (ok, _, err) = merpati(&app, &m.key, &["events", "get", "evt_nope"]).await;
    assert!(!ok);
    assert!(err.contains("404"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_tail_follows_events_as_they_are_stored() {
    let app = TestApp::spawn().await;
    let m = app.merchant("m1").await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_merpati"))
        .args(["events", "tail", "--type", "sms"])
        .env("MERPATI_URL", &app.url)
        .env("MERPATI_API_KEY", &m.key)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The stream is live once the server has a subscriber: wait for it, then send.
    let deadline = std::time::Instant::now() + PATIENCE;
    let mut sent = Vec::new();
    let first = loop {
        let v = app.sms(&m.device_token, sent.len() as i64 + 1).await;
        sent.push(v["items"][0]["event_id"].as_str().unwrap().to_string());
        if let Ok(Ok(Some(line))) =
            tokio::time::timeout(Duration::from_millis(300), lines.next_line()).await
        {
            break line;
        }
        assert!(std::time::Instant::now() < deadline, "tail printed nothing");
    };
    assert!(
        sent.iter().any(|id| first.starts_with(id.as_str())),
        "{first}"
    );
    assert!(first.contains("  sms  dev"), "{first}");
    // Device events are not sms: filtered out; the next sms shows.
    app.ok_post(
        "/v1/device/status",
        &m.device_token,
        json!({"status": "connected"}),
        202,
    )
    .await;
    let v = app.sms(&m.device_token, 1000).await;
    let id = v["items"][0]["event_id"].as_str().unwrap();
    loop {
        let line = tokio::time::timeout(PATIENCE, lines.next_line())
            .await
            .expect("a line in time")
            .unwrap()
            .expect("tail still runs");
        assert!(line.contains("  sms  "), "{line}");
        if line.starts_with(id) {
            break;
        }
    }
    child.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_refuses_unknown_kinds_and_strangers() {
    let app = TestApp::spawn().await;
    let m = app.merchant("m1").await;
    let (status, v) = app.get("/v1/stream?kinds=events,gossip", &m.key).await;
    assert_eq!(status, 422, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("gossip"));
    let (status, _) = app.get("/v1/stream", "mpk_wrong").await;
    assert_eq!(status, 401);
    let (status, _) = app.get("/v1/stream", &m.device_token).await;
    assert_eq!(status, 401, "a device token is not an API key");
}

/// A burst reaches a stream as each device's latest state, not a flood.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_on_the_stream_is_each_device_s_latest_state() {
    use futures_util::StreamExt;
    let app = TestApp::spawn_with(&[("presence.grace", "0s")]).await;
    let m = app.merchant("m1").await;
    let response = app
        .client
        .get(format!("{}/v1/stream?kinds=devices", app.url))
        .bearer_auth(&m.key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut text = String::new();
    while !text.contains("event: ready") {
        text.push_str(&String::from_utf8_lossy(
            &body.next().await.unwrap().unwrap(),
        ));
    }
    for _ in 0..20 {
        for status in ["connected", "logged_out"] {
            app.ok_post(
                "/v1/device/status",
                &m.device_token,
                json!({"status": status}),
                202,
            )
            .await;
        }
    }
    app.ok_post(
        "/v1/device/status",
        &m.device_token,
        json!({"status": "connected"}),
        202,
    )
    .await;
    // Read until the final state shows, and until nothing more comes for a moment.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let last = text
            .rsplit("event: devices\ndata: ")
            .next()
            .and_then(|data| data.lines().next())
            .unwrap_or_default();
        let settled = text.contains("event: devices") && last.contains("\"status\":\"connected\"");
        let wait = if settled {
            // A later event, if any, must come within this.
            tokio::time::Instant::now() + Duration::from_millis(500)
        } else {
            deadline
        };
        match tokio::time::timeout_at(wait, body.next()).await {
            Ok(Some(Ok(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
            Err(_) if settled => break,
            Err(_) => panic!("the final state in time; the stream said:\n{text}"),
            Ok(other) => panic!("the stream ended ({other:?}); it said:\n{text}"),
        }
    }
    let told = text.matches("event: devices").count();
    assert!(
        told <= 10,
        "41 changes a moment apart coalesce, told {told} times"
    );
    let final_state = text.rsplit("event: devices\ndata: ").next().unwrap();
    assert!(
        final_state.contains("\"status\":\"connected\""),
        "{final_state}"
    );
}
