//! Nothing accepted is lost: a graceful restart, and the real binary killed with SIGKILL
//! in the middle of deliveries.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_retries_survive_a_graceful_restart() {
    let app = TestApp::spawn_with(&[("delivery.retry_schedule", "1s")]).await;
    let receiver = Receiver::start().await;
    receiver.script([Answer::status(500)]);
    let m = app.merchant("m1").await;
    app.endpoint(&m.key, &receiver, json!({})).await;
    let v = app.sms(&m.device_token, 1).await;
    let event_id = v["items"][0]["event_id"].as_str().unwrap().to_string();
    receiver.wait_for(1).await;

    let app = app.restart().await;
    let got = receiver.wait_for(2).await;
    assert_eq!(got[1].header("webhook-id"), event_id);
    let event = app.settled_event(&m.key, &event_id).await;
    assert_eq!(event["deliveries"][0]["status"], "succeeded");
    assert_eq!(event["deliveries"][0]["attempt_count"], 2);
}

/// `merpati serve` as a child process on a free port; returns it and its base URL.
async fn spawn_binary(data_dir: &Path) -> (Child, String) {
    spawn_binary_with(data_dir, &[]).await
}

/// As [`spawn_binary`], with more settings.
pub async fn spawn_binary_with(data_dir: &Path, settings: &[(&str, &str)]) -> (Child, String) {
    let (child, url, _) = spawn_binary_logged(data_dir, settings).await;
    (child, url)
}

/// Every line the binary logged, as it logs them.
pub type Logs = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// As [`spawn_binary_with`], keeping what it logs.
pub async fn spawn_binary_logged(
    data_dir: &Path,
    settings: &[(&str, &str)],
) -> (Child, String, Logs) {
    let logs = Logs::default();
    let mut command = Command::new(env!("CARGO_BIN_EXE_merpati"));
    command
        .arg("serve")
        .env("MERPATI_LISTEN", "127.0.0.1:0")
        .env("MERPATI_DATA_DIR", data_dir)
        .env("MERPATI_ADMIN_TOKEN", ADMIN)
        .env("MERPATI_LOG_FORMAT", "json")
        .env(
            "MERPATI_DELIVERY_RETRY_SCHEDULE",
            "200ms,200ms,200ms,200ms,200ms",
        )
        .env("MERPATI_DELIVERY_TIMEOUT", "30s")
        .env("MERPATI_DELIVERY_ALLOWED_NETWORKS", "127.0.0.0/8")
        // A binary killed by a test holds the database until its lease runs out, and the
        // next one started on it waits that long.
        .env("MERPATI_CLUSTER_LEASE", "1s")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // The test's own settings win over these; an empty one is left unset.
    for (name, value) in settings {
        if value.is_empty() {
            command.env_remove(name);
        } else {
            command.env(name, value);
        }
    }
    let mut child = command.spawn().expect("the merpati binary starts");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let kept = logs.clone();
    let addr = tokio::time::timeout(PATIENCE, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            kept.lock().unwrap().push(line.clone());
            let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if entry["fields"]["message"] == "merpati is listening" {
                return entry["fields"]["addr"].as_str().unwrap().to_string();
            }
        }
        panic!("merpati exited before listening");
    })
    .await
    .expect("merpati listens in time");
    // Keep reading so the child never blocks on a full pipe.
    let kept = logs.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            kept.lock().unwrap().push(line);
        }
    });
    (child, format!("http://{addr}"), logs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_delivers_everything_it_accepted_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    // First the receiver hangs, so that deliveries are under way when the server dies.
    receiver.always(Answer::status(200).delay(Duration::from_secs(120)));

    let (mut child, url) = spawn_binary(dir.path()).await;
    let mut app = TestApp::at(url);
    let m = app.merchant("m1").await;
    app.endpoint(&m.key, &receiver, json!({})).await;
    let mut accepted = BTreeSet::new();
    for batch in 0..10 {
        let items: Vec<_> = (0..10)
            .map(|i| json!({"type": "sms", "rid": batch * 10 + i, "phone": "+1", "message": "m"}))
            .collect();
        let v = app
            .ok_post(
                "/v1/device/messages",
                &m.device_token,
                json!({"items": items}),
                202,
            )
            .await;
        for item in v["items"].as_array().unwrap() {
            accepted.insert(item["event_id"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(accepted.len(), 100);
    receiver.wait_for(1).await;

    child.start_kill().unwrap();
    child.wait().await.unwrap();
    receiver.always(Answer::status(200));

    let (mut child, url) = spawn_binary(dir.path()).await;
    app.url = url;
    wait_all_delivered(&receiver, &accepted).await;
    stop_gracefully(&mut child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_under_sustained_load_loses_nothing_it_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    let (mut child, url) = spawn_binary(dir.path()).await;
    let app = std::sync::Arc::new(TestApp::at(url));
    let m = app.merchant("m1").await;
    app.endpoint(&m.key, &receiver, json!({})).await;

    // Eight devices post as fast as they can; the server dies under them.
    let accepted = std::sync::Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let mut posters = tokio::task::JoinSet::new();
    for d in 0..8 {
        let token = app.device(&m.key, &format!("load{d}"), "ch").await;
        let (app, accepted) = (app.clone(), accepted.clone());
        posters.spawn(async move {
            for rid in 0.. {
                let body = json!({"type": "sms", "rid": rid, "phone": "+1", "message": "load"});
                let Ok(resp) = app
                    .client
                    .post(format!("{}/v1/device/messages", app.url))
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await
                else {
                    return;
                };
                if resp.status() != 202 {
                    return;
                }
                let Ok(v) = resp.json::<serde_json::Value>().await else {
                    return;
                };
                let id = v["items"][0]["event_id"].as_str().unwrap().to_string();
                accepted.lock().unwrap().insert(id);
            }
        });
    }
    // Let the load run, then SIGKILL mid-stream.
    while accepted.lock().unwrap().len() < 300 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    while posters.join_next().await.is_some() {}
    let accepted = accepted.lock().unwrap().clone();
    assert!(accepted.len() >= 300);

    let (mut child, _url) = spawn_binary(dir.path()).await;
    wait_all_delivered(&receiver, &accepted).await;
    stop_gracefully(&mut child).await;
}

/// Waits until every accepted event reached the receiver.
async fn wait_all_delivered(receiver: &Receiver, accepted: &BTreeSet<String>) {
    let deadline = std::time::Instant::now() + PATIENCE * 2;
    loop {
        let delivered: BTreeSet<String> = receiver
            .received()
            .iter()
            .map(|r| r.header("webhook-id").to_string())
            .collect();
        let missing = accepted.difference(&delivered).count();
        if missing == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{missing} of {} accepted events never delivered after the restart",
            accepted.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGTERM, and the process must exit cleanly in time.
pub async fn stop_gracefully(child: &mut Child) {
    let pid = child.id().expect("still running").to_string();
    let sent = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(sent.success());
    let status = tokio::time::timeout(PATIENCE, child.wait())
        .await
        .expect("merpati stops within the patience")
        .unwrap();
    assert!(status.success(), "merpati exited with {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_binary_cleanly_and_it_starts_again_on_the_same_data() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, url) = spawn_binary(dir.path()).await;
    let app = TestApp::at(url);
    let m = app.merchant("m1").await;
    let event_id = app.sms(&m.device_token, 1).await["items"][0]["event_id"]
        .as_str()
        .unwrap()
        .to_string();
    stop_gracefully(&mut child).await;

    let (mut child, url) = spawn_binary(dir.path()).await;
    let app = TestApp::at(url);
    assert_eq!(
        app.get(&format!("/v1/events/{event_id}"), &m.key).await.0,
        200
    );
    stop_gracefully(&mut child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_the_moment_it_listens_stops_it_cleanly() {
    // The signal handlers are in place before the server starts: a supervisor that stops it
    // at once still gets a graceful stop, not a kill.
    let dir = tempfile::tempdir().unwrap();
    let (mut child, _url) = spawn_binary(dir.path()).await;
    stop_gracefully(&mut child).await;
}
